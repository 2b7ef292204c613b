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

/// Report runs of invisible characters in `text` as `(check, start, end)` (byte offsets into
/// it). ASCII text has none; callers skip it.
pub fn find(text: &str, mut report: impl FnMut(Builtin, usize, usize)) {
    let mut f = Finder::default();
    f.feed(text, 0, &mut report);
    f.finish(&mut report);
}

/// [`find`] over text that arrives in pieces (a streamed body): a run split between pieces is
/// one run, and whether a zero-width run sits inside a word is judged by the characters
/// around it, whichever piece they came in. Offsets are absolute (`base` + offset in piece).
#[derive(Debug, Default)]
pub struct Finder {
    /// The character before the current run (or the last one seen) is ASCII alphanumeric.
    prev_word: bool,
    /// A run not yet closed: (kind, start, end, word before it).
    run: Option<(Builtin, usize, usize, bool)>,
}

impl Finder {
    pub fn feed(&mut self, text: &str, base: usize, report: &mut dyn FnMut(Builtin, usize, usize)) {
        for (i, c) in text.char_indices() {
            let (s, e) = (base + i, base + i + c.len_utf8());
            match (Builtin::of(c), self.run) {
                (Some(b), Some((rb, rs, _, w))) if rb == b => self.run = Some((b, rs, e, w)),
                (Some(b), _) => {
                    self.close(false, report);
                    self.run = Some((b, s, e, self.prev_word));
                }
                (None, _) => {
                    let word = c.is_ascii_alphanumeric();
                    self.close(word, report);
                    self.prev_word = word;
                }
            }
        }
        // A run this long is reported now, as if a word followed: a streamed body releases
        // bytes a few KiB behind, and the run must be found before its bytes go out.
        if self.run.is_some_and(|(_, s, e, _)| e - s > 1024) {
            self.close(true, report);
        }
    }

    /// Something that is not text (bytes that are not UTF-8): ends a run, and is no word.
    pub fn boundary(&mut self, report: &mut dyn FnMut(Builtin, usize, usize)) {
        self.close(false, report);
        self.prev_word = false;
    }

    pub fn finish(&mut self, report: &mut dyn FnMut(Builtin, usize, usize)) {
        self.close(false, report);
    }

    fn close(&mut self, next_word: bool, report: &mut dyn FnMut(Builtin, usize, usize)) {
        if let Some((b, s, e, before)) = self.run.take() {
            if b != Builtin::ZeroWidth || (before && next_word) {
                report(b, s, e);
            }
            // A run is not a word character: what follows it sees the run's left neighbour
            // only through the run (zero-width runs between words are one finding).
            self.prev_word = false;
        }
    }
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

    /// Fed in two pieces split at every character boundary, the finder reports what one pass
    /// over the whole text reports (found by fuzzing `stream_scan`: a soft hyphen run right
    /// after a chunk boundary lost the word before it).
    #[test]
    fn pieces_find_what_the_whole_finds() {
        for t in ["666\u{AD}\u{AD}66 x", "ign\u{200B}\u{200B}ore", "a\u{202E}\u{200B}b", "ok\u{E0068}\u{E0069} x\u{200B}", "\u{200B}a\u{200B}"] {
            let whole = kinds(t);
            for (i, _) in t.char_indices().chain([(t.len(), ' ')]) {
                let mut got = Vec::new();
                let mut f = Finder::default();
                let mut rep = |b: Builtin, s, e| got.push((b.kind(), s, e));
                f.feed(&t[..i], 0, &mut rep);
                f.feed(&t[i..], i, &mut rep);
                f.finish(&mut rep);
                assert_eq!(got, whole, "{t:?} split at {i}");
            }
        }
    }
}
