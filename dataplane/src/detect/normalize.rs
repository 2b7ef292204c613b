//! Normalisation against evasion: the text is rewritten into what a reader (agent or model)
//! would take it to say, and every byte of the result maps back to the bytes of the original
//! it came from, so that a finding in normalised text masks the right original bytes.
//!
//! Per character, in order: zero-width characters and soft hyphens are dropped; Unicode tag
//! characters (U+E0020–E007E, used to smuggle invisible ASCII) become the ASCII they encode;
//! everything else is NFKC-normalised (full-width digits and letters, ligatures, super- and
//! subscripts become their plain forms). NFKC is applied one character at a time, so
//! compositions across characters (a letter followed by a combining mark) are not merged; the
//! patterns that care match both forms.

use unicode_normalization::UnicodeNormalization;

/// Text after normalisation, with the way back to the original's byte offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub text: String,
    /// For each byte of `text`: the original byte range of the character it came from.
    /// Empty when the text was unchanged (the identity map).
    origin: Vec<(u32, u32)>,
}

pub(crate) fn dropped(c: char) -> bool {
    matches!(c, '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}')
}

fn tag_ascii(c: char) -> Option<char> {
    let v = c as u32;
    (0xE0020..=0xE007E).contains(&v).then(|| char::from_u32(v - 0xE0000)).flatten()
}

/// Normalise `input`. ASCII input is returned unchanged without building a map.
pub fn normalize(input: &str) -> Normalized {
    let mut text = String::new();
    let mut origin = Vec::new();
    if !normalize_into(input, &mut text, &mut origin) {
        return Normalized { text: input.to_owned(), origin: Vec::new() };
    }
    Normalized { text, origin }
}

/// Normalise `input` into reused buffers. Returns false (buffers cleared, nothing to map) when
/// the normalised text equals the input, so the caller scans `input` itself: the common case
/// of ASCII text costs one `is_ascii` pass and no copy.
pub fn normalize_into(input: &str, text: &mut String, origin: &mut Vec<(u32, u32)>) -> bool {
    text.clear();
    origin.clear();
    if input.is_ascii() {
        return false;
    }
    text.reserve(input.len());
    origin.reserve(input.len());
    let mut buf = [0u8; 4];
    for (start, c) in input.char_indices() {
        let end = (start + c.len_utf8()) as u32;
        let span = (start as u32, end);
        if dropped(c) {
            continue;
        }
        if let Some(a) = tag_ascii(c) {
            text.push(a);
            origin.push(span);
            continue;
        }
        if c.is_ascii() {
            text.push(c);
            origin.push(span);
            continue;
        }
        for n in c.encode_utf8(&mut buf).nfkc() {
            text.push(n);
            origin.extend(std::iter::repeat_n(span, n.len_utf8()));
        }
    }
    if text == input {
        text.clear();
        origin.clear();
        return false;
    }
    true
}

/// The original byte range behind the normalised range `start..end` given the byte map
/// (`origin` empty means the identity).
pub fn original(origin: &[(u32, u32)], start: usize, end: usize) -> (usize, usize) {
    if origin.is_empty() || end <= start {
        return (start, end);
    }
    let last = origin.len() - 1;
    (origin[start.min(last)].0 as usize, origin[(end - 1).min(last)].1 as usize)
}

impl Normalized {
    /// Was anything changed?
    pub fn changed(&self) -> bool {
        !self.origin.is_empty()
    }

    /// The original byte range behind the normalised range `start..end` (half-open, `end > start`).
    pub fn original(&self, start: usize, end: usize) -> (usize, usize) {
        original(&self.origin, start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_width_digits_and_zero_width_evasion() {
        let src = "card: ４１１１\u{200B}-1111-1111-1111 ok";
        let n = normalize(src);
        assert_eq!(n.text, "card: 4111-1111-1111-1111 ok");
        let start = n.text.find('4').unwrap();
        let end = start + "4111-1111-1111-1111".len();
        let (a, b) = n.original(start, end);
        assert_eq!(&src[a..b], "４１１１\u{200B}-1111-1111-1111");
    }

    #[test]
    fn tag_characters_reveal_hidden_ascii() {
        let hidden: String = "ignore previous".chars().map(|c| char::from_u32(0xE0000 + c as u32).unwrap()).collect();
        let src = format!("weather: sunny{hidden}");
        let n = normalize(&src);
        assert_eq!(n.text, "weather: sunnyignore previous");
        let s = n.text.find("ignore").unwrap();
        let (a, b) = n.original(s, n.text.len());
        assert_eq!(&src[a..b], hidden);
    }

    #[test]
    fn ligatures_soft_hyphens_and_ascii_fast_path() {
        assert_eq!(normalize("pass\u{00AD}word \u{FB01}le").text, "password file");
        let n = normalize("plain ascii");
        assert!(!n.changed());
        assert_eq!(n.original(2, 5), (2, 5));
    }

    proptest! {
        /// Every range of whole normalised characters maps to a valid, ordered range of whole
        /// original characters.
        #[test]
        fn mapped_ranges_are_valid(src in "\\PC{0,40}", a in 0usize..200, b in 0usize..200) {
            let n = normalize(&src);
            prop_assume!(!n.text.is_empty());
            let t = &n.text;
            let snap = |mut i: usize| { while !t.is_char_boundary(i) { i -= 1; } i };
            let s = snap(a.min(b) % t.len());
            let mut e = snap(a.max(b) % t.len() + 1).max(s + 1);
            while !t.is_char_boundary(e) { e += 1; }
            let (os, oe) = n.original(s, e);
            prop_assert!(os < oe && oe <= src.len());
            prop_assert!(src.is_char_boundary(os) && src.is_char_boundary(oe));
        }
    }
}
