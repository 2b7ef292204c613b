//! Masking: how a finding's bytes are replaced. Strategies (per rule by default, overridable
//! per category in the gateway config):
//! - `redact`: `[REDACTED:kind]`;
//! - `partial`: every letter and digit but the last four becomes `*`, separators stay
//!   (`**** **** **** 1111`);
//! - `fingerprint`: `[kind:<16 hex>]`, a blake3 keyed hash of the normalised value — stable
//!   within a deployment (same key), so the analyzer can follow one value across calls
//!   without anyone storing it;
//! - `placeholder`: a fixed text (`[MASKED]` unless configured);
//! - `remove`: the bytes are deleted — the default for invisible characters, where any
//!   visible marker would change what the surrounding text reads as.
//!
//! Masking works on one string at a time; JSON documents are masked leaf by leaf
//! ([`super::json`]), so the output is always valid JSON.

use super::normalize::normalize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Redact,
    Partial,
    Fingerprint,
    Placeholder,
    Remove,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "redact" => Strategy::Redact,
            "partial" => Strategy::Partial,
            "fingerprint" => Strategy::Fingerprint,
            "placeholder" => Strategy::Placeholder,
            "remove" => Strategy::Remove,
            _ => return None,
        })
    }
}

/// Deployment-wide masking settings.
#[derive(Clone)]
pub struct Masker {
    key: [u8; 32],
    placeholder: String,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker").field("key", &"<hidden>").field("placeholder", &self.placeholder).finish()
    }
}

impl Default for Masker {
    /// A masker whose fingerprint key is random for this process (fingerprints are then only
    /// stable until restart, and across reloads; the gateway config sets a key file for a
    /// stable one).
    fn default() -> Self {
        Masker { key: crate::ids::process_key("sluice fingerprint key (no key file)"), placeholder: "[MASKED]".into() }
    }
}

impl Masker {
    pub fn new(key: [u8; 32], placeholder: impl Into<String>) -> Self {
        Masker { key, placeholder: placeholder.into() }
    }

    pub(crate) fn key_copy(&self) -> [u8; 32] {
        self.key
    }

    /// Derive the 32-byte key from key material of any length (a key file's contents).
    pub fn key_from_material(material: &[u8]) -> [u8; 32] {
        blake3::derive_key("sluice 2026 mask fingerprint key", material)
    }

    /// The fingerprint of a value: keyed blake3 over its normalised form, 16 hex digits.
    pub fn fingerprint(&self, value: &str) -> String {
        let n = normalize(value);
        let h = blake3::keyed_hash(&self.key, n.text.as_bytes());
        h.to_hex()[..16].to_owned()
    }

    /// Append the replacement for `value` (a finding of `kind`) to `out`.
    pub fn replace(&self, strategy: Strategy, kind: &str, value: &str, out: &mut String) {
        match strategy {
            Strategy::Redact => {
                out.push_str("[REDACTED:");
                out.push_str(kind);
                out.push(']');
            }
            Strategy::Placeholder => out.push_str(&self.placeholder),
            Strategy::Remove => {}
            Strategy::Fingerprint => {
                out.push('[');
                out.push_str(kind);
                out.push(':');
                out.push_str(&self.fingerprint(value));
                out.push(']');
            }
            Strategy::Partial => {
                let total = value.chars().filter(|c| c.is_alphanumeric()).count();
                let keep_from = total.saturating_sub(4);
                // Short values keep nothing: four characters of a six-character secret is most of it.
                let keep_from = if total < 8 { total } else { keep_from };
                let mut seen = 0;
                for c in value.chars() {
                    if c.is_alphanumeric() {
                        out.push(if seen >= keep_from { c } else { '*' });
                        seen += 1;
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }
}

/// What to mask and how: the deployment's masker, a strategy per rule (by rule index) and
/// which rules are masked at all (the others are only reported).
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    pub masker: &'a Masker,
    pub strategies: &'a [Strategy],
    pub mask_rule: &'a dyn Fn(u32) -> bool,
}

/// One span to mask in a string: half-open byte range, kind and strategy.
#[derive(Debug, Clone, Copy)]
pub struct Span<'k> {
    pub start: usize,
    pub end: usize,
    pub kind: &'k str,
    pub strategy: Strategy,
}

/// Apply `spans` (sorted by start) to `text`: overlapping spans are merged into the first
/// one's replacement, extended to cover both, so no byte of any span survives.
pub fn apply(masker: &Masker, text: &str, spans: &[Span<'_>], out: &mut String) {
    out.clear();
    out.reserve(text.len());
    let mut pos = 0;
    let mut i = 0;
    while i < spans.len() {
        let first = spans[i];
        let (s, mut e) = (first.start.max(pos), first.end);
        i += 1;
        while i < spans.len() && spans[i].start < e {
            e = e.max(spans[i].end);
            i += 1;
        }
        if s >= e {
            continue;
        }
        out.push_str(&text[pos..s]);
        masker.replace(first.strategy, first.kind, &text[s..e], out);
        pos = e;
    }
    out.push_str(&text[pos..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Masker {
        Masker::new([7; 32], "<hidden>")
    }

    fn one(strategy: Strategy, kind: &str, v: &str) -> String {
        let mut s = String::new();
        m().replace(strategy, kind, v, &mut s);
        s
    }

    #[test]
    fn strategies() {
        assert_eq!(one(Strategy::Redact, "email", "a@b.co"), "[REDACTED:email]");
        assert_eq!(one(Strategy::Partial, "payment_card", "4111 1111 1111 1234"), "**** **** **** 1234");
        assert_eq!(one(Strategy::Partial, "x", "abc123"), "******");
        assert_eq!(one(Strategy::Placeholder, "x", "secret"), "<hidden>");
        let a = one(Strategy::Fingerprint, "email", "bob@example.com");
        assert!(a.starts_with("[email:") && a.len() == "[email:]".len() + 16, "{a}");
        // Stable for the same key and the same value as read (full-width evasion included) …
        assert_eq!(a, one(Strategy::Fingerprint, "email", "ｂｏｂ@example.com"));
        // … different for another value or another deployment's key.
        assert_ne!(a, one(Strategy::Fingerprint, "email", "eve@example.com"));
        let mut other = String::new();
        Masker::new([8; 32], "").replace(Strategy::Fingerprint, "email", "bob@example.com", &mut other);
        assert_ne!(a, other);
    }

    #[test]
    fn overlapping_spans_merge_and_nothing_survives() {
        let t = "key=ABCDEFGH12345678 tail";
        let spans = [
            Span { start: 4, end: 12, kind: "a", strategy: Strategy::Redact },
            Span { start: 8, end: 20, kind: "b", strategy: Strategy::Redact },
        ];
        let mut out = String::new();
        apply(&m(), t, &spans, &mut out);
        assert_eq!(out, "key=[REDACTED:a] tail");
    }
}
