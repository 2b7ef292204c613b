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
//! literal prefix of three bytes or more, which Hyperscan's literal matcher finds faster.

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use regex_syntax::hir::literal::{ExtractKind, Extractor};

/// The lazy DFA's per-core state cache: enough for every state the shipped packs' class-led
/// patterns visit on realistic text (~200 KB) many times over; on overflow it is cleared and
/// rebuilt, which costs time, never correctness.
const CACHE_BYTES: usize = 8 << 20;

fn config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(true)
}

/// Should this pattern run in the lazy DFA rather than in Hyperscan?
pub fn eligible(expr: &str, caseless: bool) -> bool {
    let expr = if caseless { format!("(?i:{expr})") } else { expr.to_owned() };
    let Ok(hir) = syntax::parse_with(&expr, &config()) else { return false };
    let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    prefixes.min_literal_len().is_none_or(|n| n < 3)
}

/// The class-led patterns of an engine, by Hyperscan pattern id.
pub struct Lazy {
    dfa: DFA,
    ids: Vec<u32>,
}

impl Lazy {
    /// (pattern id, expression, caseless) of eligible patterns; `None` when there are none.
    pub fn new(patterns: &[(u32, &str, bool)]) -> Result<Option<Lazy>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let exprs: Vec<String> = patterns.iter().map(|(_, e, ci)| if *ci { format!("(?i:{e})") } else { (*e).to_owned() }).collect();
        let dfa = DFA::builder()
            .syntax(config())
            // No clear limit and no quit bytes (Unicode is off, so `\b` is ASCII): a search
            // cannot fail.
            .configure(DFA::config().match_kind(MatchKind::All).cache_capacity(CACHE_BYTES).minimum_cache_clear_count(None))
            .build_many(&exprs)
            .map_err(|e| format!("building the lazy DFA of the class-led patterns: {e}"))?;
        Ok(Some(Lazy { dfa, ids: patterns.iter().map(|p| p.0).collect() }))
    }

    pub fn cache(&self) -> Cache {
        self.dfa.create_cache()
    }

    /// Append (pattern id, 0, end) for every match end in `hay`, as Hyperscan reports ends
    /// without start tracking.
    pub fn find(&self, cache: &mut Cache, hay: &[u8], out: &mut Vec<(u32, u32, u32)>) {
        let dfa = &self.dfa;
        let Ok(mut s) = dfa.start_state_forward(cache, &Input::new(hay)) else { return };
        // A DFA's match states are delayed by one byte: entering one on the byte at `i`
        // means matches ended at `i`.
        for (i, &b) in hay.iter().enumerate() {
            // The common case, a known transition out of an ordinary state, is one lookup.
            let next = if s.is_tagged() { dfa.next_state(cache, s, b) } else { Ok(dfa.next_state_untagged(cache, s, b)) };
            let next = match next {
                Ok(n) if n.is_unknown() => dfa.next_state(cache, s, b),
                n => n,
            };
            s = match next {
                Ok(s) => s,
                // Unreachable as configured in `new` (see there).
                Err(_) => return,
            };
            if s.is_tagged() && s.is_match() {
                for k in 0..dfa.match_len(cache, s) {
                    out.push((self.ids[dfa.match_pattern(cache, s, k).as_usize()], 0, i as u32));
                }
            }
        }
        if let Ok(s) = dfa.next_eoi_state(cache, s) {
            if s.is_match() {
                for k in 0..dfa.match_len(cache, s) {
                    out.push((self.ids[dfa.match_pattern(cache, s, k).as_usize()], 0, hay.len() as u32));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::{default_dir, load_dir};
    use hyperscan::prelude::*;
    use proptest::prelude::*;

    #[test]
    fn only_ascii_class_led_patterns_are_eligible() {
        for yes in [r"\b\d{3}[- ]\d{2}[- ]\d{4}\b", r"\b[A-Za-z0-9._%+-]+@[a-z]+\.[a-z]{2,}", r"\bSK[0-9a-f]{32}\b", r"[MNO][a-z]{3}"] {
            assert!(eligible(yes, false), "{yes}");
        }
        for no in [r"\bghp_[A-Za-z0-9]{36}\b", "-----BEGIN RSA", r"(?:^|[^\w+])\+[1-9]\d{7,14}", r"\d.\d", r"password\s*=", r"a(b"] {
            assert!(!eligible(no, false), "{no}");
        }
        // Case folding widens a literal prefix to many short ones, never to non-ASCII.
        assert!(eligible(r"\b(?:or|if)\b", true));
        assert!(!eligible("ignore previous", true));
    }

    /// The shipped packs' eligible patterns in one lazy DFA, and the same patterns in one
    /// Hyperscan database without start tracking (built once for every case).
    fn shipped() -> &'static (Lazy, BlockDatabase) {
        static BOTH: std::sync::OnceLock<(Lazy, BlockDatabase)> = std::sync::OnceLock::new();
        BOTH.get_or_init(|| {
            let mut pats: Vec<(u32, String, bool)> = Vec::new();
            for l in load_dir(&default_dir()).unwrap_or_else(|e| panic!("{e}")) {
                for p in &l.rule.patterns {
                    if !l.rule.context_required && eligible(p, l.rule.caseless) {
                        pats.push((pats.len() as u32, p.clone(), l.rule.caseless));
                    }
                }
            }
            let lazy = Lazy::new(&pats.iter().map(|(i, e, c)| (*i, e.as_str(), *c)).collect::<Vec<_>>()).unwrap().unwrap();
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
            (lazy, Patterns::from(hs).build().unwrap())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// The lazy DFA reports exactly the (pattern, end) pairs Hyperscan reports without start
        /// tracking, on text built from pieces of the values these patterns look for.
        #[test]
        fn lazy_dfa_ends_equal_hyperscan_ends(parts in proptest::collection::vec(proptest::sample::select(vec![
            "4111", "1111", "555", "0147", "8", "192", "25", "3782", "822463", " ", "-", ".", ":", "@", "bob", "example", "com",
            "GB82", "WEST", "\u{e9}", "(", ")", "+", "\n", "a", "f", "SK", "0", "dd_api_key=", "Street", "Elm ", "OR ELSE ", "\u{1b}[",
        ]), 0..40)) {
            let hay: String = parts.concat();
            let (lazy, db) = shipped();
            let mut got = Vec::new();
            lazy.find(&mut lazy.cache(), hay.as_bytes(), &mut got);
            let sc = db.alloc_scratch().unwrap();
            let mut want = Vec::new();
            let _ = db.scan(&hay, &sc, |id, _, to, _| {
                want.push((id, 0, to as u32));
                Matching::Continue
            });
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want, "{:?}", hay);
        }
    }
}
