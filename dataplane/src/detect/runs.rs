//! Character runs without Hyperscan. A pattern of the shape `[CLASS]{N,}` (optionally `\b`
//! around it, or a padding character `X{0,K}` after it) matches long runs of one class —
//! encoded blobs, hex dumps, the base64 decode candidate. Hyperscan has no literal to
//! prefilter such a pattern on, so every one of them runs as its own automaton over all the
//! text and, inside the full pack, they cost more than all the other rules together (measured
//! with `cargo run --release -p sluice-benches --example marginal_cost`). Here they are found
//! in one pass: 64 bytes at a time become a mask of the union of the classes (two table
//! look-ups per 32 bytes with AVX2), and a few shifts of the mask find the runs long enough
//! for any pattern; only those are looked at byte by byte.
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
    /// The shortest run any spec needs.
    min: usize,
    union: Union,
}

/// Membership in the union of the classes, 64 bytes at a time.
struct Union {
    /// Per low nibble, the high nibbles (bit h: `h << 4 | low`) of ASCII bytes in the union.
    rows: [u8; 16],
    /// AVX2 is there and the union is ASCII (as `parse_class` makes every class): the
    /// look-up by nibbles; otherwise the table, byte by byte.
    simd: bool,
}

impl Union {
    fn new(table: &[u32; 256]) -> Union {
        let mut rows = [0u8; 16];
        for b in (0..128).filter(|&b| table[b] != 0) {
            rows[b & 15] |= 1 << (b >> 4);
        }
        let ascii = table[128..].iter().all(|&t| t == 0);
        Union { rows, simd: ascii && avx2() }
    }

    /// Bit i: byte i of the block is in the union.
    #[inline]
    fn mask(&self, table: &[u32; 256], block: &[u8; 64]) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` is set only where AVX2 was detected.
            return unsafe { x86::mask(&self.rows, block) };
        }
        block.iter().enumerate().fold(0, |m, (i, &b)| m | u64::from(table[b as usize] != 0) << i)
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Bit i: byte i's low nibble's row holds its high nibble (bytes of 0x80 and up: never).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn mask(rows: &[u8; 16], block: &[u8; 64]) -> u64 {
        // SAFETY: AVX2 is enabled here; 16 and 2 × 32 bytes are read from arrays of those
        // sizes, unaligned loads.
        unsafe {
            let rows = _mm256_broadcastsi128_si256(_mm_loadu_si128(rows.as_ptr().cast()));
            let bits = _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0);
            let nibble = _mm256_set1_epi8(0x0f);
            let half = |v: __m256i| {
                let row = _mm256_shuffle_epi8(rows, _mm256_and_si256(v, nibble));
                let bit = _mm256_shuffle_epi8(bits, _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble));
                !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(row, bit), _mm256_setzero_si256())) as u32)
            };
            let lo = _mm256_loadu_si256(block.as_ptr().cast());
            let hi = _mm256_loadu_si256(block.as_ptr().add(32).cast());
            u64::from(half(lo)) | u64::from(half(hi)) << 32
        }
    }
}

/// Bit i of the result: bits i .. i + n of `x` are all set (n ≥ 1; none past bit 63).
fn runs_of(x: u64, n: usize) -> u64 {
    let (mut y, mut k) = (x, 1);
    while 2 * k <= n {
        y &= y >> k;
        k *= 2;
    }
    if k < n {
        y &= y >> (n - k);
    }
    y
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
        Some(Runs { union: Union::new(&table), table, specs, min })
    }

    /// Append (pattern id, start, end) for every match in `hay`.
    pub fn find(&self, hay: &[u8], out: &mut Vec<(u32, u32, u32)>) {
        if hay.len() < self.min {
            return;
        }
        // The start of a union run that reaches the end of the block before.
        let mut open: Option<usize> = None;
        let blocks = hay.chunks_exact(64);
        let rest = blocks.remainder();
        for (k, block) in blocks.enumerate() {
            let block: &[u8; 64] = block.try_into().unwrap_or(&[0; 64]);
            self.block(hay, 64 * k, self.union.mask(&self.table, block), &mut open, out);
        }
        if !rest.is_empty() {
            // Zeros past the end: never in a class.
            let mut tail = [0u8; 64];
            tail[..rest.len()].copy_from_slice(rest);
            self.block(hay, hay.len() - rest.len(), self.union.mask(&self.table, &tail), &mut open, out);
        }
        if let Some(a) = open {
            if hay.len() - a >= self.min {
                self.in_union_run(hay, a, hay.len(), out);
            }
        }
    }

    /// The union runs that end in the block at `at` (mask `x`), and the one it leaves open.
    #[inline]
    fn block(&self, hay: &[u8], at: usize, mut x: u64, open: &mut Option<usize>, out: &mut Vec<(u32, u32, u32)>) {
        let m = self.min;
        if let Some(a) = *open {
            let t = x.trailing_ones() as usize;
            if t == 64 {
                return;
            }
            if at + t - a >= m {
                self.in_union_run(hay, a, at + t, out);
            }
            *open = None;
            x &= !0 << t;
        }
        // A run reaching the block's last byte may go on in the next.
        let lead = x.leading_ones();
        if lead > 0 {
            *open = Some(at + 64 - lead as usize);
            x &= u64::MAX.checked_shr(lead).unwrap_or(0);
        }
        // The rest lie inside the block: each long one starts at its lowest bit in `long`.
        let mut long = if m < 64 { runs_of(x, m) } else { 0 };
        while long != 0 {
            let s = long.trailing_zeros() as usize;
            let e = s + (x >> s).trailing_ones() as usize;
            self.in_union_run(hay, at + s, at + e, out);
            long &= !0 << e;
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
    fn runs_across_block_borders() {
        // Runs as short as, and longer than, every minimum around the 64-byte blocks the
        // masks are made of, with text of other runs before them.
        for min in [1usize, 5, 24, 63, 64, 65, 130] {
            let runs = Runs::new(vec![(0, shape(&format!("[A-Z]{{{min},}}"), false).unwrap(), usize::MAX / 2)]).unwrap();
            for lead in (0..140).step_by(3).chain([63, 64, 65, 127, 128]) {
                for len in [min.saturating_sub(1).max(1), min, min + 1, 64, 129, 200] {
                    let hay = format!("{}{}{}", &"ab ".repeat(lead / 3 + 1)[..lead], "Q".repeat(len), if lead % 2 == 0 { " x" } else { "" });
                    let mut got = Vec::new();
                    runs.find(hay.as_bytes(), &mut got);
                    let want: Vec<(u32, u32, u32)> = if len >= min { vec![(0, lead as u32, (lead + len) as u32)] } else { vec![] };
                    assert_eq!(got, want, "min {min} lead {lead} len {len}");
                }
            }
        }
    }

    #[test]
    fn the_mask_by_nibbles_is_the_table() {
        if !avx2() {
            return;
        }
        let runs = Runs::new(SHAPES.iter().enumerate().map(|(i, e)| (i as u32, shape(e, false).unwrap(), 100)).collect()).unwrap();
        let by_table = Union { simd: false, ..Union::new(&runs.table) };
        assert!(runs.union.simd);
        let mut block = [0u8; 64];
        for round in 0..=255u8 {
            for (i, b) in block.iter_mut().enumerate() {
                *b = round.wrapping_mul(31).wrapping_add((i as u8).wrapping_mul(7)) ^ (i as u8 >> 2);
            }
            block[usize::from(round) % 64] = round;
            assert_eq!(runs.union.mask(&runs.table, &block), by_table.mask(&runs.table, &block), "{block:?}");
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
