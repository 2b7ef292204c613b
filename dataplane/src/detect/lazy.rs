//! Class-led patterns through one lazy DFA. Patterns that start with a character class (digit
//! groups, e-mail local parts, hex runs) give Hyperscan no literal to prefilter on: each runs
//! as its own automaton over all the text, and inside the full pack the digit-shaped PII
//! patterns cost more together than alone. A lazy DFA (`regex-automata`'s hybrid engine) runs
//! all of them in one pass, building only the states the text visits, and reports the same
//! match ends; phase 2 of a block scan gives those ends their starts as it does for
//! Hyperscan's (`cargo run --release -p sluice-benches --example marginal_cost` shows the
//! split).
//!
//! A pattern goes here only if it is ASCII-only (no negated class, no `.`: with Unicode off
//! and UTF-8 required, `regex-syntax` refuses anything that could match a non-ASCII byte), so
//! matching bytes gives exactly the ends Hyperscan's UTF-8 mode gives; and only if it has no
//! literal of three bytes or more, first or later in its sequence, which Hyperscan's literal
//! matcher finds faster ([`eligible`]).

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use regex_syntax::hir::literal::{ExtractKind, Extractor, Literal};
use regex_syntax::hir::HirKind;

/// The lazy DFA's per-core state cache: enough for every state the shipped packs' class-led
/// patterns visit on realistic text (~200 KB) many times over; on overflow it is cleared and
/// rebuilt, which costs time, never correctness.
const CACHE_BYTES: usize = 8 << 20;

fn config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(true)
}

/// The pattern as `regex-syntax` reads it: a rule's case folding written inline.
pub fn spelled(expr: &str, caseless: bool) -> std::borrow::Cow<'_, str> {
    if caseless {
        format!("(?i:{expr})").into()
    } else {
        expr.into()
    }
}

/// Should this pattern run in the lazy DFA rather than in Hyperscan? Yes when it has no
/// literal prefix of three bytes or more for Hyperscan's literal matcher, or only many digit
/// ones: `3[47]\d{2}` reads as 200 four-digit literals, which fire on every such digit run.
/// No when such a literal comes later in the pattern's sequence (New Relic's `NRAL`,
/// Telegram's `:AA`): Hyperscan finds it as fast, and in the DFA the counted classes before
/// it multiply the states every other pattern's are combined with (the two cost 0.2 ms per
/// MiB of the DFA's 0.73 and add 0.01 to Hyperscan's phase 1, `marginal_cost`).
pub fn eligible(expr: &str, caseless: bool) -> bool {
    let Ok(hir) = syntax::parse_with(&spelled(expr, caseless), &config()) else { return false };
    let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let digits = |l: &Literal| l.as_bytes().get(..3).is_some_and(|b| b.iter().all(u8::is_ascii_digit));
    let later = matches!(hir.kind(), HirKind::Concat(subs) if subs.iter().any(|h| matches!(h.kind(), HirKind::Literal(l) if l.0.len() >= 3)));
    !later && (prefixes.min_literal_len().is_none_or(|n| n < 3) || prefixes.literals().is_some_and(|ls| ls.len() >= 16 && ls.iter().all(digits)))
}

/// Most lanes a text is scanned as (see [`Lazy::find`]).
const LANES: usize = 4;

/// From how long a text (in seams: see `Lazy`) it runs as two lanes, and as four.
/// Every lane but the first also steps through the seam before its part, so short texts gain
/// less than the lanes' parallelism: whole-path criterion runs over responses of 1, 2, 4 and
/// 10 KB (seam 257 bytes; one answer repeated) were fastest with two lanes from ~900 bytes and
/// four from ~3,000 (texts of ~1 KB as two lanes: +6 %, ~2 KB as two: +16 %, as four: +13 %).
const TWO_LANES_FROM: f64 = 3.5;
const FOUR_LANES_FROM: f64 = 12.0;

/// The class-led patterns of an engine, by Hyperscan pattern id.
pub struct Lazy {
    dfa: DFA,
    ids: Vec<u32>,
    /// How far before its part each lane but the first starts: one more than the widest
    /// match phase 2 would confirm.
    seam: usize,
    /// Texts this long or longer run as two lanes; as four from `four_from`.
    two_from: usize,
    four_from: usize,
}

/// Per-core state of a [`Lazy`]: one cache per lane (a cache that is cleared invalidates every
/// state id but the one in hand, so two lanes never share one).
pub struct Caches([Cache; LANES]);

impl Lazy {
    /// (pattern id, expression, caseless) of eligible patterns; `None` when there are none.
    /// `widest` is the widest match phase 2 would confirm for any of them.
    pub fn new(patterns: &[(u32, &str, bool)], widest: usize) -> Result<Option<Lazy>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let exprs: Vec<_> = patterns.iter().map(|(_, e, ci)| spelled(e, *ci)).collect();
        let dfa = DFA::builder()
            .syntax(config())
            // No clear limit and no quit bytes (Unicode is off, so `\b` is ASCII): a search
            // cannot fail.
            .configure(DFA::config().match_kind(MatchKind::All).cache_capacity(CACHE_BYTES).minimum_cache_clear_count(None))
            .build_many(&exprs)
            .map_err(|e| format!("building the lazy DFA of the class-led patterns: {e}"))?;
        let seam = widest + 1;
        Ok(Some(Lazy { dfa, ids: patterns.iter().map(|p| p.0).collect(), seam, two_from: 0, four_from: 0 }.with_seam(seam)))
    }

    /// Lanes overlapping by `seam`, and the text lengths from which two and four run (tests of
    /// the seams give a smaller seam than the patterns need).
    fn with_seam(mut self, seam: usize) -> Lazy {
        self.seam = seam;
        // Each lane's part is then at least 1.75 seams, so no lane starts before the text.
        self.two_from = (seam as f64 * TWO_LANES_FROM) as usize;
        self.four_from = (seam as f64 * FOUR_LANES_FROM) as usize;
        self
    }

    pub fn caches(&self) -> Caches {
        Caches(std::array::from_fn(|_| self.dfa.create_cache()))
    }

    /// Append (pattern id, 0, end) for every match end in `hay`, as Hyperscan reports ends
    /// without start tracking.
    ///
    /// A DFA step is one dependent load, so one lane runs at memory latency, not bandwidth.
    /// Long texts run as up to [`LANES`] lanes interleaved: the text cut into equal parts,
    /// each lane but the first started `seam` bytes before its part (with the true
    /// look-behind) and reporting only ends inside its part. A lane misses an end only if
    /// every match ending there is wider than the seam — wider than any start confirmation
    /// looks, so it could never become a finding.
    pub fn find(&self, caches: &mut Caches, hay: &[u8], out: &mut Vec<(u32, u32, u32)>) {
        if hay.len() >= self.four_from {
            self.find_in::<4>(caches, hay, out)
        } else if hay.len() >= self.two_from {
            self.find_in::<2>(caches, hay, out)
        } else {
            self.find_in::<1>(caches, hay, out)
        }
    }

    fn find_in<const N: usize>(&self, caches: &mut Caches, hay: &[u8], out: &mut Vec<(u32, u32, u32)>) {
        // Lane k reports ends in `part * k .. part * (k + 1)` (the last one to the end of the
        // text) and starts `seam` bytes before that, except the first.
        let part = hay.len() / N;
        let from = |k: usize| if k == 0 { 0 } else { part * k - self.seam };
        let (caches, _) = caches.0.split_at_mut(N);
        let mut lanes: [Lane; N] = std::array::from_fn(|k| Lane::start(&self.dfa, &mut caches[k], hay, from(k), part * k));
        // The first lane is the shortest: all lanes step together for its length.
        let common = part;
        for j in 0..common {
            for k in 0..N {
                let i = from(k) + j;
                lanes[k].step(self, &mut caches[k], hay[i], i, out);
            }
        }
        for k in 1..N {
            let end = if k == N - 1 { hay.len() } else { part * (k + 1) };
            for (i, &byte) in hay.iter().enumerate().take(end).skip(from(k) + common) {
                lanes[k].step(self, &mut caches[k], byte, i, out);
            }
        }
        lanes[N - 1].eoi(self, &mut caches[N - 1], hay.len(), out);
    }
}

/// One pass of the DFA over part of a text.
struct Lane {
    s: LazyStateID,
    /// Ends before this offset belong to the other lane.
    report_from: usize,
    /// Set if the DFA failed (unreachable as configured): the lane stops.
    dead: bool,
}

impl Lane {
    fn start(dfa: &DFA, cache: &mut Cache, hay: &[u8], from: usize, report_from: usize) -> Lane {
        match dfa.start_state_forward(cache, &Input::new(hay).range(from..)) {
            Ok(s) => Lane { s, report_from, dead: false },
            Err(_) => Lane { s: LazyStateID::default(), report_from, dead: true },
        }
    }

    /// Consume the byte at `i`. A DFA's match states are delayed by one byte: entering one on
    /// the byte at `i` means matches ended at `i`.
    #[inline(always)]
    fn step(&mut self, l: &Lazy, cache: &mut Cache, byte: u8, i: usize, out: &mut Vec<(u32, u32, u32)>) {
        // The common case, a known transition between ordinary states, is one lookup and one
        // test.
        if !self.s.is_tagged() && !self.dead {
            // SAFETY: `self.s` is an untagged state of this DFA, taken from `cache` (a cache
            // that is cleared keeps the state in hand valid), as the function requires.
            let n = unsafe { l.dfa.next_state_untagged_unchecked(cache, self.s, byte) };
            if !n.is_tagged() {
                self.s = n;
                return;
            }
        }
        self.step_slow(l, cache, byte, i, out);
    }

    /// Out of or into a tagged state: unknown (compute it), match (report), or a failure.
    #[cold]
    #[inline(never)]
    fn step_slow(&mut self, l: &Lazy, cache: &mut Cache, byte: u8, i: usize, out: &mut Vec<(u32, u32, u32)>) {
        if self.dead {
            return;
        }
        match l.dfa.next_state(cache, self.s, byte) {
            Ok(s) => self.s = s,
            // Unreachable as configured in `Lazy::new`.
            Err(_) => {
                self.dead = true;
                return;
            }
        }
        if self.s.is_match() && i >= self.report_from {
            self.report(l, cache, i, out);
        }
    }

    fn eoi(&mut self, l: &Lazy, cache: &mut Cache, len: usize, out: &mut Vec<(u32, u32, u32)>) {
        if self.dead {
            return;
        }
        if let Ok(s) = l.dfa.next_eoi_state(cache, self.s) {
            self.s = s;
            if s.is_match() {
                self.report(l, cache, len, out);
            }
        }
    }

    fn report(&self, l: &Lazy, cache: &Cache, end: usize, out: &mut Vec<(u32, u32, u32)>) {
        for k in 0..l.dfa.match_len(cache, self.s) {
            out.push((l.ids[l.dfa.match_pattern(cache, self.s, k).as_usize()], 0, end as u32));
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
    fn only_ascii_class_led_patterns_are_eligible() {
        for yes in [r"\b\d{3}[- ]\d{2}[- ]\d{4}\b", r"\b[A-Za-z0-9._%+-]+@[a-z]+\.[a-z]{2,}", r"\bSK[0-9a-f]{32}\b", r"[MNO][a-z]{3}", r"\b3[47]\d{2}[ -]?\d{6}", r"\b3(?:0[0-5]|[68]\d)\d[ -]?\d{6}", r"\b[a-z]{3}\dQ~[a-z]{31,34}"] {
            assert!(eligible(yes, false), "{yes}");
        }
        for no in [r"\bghp_[A-Za-z0-9]{36}\b", "-----BEGIN RSA", r"(?:^|[^\w+])\+[1-9]\d{7,14}", r"\d.\d", r"password\s*=", r"a(b", r"12ab\d", r"\b(?:1234|5678)-", r"\b[a-f0-9]{36}NRAL\b", r"\d{8,10}:AA[A-Za-z0-9_-]{33}\b"] {
            assert!(!eligible(no, false), "{no}");
        }
        // Case folding widens a literal prefix to many short ones, never to non-ASCII.
        assert!(eligible(r"\b(?:or|if)\b", true));
        assert!(!eligible("ignore previous", true));
    }

    /// The shipped packs' eligible patterns in one lazy DFA, and the same patterns in one
    /// Hyperscan database without start tracking (built once for every case).
    fn shipped() -> &'static (Lazy, Lazy, BlockDatabase) {
        static BOTH: std::sync::OnceLock<(Lazy, Lazy, BlockDatabase)> = std::sync::OnceLock::new();
        BOTH.get_or_init(|| {
            let pats = shipped_patterns(eligible);
            let specs: Vec<(u32, &str, bool)> = pats.iter().map(|(i, e, c)| (*i, e.as_str(), *c)).collect();
            let lazy = Lazy::new(&specs, 256).unwrap().unwrap();
            // Lanes overlapping by 64 (two from 224 bytes, four from 768): every match in the
            // test texts is narrower (a separator at least every fourth piece).
            let lanes = Lazy::new(&specs, 256).unwrap().unwrap().with_seam(64);
            let hs: Vec<Pattern> = pats
                .iter()
                .map(|(i, e, c)| {
                    let mut f = CompileFlags::UTF8;
                    if *c {
                        f |= CompileFlags::CASELESS;
                    }
                    let mut p = Pattern::with_flags(e, f).unwrap();
                    p.id = Some(*i as usize);
                    p
                })
                .collect();
            (lazy, lanes, Patterns::from(hs).build().unwrap())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// The lazy DFA reports exactly the (pattern, end) pairs Hyperscan reports without start
        /// tracking, on text built from pieces of the values these patterns look for.
        #[test]
        fn lazy_dfa_ends_equal_hyperscan_ends(parts in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(vec![
            "4111", "1111", "555", "0147", "8", "192", "25", "3782", "822463", "-", ".", ":", "@", "bob", "example", "com",
            "GB82", "WEST", "\u{e9}", "(", ")", "+", "a", "f", "SK", "0", "dd_api_key=", "Street", "Elm ", "OR ELSE ", "\u{1b}[",
        ]), 1..4), 0..60), sep in proptest::sample::select(vec![" ", "\n", "\t"])) {
            let hay: String = parts.iter().map(|p| p.concat()).collect::<Vec<_>>().join(sep);
            let (lazy, lanes, db) = shipped();
            let mut got = Vec::new();
            lazy.find(&mut lazy.caches(), hay.as_bytes(), &mut got);
            let mut laned = Vec::new();
            lanes.find(&mut lanes.caches(), hay.as_bytes(), &mut laned);
            let sc = db.alloc_scratch().unwrap();
            let mut want = Vec::new();
            let _ = db.scan(&hay, &sc, |id, _, to, _| {
                want.push((id, 0, to as u32));
                Matching::Continue
            });
            laned.sort_unstable();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(&got, &want, "{:?}", hay);
            prop_assert_eq!(&laned, &want, "lanes over {:?}", hay);
        }
    }

    /// Every prefix of a text dense with matches, from one lane to four (seam 64: two lanes
    /// from 224 bytes, four from 768): the lane borders fall at every offset of the matches,
    /// and the ends stay Hyperscan's.
    #[test]
    fn lane_borders_at_every_offset_lose_no_end() {
        let (_, lanes, db) = shipped();
        let text = "mail bob@example.com, card 4111 1111 1111 1111 on 192.168.25.3; ".repeat(20);
        let sc = db.alloc_scratch().unwrap();
        let mut caches = lanes.caches();
        for n in 200..text.len().min(1100) {
            let hay = &text[..n];
            let mut got = Vec::new();
            lanes.find(&mut caches, hay.as_bytes(), &mut got);
            let mut want = Vec::new();
            let _ = db.scan(hay, &sc, |id, _, to, _| {
                want.push((id, 0, to as u32));
                Matching::Continue
            });
            got.sort_unstable();
            want.sort_unstable();
            assert!(!want.is_empty());
            assert_eq!(got, want, "{n} bytes");
        }
    }
}
