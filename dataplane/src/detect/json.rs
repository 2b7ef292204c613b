//! Scanning and masking JSON documents leaf by leaf (the parser has already unescaped
//! `\u0040` into `@`). Each string leaf is scanned; under an object key it is scanned as
//! `key: value`, so assignment rules (`"password": "…"`) see the name, and only findings in
//! the value are masked. Integer leaves are scanned as their digits (a card number stored as a
//! number is still a card number); a masked integer becomes a string. Object keys are never
//! rewritten (that would change the document's shape); a finding inside a key is reported with
//! `in_key` set. The output is always valid JSON because only leaves change. The base64
//! payloads of MCP image/audio blocks and resource blobs are binary and skipped.

use super::engine::{Engine, Finding, Scanner};
use super::mask::{apply, Plan, Span};
use simd_json::{BorrowedValue, StaticNode};
use std::borrow::Cow;
use std::fmt::Write as _;

/// A finding in a document: JSON Pointer of the leaf and offsets into the leaf's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: String,
    pub finding: Finding,
    pub in_key: bool,
    /// Keyed fingerprint of the value (when walking with a mask plan), so the session record
    /// can follow a value across calls without holding it.
    pub fingerprint: Option<String>,
}

/// What to do with findings while walking.
pub struct Walk<'a> {
    pub engine: &'a Engine,
    /// `None` scans and reports without masking.
    pub mask: Option<Plan<'a>>,
}

/// How much text carries over from one message to the next in a stream (SSE events, batch
/// elements): enough for any token-shaped secret or identifier split across two messages.
pub const CARRY: usize = 256;

/// Reused buffers for walking documents on one core.
#[derive(Default)]
pub struct Buffers {
    /// With carry on: the tail of the last string leaf of the previous message; the first
    /// leaf of the next message is also scanned joined to it.
    pub carry: String,
    carry_on: bool,
    first_leaf: bool,
    hay: String,
    path: String,
    findings: Vec<Finding>,
    spans: Vec<(usize, usize, u32)>,
    masked: String,
}

impl Walk<'_> {
    /// Scan (and mask) every leaf of `v`; returns whether anything was changed.
    pub fn run(&self, sc: &mut Scanner, b: &mut Buffers, v: &mut BorrowedValue<'_>, out: &mut Vec<Found>) -> bool {
        b.path.clear();
        b.carry_on = false;
        self.value(sc, b, v, None, out)
    }

    /// Like [`Walk::run`] for one message of a stream: a value split between the previous
    /// message's last string leaf and this message's first one is found too (the part in
    /// this message is masked; the earlier part has already been delivered).
    pub fn run_carry(&self, sc: &mut Scanner, b: &mut Buffers, v: &mut BorrowedValue<'_>, out: &mut Vec<Found>) -> bool {
        b.path.clear();
        b.carry_on = true;
        b.first_leaf = true;
        self.value(sc, b, v, None, out)
    }

    fn value(&self, sc: &mut Scanner, b: &mut Buffers, v: &mut BorrowedValue<'_>, key: Option<&str>, out: &mut Vec<Found>) -> bool {
        match v {
            BorrowedValue::String(s) => {
                if let Some(new) = self.leaf(sc, b, s, key, out) {
                    *s = Cow::Owned(new);
                    return true;
                }
                false
            }
            BorrowedValue::Static(StaticNode::I64(n)) if n.unsigned_abs() >= 100_000 => self.number(sc, b, v, key, out),
            BorrowedValue::Static(StaticNode::U64(n)) if *n >= 100_000 => self.number(sc, b, v, key, out),
            BorrowedValue::Array(a) => {
                let mut changed = false;
                for (i, x) in a.iter_mut().enumerate() {
                    let len = b.path.len();
                    let _ = write!(b.path, "/{i}");
                    changed |= self.value(sc, b, x, None, out);
                    b.path.truncate(len);
                }
                changed
            }
            BorrowedValue::Object(m) => {
                let mut changed = false;
                let binary = binary_field(m);
                for (k, x) in m.iter_mut() {
                    if binary == Some(k.as_ref()) {
                        continue;
                    }
                    let len = b.path.len();
                    b.path.push('/');
                    for c in k.chars() {
                        match c {
                            '~' => b.path.push_str("~0"),
                            '/' => b.path.push_str("~1"),
                            c => b.path.push(c),
                        }
                    }
                    changed |= self.value(sc, b, x, Some(k), out);
                    b.path.truncate(len);
                }
                changed
            }
            _ => false,
        }
    }

    fn number(&self, sc: &mut Scanner, b: &mut Buffers, v: &mut BorrowedValue<'_>, key: Option<&str>, out: &mut Vec<Found>) -> bool {
        let digits = match v {
            BorrowedValue::Static(StaticNode::I64(n)) => n.to_string(),
            BorrowedValue::Static(StaticNode::U64(n)) => n.to_string(),
            _ => return false,
        };
        match self.leaf(sc, b, &digits, key, out) {
            Some(new) => {
                *v = BorrowedValue::String(Cow::Owned(new));
                true
            }
            None => false,
        }
    }

    /// Scan one leaf; the masked text when something in it was masked.
    fn leaf(&self, sc: &mut Scanner, b: &mut Buffers, text: &str, key: Option<&str>, out: &mut Vec<Found>) -> Option<String> {
        b.spans.clear();
        if b.carry_on && !structural(key) {
            if b.first_leaf && !b.carry.is_empty() {
                self.across(sc, b, text, out);
            }
            b.first_leaf = false;
            let mut from = text.len().saturating_sub(CARRY);
            while !text.is_char_boundary(from) {
                from += 1;
            }
            b.carry.clear();
            b.carry.push_str(&text[from..]);
        }
        let prefix = match key {
            Some(k) => {
                b.hay.clear();
                b.hay.push_str(k);
                b.hay.push_str(": ");
                b.hay.push_str(text);
                k.len() + 2
            }
            None => 0,
        };
        let hay: &str = if prefix > 0 { &b.hay } else { text };
        b.findings.clear();
        self.engine.scan(sc, hay, &mut b.findings);
        if b.findings.is_empty() && b.spans.is_empty() {
            return None;
        }
        for f in &b.findings {
            if f.end <= prefix {
                if f.start < prefix.saturating_sub(2) {
                    out.push(Found { path: b.path.clone(), finding: *f, in_key: true, fingerprint: None });
                }
                continue;
            }
            let (s, e) = (f.start.max(prefix) - prefix, f.end - prefix);
            let fingerprint = self.mask.map(|p| p.masker.fingerprint(&text[s..e]));
            out.push(Found { path: b.path.clone(), finding: Finding { start: s, end: e, ..*f }, in_key: false, fingerprint });
            if self.mask.is_some_and(|p| (p.mask_rule)(f.rule)) {
                b.spans.push((s, e, f.rule));
            }
        }
        let plan = self.mask?;
        if b.spans.is_empty() {
            return None;
        }
        b.spans.sort_unstable();
        let meta = self.engine.meta();
        let spans: Vec<Span<'_>> =
            b.spans.iter().map(|&(s, e, r)| Span { start: s, end: e, kind: &meta[r as usize].kind, strategy: plan.strategies[r as usize] }).collect();
        apply(plan.masker, text, &spans, &mut b.masked);
        Some(std::mem::take(&mut b.masked))
    }
}

/// MCP envelope fields (`type`, `mimeType`, …) are short enumerations, not text that continues
/// from one message to the next; the carry-over skips them.
fn structural(key: Option<&str>) -> bool {
    matches!(key, Some("type" | "mimeType" | "level" | "role" | "uri" | "logger" | "progressToken" | "name"))
}

/// The base64 payload of an MCP binary content block (`data` of an image or audio block,
/// `blob` of resource contents): binary, not text a model reads, and masking inside it would
/// corrupt it — it is neither scanned nor masked.
fn binary_field(m: &simd_json::borrowed::Object<'_>) -> Option<&'static str> {
    if m.contains_key("blob") {
        return Some("blob");
    }
    match m.get("type") {
        Some(BorrowedValue::String(t)) if t == "image" || t == "audio" => Some("data"),
        _ => None,
    }
}

impl Walk<'_> {
    /// Scan the previous message's tail joined to the head of this leaf; report (and mark for
    /// masking) what crosses the join.
    fn across(&self, sc: &mut Scanner, b: &mut Buffers, text: &str, out: &mut Vec<Found>) {
        let mut head = text.len().min(CARRY);
        while !text.is_char_boundary(head) {
            head -= 1;
        }
        let join = b.carry.len();
        b.hay.clear();
        b.hay.push_str(&b.carry);
        b.hay.push_str(&text[..head]);
        b.findings.clear();
        self.engine.scan(sc, &b.hay, &mut b.findings);
        for f in &b.findings {
            if f.start < join && f.end > join {
                let end = f.end - join;
                let fingerprint = self.mask.map(|p| p.masker.fingerprint(&b.hay[f.start..f.end]));
                out.push(Found { path: b.path.clone(), finding: Finding { start: 0, end, ..*f }, in_key: false, fingerprint });
                if self.mask.is_some_and(|p| (p.mask_rule)(f.rule)) {
                    b.spans.push((0, end, f.rule));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::mask::Masker;
    use crate::detect::rules::{default_dir, load_dir};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn engine() -> &'static Engine {
        static E: OnceLock<Engine> = OnceLock::new();
        E.get_or_init(|| Engine::compile(load_dir(&default_dir()).unwrap()).unwrap())
    }

    fn mask_doc(doc: &str) -> (String, Vec<Found>) {
        let e = engine();
        let masker = Masker::new([1; 32], "[MASKED]");
        let strategies = e.default_strategies();
        let w = Walk { engine: e, mask: Some(Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true }) };
        let mut sc = e.scanner().unwrap();
        let mut bytes = doc.as_bytes().to_vec();
        let mut v = simd_json::to_borrowed_value(&mut bytes).unwrap();
        let mut found = Vec::new();
        w.run(&mut sc, &mut Buffers::default(), &mut v, &mut found);
        (simd_json::to_string(&v).unwrap(), found)
    }

    /// One scanner walks every leaf: a leaf after one that normalisation changed (full-width
    /// letters) is masked at its own offsets. (The second leaf's key was masked over one byte
    /// and leaked while the first leaf's byte map was still in the scanner.)
    #[test]
    fn a_leaf_after_a_normalised_one_is_masked_whole() {
        let (out, found) = mask_doc(r#"{"a":"mail \uff42\uff4f\uff42@example.com today","b":"plain key AKIAIOSFODNN7EXAMPLE here"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["a"].as_str().unwrap().starts_with("mail [email:"), "{out}");
        assert_eq!(v["b"], "plain key [REDACTED:aws_access_key_id] here", "{out}");
        let b = found.iter().find(|f| f.path == "/b").unwrap();
        assert_eq!((b.finding.start, b.finding.end), (10, 30));
    }

    #[test]
    fn leaves_are_masked_by_path_and_names_give_context() {
        let (out, found) = mask_doc(r#"{"user":{"mail":"bob\u0040example.com","password":"Zr8#kP2!qL9vX4m","card":4111111111111111},"n":[1,2]}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        // E-mail addresses are fingerprinted by default (followable, not readable).
        assert!(v["user"]["mail"].as_str().unwrap().starts_with("[email:"), "{out}");
        assert_eq!(v["user"]["password"], "[REDACTED:generic_secret]");
        // Cards keep their last four by default; the number became a string.
        assert_eq!(v["user"]["card"], "************1111");
        assert_eq!(v["n"], serde_json::json!([1, 2]));
        let paths: Vec<_> = found.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&"/user/mail") && paths.contains(&"/user/password") && paths.contains(&"/user/card"), "{paths:?}");
    }

    proptest! {
        /// Masked output is valid JSON and no span the engine detects in the input survives:
        /// rescanning the masked document never finds a value that was found in the input.
        #[test]
        fn masked_json_is_valid_and_clean(
            parts in proptest::collection::vec(prop_oneof![
                Just("bob@example.com".to_string()), Just("AKIAIOSFODNN7EXAMPLE".to_string()),
                Just("4111 1111 1111 1111".to_string()), Just("ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789".to_string()),
                Just("ｂｏｂ@example.com".to_string()), Just("\u{200B}".to_string()), Just("\"".to_string()),
                "[a-z \\\\/]{0,12}",
            ], 1..8),
            nest in 0usize..3,
        ) {
            let text: String = parts.concat();
            let mut doc = serde_json::json!({"content": [{"type": "text", "text": text}]});
            for _ in 0..nest { doc = serde_json::json!({"inner": doc, "list": [doc.clone()]}); }
            let (out, found) = mask_doc(&doc.to_string());
            let again: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
            let mut leaf = &again;
            for _ in 0..nest { leaf = &leaf["inner"]; }
            let masked = leaf["content"][0]["text"].as_str().unwrap().to_owned();
            let before: Vec<&str> = found.iter().filter(|f| f.path.ends_with("/content/0/text")).map(|f| &text[f.finding.start..f.finding.end]).collect();
            let (_, after) = mask_doc(&serde_json::json!({"text": masked}).to_string());
            for f in after {
                let value = &masked[f.finding.start..f.finding.end];
                prop_assert!(!before.contains(&value), "{value:?} survived masking: {masked}");
            }
        }
    }
}
