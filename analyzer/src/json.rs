//! A validating JSON reader for event documents, built for ingest speed: strings without
//! escapes are borrowed from the document, a value can be skipped (still fully validated) and
//! handed back as its raw text, and string bodies are scanned eight bytes at a time.
//!
//! It accepts exactly RFC 8259 JSON (what `serde_json` accepts, whitespace included), nested at
//! most [`MAX_DEPTH`] deep. Input is a `&str`: UTF-8 was checked once for the whole document.

use std::borrow::Cow;

/// How deeply arrays and objects may nest (as `serde_json`).
pub const MAX_DEPTH: u32 = 128;

/// What is wrong with a document, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub at: usize,
    pub what: Cow<'static, str>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// A member's name as [`Reader::object_in_order`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name<'k> {
    /// Exactly the `k`-th of the names expected.
    Expected(usize),
    /// Any other name, unescaped.
    Other(&'k str),
}

/// A cursor over one JSON document.
pub struct Reader<'a> {
    s: &'a str,
    i: usize,
    depth: u32,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The index of the first byte at or after `i` that ends a plain run inside a string: `"`,
/// `\` or a control character (< 0x20); `b.len()` if none.
#[inline]
fn plain_run_end(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // Per byte: high bit set where the byte is '"', '\' or < 0x20. Only the lowest flagged
        // byte is exact (borrows may flag bytes above it), which is the one used.
        let quote = w ^ (LO * u64::from(b'"'));
        let slash = w ^ (LO * u64::from(b'\\'));
        let hit = (quote.wrapping_sub(LO) & !quote | slash.wrapping_sub(LO) & !slash | w.wrapping_sub(LO * 0x20) & !w) & HI;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..0x20) {
        i += 1;
    }
    i
}

fn hex(c: u8) -> Option<u16> {
    match c {
        b'0'..=b'9' => Some(u16::from(c - b'0')),
        b'a'..=b'f' => Some(u16::from(c - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(c - b'A' + 10)),
        _ => None,
    }
}

impl<'a> Reader<'a> {
    pub fn new(s: &'a str) -> Self {
        Reader { s, i: 0, depth: 0 }
    }

    fn b(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    /// An error at the cursor.
    pub fn err<T>(&self, what: impl Into<Cow<'static, str>>) -> Result<T> {
        Err(Error { at: self.i, what: what.into() })
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b().get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b().get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8, what: &'static str) -> Result<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else if self.i >= self.s.len() {
            self.err("unexpected end of document")
        } else {
            self.err(what)
        }
    }

    /// After the document's value: only whitespace may follow.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.err("trailing characters after the document"),
        }
    }

    /// Read an object, calling `each` with the reader positioned at each member's value and
    /// the member's (unescaped) name; `each` must consume the value.
    pub fn object(&mut self, mut each: impl FnMut(&mut Self, &str) -> Result<()>) -> Result<()> {
        self.object_in_order(&[], |r, name| match name {
            Name::Other(key) => each(r, key).map(|()| &[][..]),
            Name::Expected(_) => unreachable!("no name is expected"),
        })
    }

    /// Read an object whose writer emits its members in a known order, as [`object`](Self::object):
    /// `each` is called with the member's name, or with [`Name::Expected`]`(k)` when the name
    /// is exactly `expect[k]` (`expect` as given, then as `each` last returned it) — compared as
    /// raw bytes, so the name is neither scanned for its end nor unescaped. `each` returns the
    /// names it expects next, likeliest first.
    pub fn object_in_order(
        &mut self,
        mut expect: &'static [&'static str],
        mut each: impl FnMut(&mut Self, Name<'_>) -> Result<&'static [&'static str]>,
    ) -> Result<()> {
        self.members(|r| {
            let rest = &r.b()[r.i + 1..];
            // A name without escapes is its raw bytes followed by the closing quote.
            let hit = expect.iter().position(|want| rest.starts_with(want.as_bytes()) && rest.get(want.len()) == Some(&b'"'));
            let key;
            let name = match hit {
                Some(k) => {
                    r.i += expect[k].len() + 2;
                    Name::Expected(k)
                }
                None => {
                    key = r.string()?;
                    Name::Other(&key)
                }
            };
            r.eat(b':', "expected ':' after a member name")?;
            expect = each(r, name)?;
            Ok(())
        })
    }

    /// Skip an object as `serde_json` does when it keeps a raw value: member names are checked
    /// as skipped strings are (escapes well formed, surrogates not paired), not decoded.
    fn skip_object(&mut self) -> Result<()> {
        self.members(|r| {
            r.skip_string()?;
            r.eat(b':', "expected ':' after a member name")?;
            r.value()
        })
    }

    /// An object's braces and commas, calling `member` at each member's name (it reads the
    /// name, the colon and the value).
    #[inline]
    fn members(&mut self, mut member: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.eat(b'{', "expected an object")?;
        if self.opened(b'}')? {
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.err("expected a member name");
            }
            member(self)?;
            if self.closed(b'}', "expected ',' or '}' after a member")? {
                return Ok(());
            }
        }
    }

    /// Read an array, calling `each` with the reader positioned at each element.
    pub fn array(&mut self, mut each: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.eat(b'[', "expected an array")?;
        if self.opened(b']')? {
            return Ok(());
        }
        loop {
            each(self)?;
            if self.closed(b']', "expected ',' or ']' after an element")? {
                return Ok(());
            }
        }
    }

    /// One level deeper, just after an opening bracket; true (and back up) if `close` follows
    /// at once.
    fn opened(&mut self, close: u8) -> Result<bool> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        if self.peek() == Some(close) {
            self.i += 1;
            self.depth -= 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// After an element: a comma (false: more follow) or `close` (true: back up a level).
    fn closed(&mut self, close: u8, what: &'static str) -> Result<bool> {
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                self.depth -= 1;
                Ok(true)
            }
            None => self.err("unexpected end of document"),
            Some(_) => self.err(what),
        }
    }

    /// Consume `null` if it is next.
    #[inline]
    pub fn null(&mut self) -> Result<bool> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<()> {
        if self.b()[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => self.err("expected true or false"),
        }
    }

    /// A string value; borrowed when it has no escapes.
    #[inline]
    pub fn string(&mut self) -> Result<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string");
        }
        let b = self.b();
        let start = self.i + 1;
        let end = plain_run_end(b, start);
        match b.get(end) {
            Some(b'"') => {
                self.i = end + 1;
                Ok(Cow::Borrowed(&self.s[start..end]))
            }
            Some(b'\\') => {
                self.i = end;
                let mut out = String::with_capacity(end - start + 16);
                out.push_str(&self.s[start..end]);
                self.escaped(&mut out)?;
                Ok(Cow::Owned(out))
            }
            Some(_) => {
                self.i = end;
                self.err("control character inside a string")
            }
            None => {
                self.i = end;
                self.err("unterminated string")
            }
        }
    }

    /// The rest of a string from an escape on, unescaped into `out`; consumes the closing quote.
    fn escaped(&mut self, out: &mut String) -> Result<()> {
        let b = self.b();
        loop {
            match b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(0..0x20) => return self.err("control character inside a string"),
                None => return self.err("unterminated string"),
                Some(_) => {
                    let end = plain_run_end(b, self.i);
                    out.push_str(&self.s[self.i..end]);
                    self.i = end;
                }
            }
        }
    }

    /// One escape sequence at `self.i` (the backslash), decoded.
    fn escape(&mut self) -> Result<char> {
        let c = match self.b().get(self.i + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.i += 2;
                let hi = self.hex4()?;
                return match hi {
                    0xD800..=0xDBFF => {
                        if self.b().get(self.i..self.i + 2) != Some(&b"\\u"[..]) {
                            return self.err("lone leading surrogate in a \\u escape");
                        }
                        self.i += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return self.err("invalid trailing surrogate in a \\u escape");
                        }
                        let cp = 0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
                        char::from_u32(cp).map_or_else(|| self.err("invalid \\u escape"), Ok)
                    }
                    0xDC00..=0xDFFF => self.err("lone trailing surrogate in a \\u escape"),
                    _ => char::from_u32(u32::from(hi)).map_or_else(|| self.err("invalid \\u escape"), Ok),
                };
            }
            None => return self.err("unterminated string"),
            Some(_) => return self.err("invalid escape"),
        };
        self.i += 2;
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u16> {
        let mut v = 0;
        for k in 0..4 {
            match self.b().get(self.i + k).copied().and_then(hex) {
                Some(d) => v = v << 4 | d,
                None => {
                    self.i += k;
                    return self.err("invalid \\u escape");
                }
            }
        }
        self.i += 4;
        Ok(v)
    }

    /// Skip a string, validating its escapes (hex digits of `\u` escapes, not surrogate
    /// pairing: the same as `serde_json` when it skips or keeps a raw value).
    fn skip_string(&mut self) -> Result<()> {
        let b = self.b();
        self.i += 1;
        loop {
            self.i = plain_run_end(b, self.i);
            match b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => match b.get(self.i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                    Some(b'u') => {
                        self.i += 2;
                        self.hex4()?;
                    }
                    None => return self.err("unterminated string"),
                    Some(_) => return self.err("invalid escape"),
                },
                Some(_) => return self.err("control character inside a string"),
                None => return self.err("unterminated string"),
            }
        }
    }

    /// The number at the cursor, validated against the JSON grammar; returns its text.
    fn number(&mut self) -> Result<&'a str> {
        let b = self.b();
        let start = self.i;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - from
        };
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => {
                self.i = i;
                return self.err("invalid number");
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                self.i = i;
                return self.err("invalid number: digits must follow the decimal point");
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                self.i = i;
                return self.err("invalid number: digits must follow the exponent");
            }
        }
        self.i = i;
        Ok(&self.s[start..i])
    }

    /// An integer value that fits `T` (no fraction or exponent, like `serde_json` for an
    /// integer field).
    pub fn int<T: TryFrom<i128>>(&mut self) -> Result<T> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {}
            _ => return self.err("expected an integer"),
        }
        let at = self.i;
        let text = self.number()?;
        // `-0` is a float to `serde_json` (negative zero), so not an integer here either.
        let parsed = if text.bytes().all(|c| c == b'-' || c.is_ascii_digit()) && text != "-0" { text.parse::<i128>().ok() } else { None };
        match parsed.and_then(|v| T::try_from(v).ok()) {
            Some(v) => Ok(v),
            None => Err(Error { at, what: format!("integer out of range or not an integer: {text}").into() }),
        }
    }

    /// Skip one value of any kind, validating it; returns its text.
    pub fn skip(&mut self) -> Result<&'a str> {
        self.ws();
        let start = self.i;
        self.value()?;
        Ok(&self.s[start..self.i])
    }

    fn value(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'{') => self.skip_object(),
            Some(b'[') => self.array(|r| r.value()),
            Some(b'"') => self.skip_string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            Some(_) => self.err("expected a value"),
            None => self.err("unexpected end of document"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(s: &str) -> Result<&str> {
        let mut r = Reader::new(s);
        let v = r.skip()?;
        r.end()?;
        Ok(v)
    }

    /// Every position of every string gets the same answer from the word-at-a-time scan and
    /// from a byte loop.
    #[test]
    fn plain_run_end_finds_the_first_special_byte() {
        let mut doc = Vec::new();
        for i in 0..300u32 {
            doc.push(match i % 37 {
                3 => b'"',
                11 => b'\\',
                17 => 0x1f,
                23 => 0x7f,
                29 => 0xC3,
                31 => 0x20,
                _ => b'a' + (i % 26) as u8,
            });
        }
        for start in 0..doc.len() {
            let want = (start..doc.len()).find(|&i| matches!(doc[i], b'"' | b'\\' | 0..0x20)).unwrap_or(doc.len());
            assert_eq!(plain_run_end(&doc, start), want, "from {start}");
        }
        for special in [b'"', b'\\', 0u8, 0x1f] {
            for at in 0..16 {
                let mut d = vec![b'x'; 16];
                d[at] = special;
                assert_eq!(plain_run_end(&d, 0), at);
            }
        }
    }

    #[test]
    fn strings_unescape_like_serde_json() {
        for s in [r#""plain""#, r#""a\"b\\c\/d\b\f\n\r\t""#, r#""\u00e9\u0041\ud83d\ude00x""#, r#""é日本""#, r#""""#, r#""\\""#] {
            let want: String = serde_json::from_str(s).unwrap();
            let mut r = Reader::new(s);
            assert_eq!(r.string().unwrap(), want, "{s}");
            r.end().unwrap();
        }
        for bad in [r#""\ud83d""#, r#""\ude00""#, r#""\ud83dx""#, r#""\ud83d\u0041""#, r#""\x""#, r#""\u12g4""#, "\"a\u{1}\"", r#""abc"#, r#""\"#] {
            assert!(Reader::new(bad).string().is_err(), "accepted {bad}");
            assert!(serde_json::from_str::<String>(bad).is_err(), "serde accepts {bad}");
        }
    }

    /// Names read in order: an expected name is taken from its raw bytes only when they are
    /// the whole name; anything else (a longer name, an escaped one) is read as a name.
    #[test]
    fn members_in_order_are_matched_whole() {
        const NAMES: &[&str] = &["tool", "tools", "id"];
        let doc = r#" { "tools" : 1 , "tool":2,"t\u006fol":3, "id" :4,"to":5,"idx":6} "#;
        let mut r = Reader::new(doc);
        let mut seen = Vec::new();
        r.object_in_order(&NAMES[..1], |r, name| {
            let v: u8 = r.int()?;
            seen.push(match name {
                Name::Expected(k) => format!("expected {k} = {v}"),
                Name::Other(n) => format!("{n} = {v}"),
            });
            Ok(NAMES)
        })
        .unwrap();
        r.end().unwrap();
        assert_eq!(seen, ["tools = 1", "expected 0 = 2", "tool = 3", "expected 2 = 4", "to = 5", "idx = 6"]);
        for bad in [r#"{"tool" 1}"#, r#"{"tool":1,}"#, r#"{"tool":1"#, r#"{"tool"#, r#"{tool:1}"#] {
            let mut r = Reader::new(bad);
            assert!(r.object_in_order(NAMES, |r, _| r.int::<u8>().map(|_| NAMES)).is_err(), "accepted {bad}");
        }
    }

    /// Valid and invalid documents: the same verdict as `serde_json` reading a raw value, and a
    /// skipped value is its exact text.
    #[test]
    fn skip_validates_like_serde_json() {
        let cases = [
            r#"{"a":[1,-2.5e+3,0,true,false,null,"x\u0041",{}],"b":{"c":[]}}"#,
            " { \"a\" : [ 1 , 2 ] } ",
            "0",
            "-0.0E-0",
            r#""\ud800""#,
            // Names of a skipped object are not decoded (found by the `event_json` fuzz target).
            r#"{"\ud83e\ud83eu":2,"\udc00":[]}"#,
            r#"{"\ud83":2}"#,
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "[1 2]",
            "tru",
            "nul",
            "[",
            "{\"a\":",
            "\"\\u12\"",
            "[\"\\x\"]",
            "[\"\\",
            "[\"\t\"]",
            "{} x",
            "",
        ];
        for c in cases {
            let ours = skip_all(c);
            let theirs = serde_json::from_str::<Box<serde_json::value::RawValue>>(c);
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{c:?}: ours {ours:?}, serde {theirs:?}");
            if let Ok(v) = ours {
                assert_eq!(v, c.trim());
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH as usize), "]".repeat(MAX_DEPTH as usize));
        assert!(skip_all(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH as usize + 1), "]".repeat(MAX_DEPTH as usize + 1));
        assert!(skip_all(&deep).unwrap_err().what.contains("nested too deeply"));
        // No stack overflow on absurd depth.
        assert!(skip_all(&"[".repeat(1_000_000)).is_err());
    }

    #[test]
    fn integers_fit_their_type() {
        let int16 = |s: &str| Reader::new(s).int::<u16>();
        assert_eq!(int16("65535"), Ok(65535));
        assert!(int16("65536").is_err());
        assert!(int16("-1").is_err());
        assert!(int16("1.0").is_err());
        assert!(int16("1e2").is_err());
        // As serde_json reads it: negative zero is a float (found by the `event_json` fuzz target).
        assert!(int16("-0").is_err() && Reader::new("-0").int::<i64>().is_err());
        assert_eq!(Reader::new("-1").int::<i64>(), Ok(-1));
        assert!(int16("\"1\"").is_err());
        assert_eq!(Reader::new("-9223372036854775808").int::<i64>(), Ok(i64::MIN));
        assert!(Reader::new("18446744073709551616").int::<u64>().is_err());
        assert_eq!(Reader::new("18446744073709551615").int::<u64>(), Ok(u64::MAX));
    }
}
