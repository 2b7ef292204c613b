//! Built-in checks for invisible characters: what changes what a model reads while a human
//! reviewer sees nothing. They run on the original text (the normaliser removes or decodes
//! these characters before the pattern scan), so they are code rather than pack rules; each
//! has a kind like any rule (`unicode_tag_characters`, `bidi_control`, `zero_width_evasion`).

use super::normalize::dropped;

/// The built-in checks, in the order of their rule indices after the pack rules.
pub const BUILTINS: [Builtin; 3] = [Builtin::Tags, Builtin::Bidi, Builtin::ZeroWidth];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Unicode tag characters U+E0000–E007F (invisible ASCII).
    Tags,
    /// Bidirectional overrides and isolates U+202A–202E, U+2066–2069 (reorder displayed text).
    Bidi,
    /// Zero-width characters or soft hyphens inside a word of ASCII letters and digits
    /// (splitting a keyword or a number so that naive filters miss it). A zero-width joiner
    /// between emoji is ordinary text and not reported.
    ZeroWidth,
}

impl Builtin {
    pub fn id(self) -> &'static str {
        match self {
            Builtin::Tags => "builtin.unicode_tag_characters",
            Builtin::Bidi => "builtin.bidi_control",
            Builtin::ZeroWidth => "builtin.zero_width_evasion",
        }
    }
    pub fn kind(self) -> &'static str {
        &self.id()["builtin.".len()..]
    }
    pub fn doc(self) -> &'static str {
        match self {
            Builtin::Tags => "Unicode tag characters (U+E0000–E007F): invisible ASCII a model reads and a reviewer does not see.",
            Builtin::Bidi => "Bidirectional override and isolate controls (U+202A–202E, U+2066–2069) that reorder displayed text.",
            Builtin::ZeroWidth => "Zero-width characters or soft hyphens inside an ASCII word or number (keyword splitting). Zero-width joiners in emoji sequences are not reported.",
        }
    }
    fn of(c: char) -> Option<Builtin> {
        let v = c as u32;
        if (0xE0000..=0xE007F).contains(&v) {
            Some(Builtin::Tags)
        } else if (0x202A..=0x202E).contains(&v) || (0x2066..=0x2069).contains(&v) {
            Some(Builtin::Bidi)
        } else if dropped(c) {
            Some(Builtin::ZeroWidth)
        } else {
            None
        }
    }
}

/// Report runs of invisible characters as `(check, start, end)` (original byte offsets).
/// ASCII text has none; callers skip it.
pub fn find(text: &str, mut report: impl FnMut(Builtin, usize, usize)) {
    let bytes = text.as_bytes();
    let mut run: Option<(Builtin, usize, usize)> = None;
    let flush = |run: &mut Option<(Builtin, usize, usize)>, report: &mut dyn FnMut(Builtin, usize, usize)| {
        if let Some((b, s, e)) = run.take() {
            let word = |i: usize| bytes.get(i).is_some_and(|c| c.is_ascii_alphanumeric());
            if b != Builtin::ZeroWidth || (s > 0 && word(s - 1) && word(e)) {
                report(b, s, e);
            }
        }
    };
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        match (Builtin::of(c), run) {
            (Some(b), Some((rb, s, _))) if rb == b => run = Some((b, s, end)),
            (Some(b), _) => {
                flush(&mut run, &mut report);
                run = Some((b, i, end));
            }
            (None, _) => flush(&mut run, &mut report),
        }
    }
    flush(&mut run, &mut report);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<(&'static str, usize, usize)> {
        let mut v = Vec::new();
        find(t, |b, s, e| v.push((b.kind(), s, e)));
        v
    }

    #[test]
    fn tags_bidi_and_word_splitting_are_found_but_emoji_joiners_are_not() {
        let tags: String = "hi".chars().map(|c| char::from_u32(0xE0000 + c as u32).unwrap()).collect();
        let t = format!("ok{tags} x");
        assert_eq!(kinds(&t), vec![("unicode_tag_characters", 2, 2 + tags.len())]);
        assert_eq!(kinds("a\u{202E}cba"), vec![("bidi_control", 1, 4)]);
        assert_eq!(kinds("ign\u{200B}ore"), vec![("zero_width_evasion", 3, 6)]);
        assert!(kinds("family 👨\u{200D}👩\u{200D}👧 ok").is_empty());
        assert!(kinds("\u{FEFF}leading byte-order mark").is_empty());
    }
}
