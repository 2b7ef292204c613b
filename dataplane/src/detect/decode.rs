//! Decode-and-rescan: text an agent or model could decode (percent-encoding, base64) is
//! decoded and scanned again, so a secret does not pass by being encoded once. Candidates are
//! found by two internal patterns in the same Hyperscan database (see `engine`); this module
//! only decodes. Decoding is bounded: [`MAX_DEPTH`] nested layers, [`MAX_DECODED`] bytes per
//! candidate, and the result must be printable UTF-8 text (binary blobs are not rescanned).

/// Nested encodings followed (base64 of percent-encoded text is two).
pub const MAX_DEPTH: u8 = 2;
/// Longest candidate decoded, in decoded bytes.
pub const MAX_DECODED: usize = 64 * 1024;

/// The internal candidate patterns (Hyperscan syntax). A base64 candidate is a run of at
/// least 24 base64 characters ending at a non-base64 character or the end of the text
/// (reported once per run); a percent-encoded one is a run of escapes and URL characters
/// (at least two escapes are required before it is decoded).
pub const BASE64_CANDIDATE: &str = r"[A-Za-z0-9+/_-]{24,}={0,2}(?:[^A-Za-z0-9+/_=-]|$)";
pub const PERCENT_CANDIDATE: &str = r"[A-Za-z0-9._~+-]*(?:%[0-9A-Fa-f]{2}[A-Za-z0-9._~+!*'(),;:@&=$-]*)+";

/// Is a base64 candidate worth decoding? Encoded bytes mix upper case, lower case and digits;
/// hex digests, UUIDs, paths and long words do not, and most candidates are those.
pub fn mixes_cases_and_digits(run: &[u8]) -> bool {
    /// 1 for upper case, 2 for lower case, 4 for digits.
    const KIND: [u8; 256] = {
        let mut t = [0; 256];
        let mut c = 0;
        while c < 256 {
            t[c] = match c as u8 {
                b'A'..=b'Z' => 1,
                b'a'..=b'z' => 2,
                b'0'..=b'9' => 4,
                _ => 0,
            };
            c += 1;
        }
        t
    };
    run.iter().fold(0, |seen, &c| seen | KIND[c as usize]) == 7
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Base64,
    Percent,
}

impl Encoding {
    /// The name the record uses.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Base64 => "base64",
            Encoding::Percent => "percent",
        }
    }
}

/// Decode a percent-encoded candidate; `None` unless it decodes to different, printable text.
pub fn percent(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.iter().filter(|&&c| c == b'%').count() < 2 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    printable(out).filter(|t| t != s)
}

/// The value of one hex digit.
pub(super) fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decode a base64 (standard or URL-safe, padding optional) candidate; `None` unless it is
/// valid base64 of printable text of at least 16 bytes.
pub fn base64(s: &str) -> Option<String> {
    if s.len() / 4 * 3 > MAX_DECODED {
        return None;
    }
    let out = base64_bytes(s)?;
    if out.len() < 16 {
        return None;
    }
    printable(out)
}

/// The bytes base64 (standard or URL-safe, padding optional) stands for; `None` when it is not
/// base64.
pub(crate) fn base64_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Printable UTF-8 text: at least 90% of the characters are not control characters (tabs and
/// newlines count as printable).
fn printable(bytes: Vec<u8>) -> Option<String> {
    let t = String::from_utf8(bytes).ok()?;
    let (mut n, mut bad) = (0usize, 0usize);
    for c in t.chars() {
        n += 1;
        if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
            bad += 1;
        }
    }
    (n > 0 && bad * 10 <= n).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runs_mixing_cases_and_digits_are_worth_decoding() {
        for yes in ["QUtJQUlPU0ZPRE5ON0VYQU1QTEU", "a1B", "ghp_x9Z"] {
            assert!(mixes_cases_and_digits(yes.as_bytes()), "{yes}");
        }
        for no in ["d41d8cd98f00b204e9800998ecf8427e", "/usr/local/share/applications", "ABCDEF0123456789", "CamelCaseWordsOnly", ""] {
            assert!(!mixes_cases_and_digits(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn decodes_text_and_refuses_binary() {
        assert_eq!(percent("user%40example%2Ecom%20x").as_deref(), Some("user@example.com x"));
        assert_eq!(percent("100%"), None);
        assert_eq!(base64("QUtJQUlPU0ZPRE5ON0VYQU1QTEUgaXMgdGhlIGtleQ==").as_deref(), Some("AKIAIOSFODNN7EXAMPLE is the key"));
        // URL-safe alphabet, no padding.
        assert_eq!(base64("aGVsbG8_Pz8_IHdvcmxkIHdvcmxk").as_deref(), Some("hello???? world world"));
        // A hash is valid base64 of binary: not rescanned.
        assert_eq!(base64("2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"), None);
        assert_eq!(base64("not base64 at all!!"), None);
    }
}
