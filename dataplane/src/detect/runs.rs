//! Character runs without Hyperscan. A pattern of the shape `[CLASS]{N,}` (optionally `\b`
//! around it, or a padding character `X{0,K}` after it) matches long runs of one class —
//! encoded blobs, hex dumps, the base64 decode candidate. Hyperscan has no literal to
//! prefilter such a pattern on, so every one of them runs as its own automaton over all the
//! text and, inside the full pack, they cost more than all the other rules together (measured
//! with `cargo run --release -p sluice-benches --example marginal_cost`). Here they are found
//! in one pass that looks at every `min`-th byte and widens only where it lands inside a run.
//!
//! The matches are the ones Hyperscan reports after [`super::engine`] keeps the longest match
//! per start: a maximal run of the class (long enough, with the boundaries the pattern asks
//! for) from its first byte, with its padding, cut at the rule's `max_width`.

/// What follows the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trail {
    /// Nothing required.
    None,
    /// `\b`: the run ends the text or is followed by a non-word character.
    Boundary,
    /// `X{0,K}`: up to `max` copies of `pad` belong to the match.
    Pad { pad: u8, max: usize },
    /// The base64 decode candidate: at most `max` copies of `pad`, then the end of the text or
    /// a character outside the class.
    Terminated { pad: u8, max: usize },
}

/// A pattern recognised as a run of one class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub class: [bool; 256],
    pub min: usize,
    /// `\b` before: the run starts the text or follows a non-word character.
    pub lead_boundary: bool,
    pub trail: Trail,
    /// Only runs [`super::decode::mixes_cases_and_digits`] accepts (the base64 decode
    /// candidate: other runs would be dropped after phase 2 anyway).
    pub worth_decoding: bool,
}

fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Recognise `\b?[CLASS]{N,}` followed by nothing, `\b` or `X{0,K}` (ASCII classes of
/// literal characters and ranges only; anything else is left to Hyperscan). `\b` is accepted
/// only around classes of word characters, where it can hold at the run's edges alone.
pub fn shape(expr: &str, caseless: bool) -> Option<Shape> {
    let (lead_boundary, rest) = match expr.strip_prefix(r"\b") {
        Some(r) => (true, r),
        None => (false, expr),
    };
    let rest = rest.strip_prefix('[')?;
    let (class, rest) = parse_class(rest, caseless)?;
    let rest = rest.strip_prefix('{')?;
    let (digits, rest) = rest.split_once(",}")?;
    let min: usize = digits.parse().ok().filter(|&n| n > 0)?;
    let trail = match rest {
        "" => Trail::None,
        r"\b" => Trail::Boundary,
        r => {
            let (pad, r) = match r.as_bytes() {
                [b'\\', c, ..] if c.is_ascii_punctuation() => (*c, &r[2..]),
                [c, ..] if c.is_ascii_graphic() && !b"\\[]{}()|*+?.^$".contains(c) => (*c, &r[1..]),
                _ => return None,
            };
            let max: usize = r.strip_prefix("{0,")?.strip_suffix('}')?.parse().ok()?;
            if class[pad as usize] || (caseless && pad.is_ascii_alphabetic()) {
                return None;
            }
            Trail::Pad { pad, max }
        }
    };
    let all_word = (0..=255u8).all(|b| !class[b as usize] || word(b));
    if (lead_boundary || trail == Trail::Boundary) && !all_word {
        return None;
    }
    Some(Shape { class, min, lead_boundary, trail, worth_decoding: false })
}

/// `CLASS]` → the set and what follows the `]`.
fn parse_class(s: &str, caseless: bool) -> Option<([bool; 256], &str)> {
    let b = s.as_bytes();
    let mut set = [false; 256];
    let mut i = 0;
    let lit = |i: usize| -> Option<(u8, usize)> {
        match *b.get(i)? {
            b'\\' => {
                let c = *b.get(i + 1)?;
                c.is_ascii_punctuation().then_some((c, 2))
            }
            b']' | b'[' | b'^' => None,
            c if c.is_ascii_graphic() => Some((c, 1)),
            _ => None,
        }
    };
    loop {
        if b.get(i) == Some(&b']') && i > 0 {
            break;
        }
        let (c, n) = lit(i)?;
        i += n;
        if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(|&d| d != b']') {
            let (d, m) = lit(i + 1)?;
            if !(c.is_ascii_alphanumeric() && d.is_ascii_alphanumeric() && c <= d) {
                return None;
            }
            i += 1 + m;
            for x in c..=d {
                set[x as usize] = true;
            }
        } else {
            set[c as usize] = true;
        }
    }
    if caseless {
        for x in b'a'..=b'z' {
            let either = set[x as usize] || set[x.to_ascii_uppercase() as usize];
            set[x as usize] = either;
            set[x.to_ascii_uppercase() as usize] = either;
        }
    }
    Some((set, &s[i + 1..]))
}

/// Every run pattern of an engine, found in one pass.
pub struct Runs {
    /// Bit i: byte is in spec i's class.
    table: [u32; 256],
    specs: Vec<Spec>,
    /// The shortest run any spec needs: the stride of the probes.
    min: usize,
}

struct Spec {
    id: u32,
    shape: Shape,
    max_width: usize,
    /// The class is the union of every spec's: its maximal run in a union run is all of it.
    whole: bool,
}

impl Runs {
    /// At most 32 specs (one bit each); `None` when there are none. (pattern id, shape, the
    /// rule's maximum width.)
    pub fn new(specs: Vec<(u32, Shape, usize)>) -> Option<Runs> {
        if specs.is_empty() || specs.len() > 32 {
            return None;
        }
        let mut table = [0u32; 256];
        for (i, (_, s, _)) in specs.iter().enumerate() {
            for (b, t) in table.iter_mut().enumerate() {
                if s.class[b] {
                    *t |= 1 << i;
                }
            }
        }
        let min = specs.iter().map(|s| s.1.min).min().unwrap_or(1);
        let specs = specs
            .into_iter()
            .map(|(id, shape, max_width)| {
                let whole = (0..256).all(|b| shape.class[b] == (table[b] != 0));
                Spec { id, shape, max_width, whole }
            })
            .collect();
        Some(Runs { table, specs, min })
    }

    /// Append (pattern id, start, end) for every match in `hay`.
    pub fn find(&self, hay: &[u8], out: &mut Vec<(u32, u32, u32)>) {
        let (t, m, n) = (&self.table, self.min, hay.len());
        // A run of `m` or more bytes covers one of the probed positions m-1, 2m-1, …
        let mut probe = m - 1;
        while probe < n {
            if t[hay[probe] as usize] == 0 {
                probe += m;
                continue;
            }
            let mut b = probe + 1;
            while b < n && t[hay[b] as usize] != 0 {
                b += 1;
            }
            // Long enough only if it also covers b - m: most tokens stop at that one look.
            if b >= m && t[hay[b - m] as usize] != 0 {
                let mut a = probe;
                while a > 0 && t[hay[a - 1] as usize] != 0 {
                    a -= 1;
                }
                if b - a >= m {
                    self.in_union_run(hay, a, b, out);
                }
            }
            // The next probe lies past this run (no probe inside it can find another).
            probe = b + m;
        }
    }

    /// The specs' maximal runs inside [a, b), a maximal run of bytes in any class.
    fn in_union_run(&self, hay: &[u8], a: usize, b: usize, out: &mut Vec<(u32, u32, u32)>) {
        for (i, s) in self.specs.iter().enumerate() {
            // Its runs lie inside this one: none is long enough, or this one is its only run.
            if b - a < s.shape.min {
                continue;
            }
            if s.whole {
                if let Some(end) = s.accept(hay, a, b) {
                    out.push((s.id, a as u32, end.min(a + s.max_width) as u32));
                }
                continue;
            }
            let bit = 1u32 << i;
            let inside = |x: u8| self.table[x as usize] & bit != 0;
            let mut p = a;
            while p < b {
                if !inside(hay[p]) {
                    p += 1;
                    continue;
                }
                let start = p;
                while p < b && inside(hay[p]) {
                    p += 1;
                }
                if let Some(end) = s.accept(hay, start, p) {
                    out.push((s.id, start as u32, end.min(start + s.max_width) as u32));
                }
            }
        }
    }
}

impl Spec {
    /// The end of the match on the maximal class run [a, b), if the pattern matches there.
    fn accept(&self, hay: &[u8], a: usize, b: usize) -> Option<usize> {
        let sh = &self.shape;
        if b - a < sh.min || (sh.lead_boundary && a > 0 && word(hay[a - 1])) || (sh.worth_decoding && !super::decode::mixes_cases_and_digits(&hay[a..b])) {
            return None;
        }
        let pads = |pad: u8, max: usize| hay[b..].iter().take(max + 1).take_while(|&&c| c == pad).count();
        match sh.trail {
            Trail::None => Some(b),
            Trail::Boundary => (b == hay.len() || !word(hay[b])).then_some(b),
            Trail::Pad { pad, max } => Some(b + pads(pad, max).min(max)),
            Trail::Terminated { pad, max } => {
                let p = pads(pad, max);
                (p <= max && (b + p == hay.len() || !sh.class[hay[b + p] as usize])).then_some(b + p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperscan::prelude::*;
    use proptest::prelude::*;

    #[test]
    fn shapes_are_recognised_only_when_exact() {
        let s = shape("[A-Za-z0-9+/]{200,}={0,2}", false).unwrap();
        assert_eq!((s.min, s.lead_boundary, s.trail), (200, false, Trail::Pad { pad: b'=', max: 2 }));
        assert!(s.class[b'+' as usize] && s.class[b'/' as usize] && s.class[b'q' as usize] && !s.class[b'-' as usize]);
        let h = shape(r"\b[0-9a-fA-F]{256,}\b", false).unwrap();
        assert_eq!((h.min, h.lead_boundary, h.trail), (256, true, Trail::Boundary));
        assert!(h.class[b'F' as usize] && !h.class[b'g' as usize]);
        let c = shape("[a-f]{3,}", true).unwrap();
        assert!(c.class[b'C' as usize]);
        let d = shape(r"[A-Za-z0-9+/_\-]{24,}", false).unwrap();
        assert!(d.class[b'-' as usize] && d.class[b'_' as usize]);
        for not in [
            "[A-Z]{2,5}",
            "[A-Z]{2}",
            "[^A-Z]{2,}",
            "[A-Z]{0,}",
            r"\b[A-Z+]{4,}",
            "[A-Z]{4,}x",
            "[A-Z]{4,}A{0,2}",
            "x[A-Z]{4,}",
            r"[\w]{4,}",
            "[A-Z]{4,}={0,2}b",
            "[A-Z]{4,}(?:=){0,2}",
            "[z-a]{4,}",
        ] {
            assert_eq!(shape(not, false), None, "{not}");
        }
    }

    /// What the engine makes of a Hyperscan pattern's matches: the leftmost-start (SOM) matches,
    /// longest per start, nested ones dropped.
    fn reference(expr: &str, hay: &str) -> Vec<(u32, u32)> {
        let mut p = Pattern::with_flags(expr, CompileFlags::SOM_LEFTMOST | CompileFlags::UTF8).unwrap();
        p.som = Some(hyperscan::SomHorizon::Large);
        let db: BlockDatabase = p.build().unwrap();
        let sc = db.alloc_scratch().unwrap();
        let mut m = Vec::new();
        let _ = db.scan(hay, &sc, |_, s, e, _| {
            m.push((s as u32, e as u32));
            Matching::Continue
        });
        m.sort_by_key(|&(s, e)| (s, u32::MAX - e));
        let mut out: Vec<(u32, u32)> = Vec::new();
        for (s, e) in m {
            if out.last().is_some_and(|l| s < l.1) {
                continue;
            }
            out.push((s, e));
        }
        out
    }

    fn ours(expr: &str, hay: &str) -> Vec<(u32, u32)> {
        let runs = Runs::new(vec![(0, shape(expr, false).unwrap(), usize::MAX / 2)]).unwrap();
        let mut out = Vec::new();
        runs.find(hay.as_bytes(), &mut out);
        out.into_iter().map(|(_, s, e)| (s, e)).collect()
    }

    const SHAPES: [&str; 5] = ["[A-Za-z0-9+/]{5,}={0,2}", r"\b[0-9a-fA-F]{6,}\b", r"\b[0-9a-f]{4,}", "[a-z_]{3,}", r"[A-Z0-9]{7,}\b"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]
        /// Every accepted shape matches exactly where Hyperscan does, on text built from the
        /// characters at the edges of the classes.
        #[test]
        fn runs_match_hyperscan(hay in proptest::collection::vec(proptest::sample::select(vec!["A", "a", "0", "f", "F", "g", "G", "+", "/", "_", "-", "=", " ", "é", "9", "z"]), 0..80)) {
            let hay: String = hay.concat();
            for expr in SHAPES {
                prop_assert_eq!(ours(expr, &hay), reference(expr, &hay), "{} over {:?}", expr, hay);
            }
        }

        /// All shapes in one pass, as the engine runs them (one of them over the union of the
        /// classes, one longer than most runs): each finds what it finds alone.
        #[test]
        fn runs_together_match_each_alone(hay in proptest::collection::vec(proptest::sample::select(vec!["A", "a", "0", "f", "F", "g", "G", "+", "/", "_", "-", "=", " ", "é", "9", "z", "Qz9_+/Qz9_+/"]), 0..80)) {
            let hay: String = hay.concat();
            let all: Vec<&str> = SHAPES.iter().copied().chain(["[A-Za-z0-9+/_]{8,}", "[A-Za-z0-9+/_]{30,}"]).collect();
            let runs = Runs::new(all.iter().enumerate().map(|(i, e)| (i as u32, shape(e, false).unwrap(), usize::MAX / 2)).collect()).unwrap();
            let mut got = Vec::new();
            runs.find(hay.as_bytes(), &mut got);
            for (i, expr) in all.iter().enumerate() {
                let mine: Vec<(u32, u32)> = got.iter().filter(|m| m.0 == i as u32).map(|m| (m.1, m.2)).collect();
                prop_assert_eq!(mine, reference(expr, &hay), "{} over {:?}", expr, hay);
            }
        }
    }

    #[test]
    fn runs_at_every_offset_and_probe_phase() {
        // A run of exactly `min` bytes placed at every offset: one probe always lands in it.
        for lead in 0..12 {
            for len in [5, 6, 11, 12] {
                let hay = format!("{}{}{}", " ".repeat(lead), "Q".repeat(len), " x");
                let expect = reference("[A-Z]{6,}", &hay);
                assert_eq!(ours("[A-Z]{6,}", &hay), expect, "{hay:?}");
                assert_eq!(expect.len(), usize::from(len >= 6));
            }
        }
    }

    #[test]
    fn the_base64_candidate_ends_where_its_pattern_does() {
        let cls = shape(r"[A-Za-z0-9+/_\-]{4,}", false).unwrap().class;
        let spec = |max| Runs::new(vec![(0, Shape { class: cls, min: 4, lead_boundary: false, trail: Trail::Terminated { pad: b'=', max }, worth_decoding: false }, 100)]).unwrap();
        let expr = r"[A-Za-z0-9+/_-]{4,}={0,2}(?:[^A-Za-z0-9+/_=-]|$)";
        for hay in ["abcd", "abcd=", "abcd==", "abcd===", "abcd= x", "abcd=x", "ab=cdef gh", "abcd\u{e9}", "x abcdef== y", "abcd===x abcd"] {
            let mut got = Vec::new();
            spec(2).find(hay.as_bytes(), &mut got);
            // The pattern's matches end after the terminator; both name the same run.
            let want = reference(expr, hay).len();
            assert_eq!(got.len(), want, "{hay:?}");
        }
    }

    #[test]
    fn a_run_longer_than_the_rule_is_cut_at_its_width() {
        let runs = Runs::new(vec![(3, shape("[a-z]{4,}", false).unwrap(), 10)]).unwrap();
        let mut out = Vec::new();
        runs.find(b"  abcdefghijklmnopqrstuvwxyz  ", &mut out);
        assert_eq!(out, vec![(3, 2, 12)]);
    }
}
