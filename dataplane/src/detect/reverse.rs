//! Phase 2 by reverse DFA: the leftmost start of a match from its end, found by running the
//! pattern backwards from that end (`regex-automata`'s lazy DFA built in reverse, anchored at
//! the end, `MatchKind::All`, stopping when no match can start further left), so the work is
//! the match's own length. Hyperscan, start-tracked over a window before the end, costs a
//! call of ~200 ns however short the match (an IPv4 address, an assignment), and scans the
//! whole window.
//!
//! Exact only on ASCII: patterns are read with Unicode off and bytes for characters (so a
//! negated class or `.` may take one byte of a multi-byte character), and every byte ≥ 0x80
//! is a quit byte. A search that meets one returns [`NonAscii`] and the caller asks
//! Hyperscan; on ASCII text, bytes are characters and the two agree (property-tested below
//! against Hyperscan's own start-tracked matches).

use super::lazy::spelled;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID};

/// The per-core state cache: the shipped packs' patterns visit a few hundred states; on
/// overflow it is cleared and rebuilt (time, never correctness).
const CACHE_BYTES: usize = 2 << 20;

/// A pattern whose reverse automaton is bigger than this many NFA states stays with
/// Hyperscan: each new lazy-DFA state costs a walk over them (a large counted repeat, such as
/// a private key's body, would build states all the way back).
const MAX_NFA_STATES: usize = 2_000;

fn config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

fn thompson_config() -> thompson::Config {
    thompson::Config::new().reverse(true).utf8(false).which_captures(thompson::WhichCaptures::None)
}

/// Can this pattern's starts be found by the reverse DFA?
pub fn eligible(expr: &str, caseless: bool) -> bool {
    thompson::Compiler::new()
        .syntax(config())
        .configure(thompson_config())
        .build(&spelled(expr, caseless))
        .is_ok_and(|nfa| nfa.states().len() <= MAX_NFA_STATES)
}

/// Does every match of this pattern end in a run of one class `C` that may grow without
/// bound, right after a literal byte or a class outside `C` (`….[C]{n,}`, nothing after it,
/// not even an assertion)? Then where the part before the run ends is fixed: at the byte
/// before the run of `C` bytes the end is in. So every end inside one such run has the same
/// set of starts, and the same leftmost start: of consecutive ends `e, e + 1, …` (the JWT
/// rule's signature reports one end per byte) [`super::engine`] walks back from the last one
/// alone.
pub fn ends_in_open_class_run(expr: &str, caseless: bool) -> bool {
    use regex_syntax::hir::{Class, Hir, HirKind};
    /// The bytes the last position of a literal, a class or a class repeated can be.
    fn bytes(h: &Hir) -> Option<[bool; 256]> {
        let mut set = [false; 256];
        match h.kind() {
            HirKind::Literal(l) => set[*l.0.last()? as usize] = true,
            // At least once: its last byte is one of the class's.
            HirKind::Repetition(r) if r.min >= 1 && matches!(r.sub.kind(), HirKind::Class(_)) => return bytes(&r.sub),
            HirKind::Class(Class::Bytes(c)) => c.iter().for_each(|r| (r.start()..=r.end()).for_each(|b| set[b as usize] = true)),
            HirKind::Class(Class::Unicode(c)) => {
                for r in c.iter() {
                    let (a, b) = (r.start() as u32, r.end() as u32);
                    if b > 0x7F {
                        return None;
                    }
                    (a..=b).for_each(|x| set[x as usize] = true);
                }
            }
            _ => return None,
        }
        Some(set)
    }
    let Ok(hir) = regex_syntax::ParserBuilder::new().unicode(false).utf8(false).build().parse(&spelled(expr, caseless)) else { return false };
    let HirKind::Concat(parts) = hir.kind() else { return false };
    let [.., before, last] = parts.as_slice() else { return false };
    let HirKind::Repetition(run) = last.kind() else { return false };
    if run.min == 0 || run.max.is_some() || !matches!(run.sub.kind(), HirKind::Class(_)) {
        return false;
    }
    match (bytes(before), bytes(&run.sub)) {
        (Some(b), Some(c)) => (0..256).all(|x| !(b[x] && c[x])),
        _ => false,
    }
}

/// The search met a byte ≥ 0x80: ask Hyperscan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonAscii;

/// Eligible patterns of an engine in one reverse lazy DFA, searched one pattern at a time.
pub struct Reverse {
    dfa: DFA,
    /// Hyperscan pattern id → this DFA's pattern.
    by_id: Vec<Option<PatternID>>,
}

impl Reverse {
    /// (pattern id, expression, caseless) of eligible patterns; `None` when there are none.
    pub fn new(patterns: &[(u32, &str, bool)]) -> Result<Option<Reverse>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let exprs: Vec<_> = patterns.iter().map(|(_, e, ci)| spelled(e, *ci)).collect();
        let mut dfa = DFA::config().match_kind(MatchKind::All).starts_for_each_pattern(true).cache_capacity(CACHE_BYTES).minimum_cache_clear_count(None);
        for b in 0x80..=0xFF {
            dfa = dfa.quit(b, true);
        }
        let dfa = DFA::builder()
            .syntax(config())
            .thompson(thompson_config())
            .configure(dfa)
            .build_many(&exprs)
            .map_err(|e| format!("building the reverse DFA of the start-confirmed patterns: {e}"))?;
        let n = patterns.iter().map(|p| p.0 as usize + 1).max().unwrap_or(0);
        let mut by_id = vec![None; n];
        for (k, p) in patterns.iter().enumerate() {
            by_id[p.0 as usize] = PatternID::new(k).ok();
        }
        Ok(Some(Reverse { dfa, by_id }))
    }

    pub fn cache(&self) -> Cache {
        self.dfa.create_cache()
    }

    /// Does this DFA hold Hyperscan pattern `id`?
    pub fn holds(&self, id: u32) -> bool {
        self.by_id.get(id as usize).is_some_and(Option::is_some)
    }

    /// The leftmost start at or after `from` of a match of pattern `id` ending at `end` (the
    /// text around is seen by `\b` and the like), `None` if there is none.
    pub fn start(&self, cache: &mut Cache, id: u32, hay: &[u8], from: usize, end: usize) -> Result<Option<usize>, NonAscii> {
        let Some(Some(pid)) = self.by_id.get(id as usize) else { return Ok(None) };
        let input = Input::new(hay).range(from..end).anchored(Anchored::Pattern(*pid));
        match self.dfa.try_search_rev(cache, &input) {
            Ok(m) => Ok(m.map(|m| m.offset())),
            // A quit byte: the only failure this configuration allows (no cache limit).
            Err(_) => Err(NonAscii),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::shipped_patterns;
    use hyperscan::prelude::*;
    use proptest::prelude::*;

    #[test]
    fn eligibility_follows_what_regex_syntax_reads_and_the_automaton_size() {
        for yes in [r"\b\d{3}[- ]\d{2}[- ]\d{4}\b", r"[^\s]{8,64}", r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9._-]+", r"a.b"] {
            assert!(eligible(yes, false), "{yes}");
        }
        // Unbalanced; a look-ahead (Hyperscan refuses it too); a body too big to walk back.
        for no in [r"a(b", r"a(?=b)", r"-----BEGIN KEY-----[A-Za-z0-9+/=\s]{64,8192}-----END KEY-----"] {
            assert!(!eligible(no, false), "{no}");
        }
    }

    #[test]
    fn open_class_runs_after_a_byte_outside_the_class() {
        for yes in [r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", r"key=[a-f0-9]+", r"x[0-9]{3}[a-z]{2,}", r"(?:ab|cd)\.[a-z]+"] {
            assert!(ends_in_open_class_run(yes, false), "{yes}");
        }
        assert!(ends_in_open_class_run(r"token:[a-z0-9]{4,}", true));
        // Alone; the byte before can be in the run; bounded; optional; an assertion after;
        // the part before may end in the run's class (`[0-9]?`); caseless widens `k` to `K`.
        for no in [r"[a-z]+", r"a[a-z]+", r"x[a-z]{2,5}", r"x[a-z]*", r"x[a-z]+\b", r"x[0-9]?[0-9a-z]+", r"a(b"] {
            assert!(!ends_in_open_class_run(no, false), "{no}");
        }
        assert!(!ends_in_open_class_run(r"K[a-z]+", true));
    }

    #[test]
    fn a_non_ascii_byte_on_the_way_back_is_reported_not_guessed() {
        let r = Reverse::new(&[(3, r"[^\s]{4,16}", false)]).unwrap().unwrap();
        let mut c = r.cache();
        let hay = "x caf\u{e9}bar y".as_bytes();
        let end = hay.len() - 2;
        assert_eq!(r.start(&mut c, 3, hay, 0, end), Err(NonAscii));
        let hay = b"x cafebar y";
        assert_eq!(r.start(&mut c, 3, hay, 0, hay.len() - 2), Ok(Some(2)));
        // Only as far back as `from`, with the text before it still seen by `\b`.
        let w = Reverse::new(&[(0, r"\b[a-z]+", false)]).unwrap().unwrap();
        let mut c = w.cache();
        assert_eq!(w.start(&mut c, 0, b"xx abcdef", 5, 9), Ok(None));
        assert_eq!(w.start(&mut c, 0, b"xx abcdef", 3, 9), Ok(Some(3)));
        assert!(!w.holds(1) && w.holds(0));
    }

    /// Every eligible pattern of the shipped packs (rules without required context words, as
    /// the engine uses them) in one reverse DFA, and each alone start-tracked in Hyperscan.
    fn shipped() -> &'static (Reverse, Vec<(u32, BlockDatabase)>) {
        static BOTH: std::sync::OnceLock<(Reverse, Vec<(u32, BlockDatabase)>)> = std::sync::OnceLock::new();
        BOTH.get_or_init(|| {
            let pats = shipped_patterns(eligible);
            assert!(pats.len() > 100, "most shipped patterns are eligible: {}", pats.len());
            let specs: Vec<(u32, &str, bool)> = pats.iter().map(|(i, e, c)| (*i, e.as_str(), *c)).collect();
            let dbs = pats
                .iter()
                .map(|(i, e, c)| {
                    let mut f = CompileFlags::UTF8 | CompileFlags::SOM_LEFTMOST;
                    if *c {
                        f |= CompileFlags::CASELESS;
                    }
                    (*i, Pattern::with_flags(e, f).unwrap().build().unwrap())
                })
                .collect();
            (Reverse::new(&specs).unwrap().unwrap(), dbs)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// For every match Hyperscan reports (start-tracked, over the whole text), the reverse
        /// DFA from its end finds the same leftmost start; with a non-ASCII byte on the way it
        /// says so instead.
        #[test]
        fn reverse_starts_equal_hyperscan_starts(parts in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(vec![
            "4111", "1111", "555", "0147", "8", "192", "25", "168", "3782", "-", ".", ":", "@", "=", "\"", "'", "/", "bob", "example", "com",
            "password", "secret", "api_key", "token", "eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiIxIn0", "xyz_ABC", "postgres://", "u:pw@db",
            "AKIA", "ghp_", "sk-", "abcdefghij0123456789", "\u{e9}", "(", ")", "+", "a", "f", "SK", "0", "Street", "Elm ", "IGNORE previous",
        ]), 1..5), 0..50), sep in proptest::sample::select(vec![" ", "\n", "\t", ""])) {
            let hay: String = parts.iter().map(|p| p.concat()).collect::<Vec<_>>().join(sep);
            let (rev, dbs) = shipped();
            let mut cache = rev.cache();
            for (id, db) in dbs {
                let sc = db.alloc_scratch().unwrap();
                let mut want: Vec<(usize, usize)> = Vec::new();
                let _ = db.scan(&hay, &sc, |_, from, to, _| {
                    want.push((to as usize, from as usize));
                    Matching::Continue
                });
                want.sort_unstable();
                want.dedup_by_key(|m| m.0);
                for (end, start) in want {
                    match rev.start(&mut cache, *id, hay.as_bytes(), 0, end) {
                        Ok(got) => prop_assert_eq!(got, Some(start), "pattern {} ending at {} in {:?}", id, end, hay),
                        Err(NonAscii) => prop_assert!(!hay.is_ascii()),
                    }
                }
            }
        }
    }
}
