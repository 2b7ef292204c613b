//! Scanning and masking JSON documents leaf by leaf (the parser has already unescaped
//! `\u0040` into `@`). Each string leaf is scanned; under an object key it is scanned as
//! `key: value`, so assignment rules (`"password": "…"`) see the name, and only findings in
//! the value are masked. Integer leaves are scanned as their digits (a card number stored as a
//! number is still a card number); a masked integer becomes a string. The output is always
//! valid JSON because only leaves and keys change. The base64 payloads of MCP image/audio
//! blocks and resource blobs are binary and skipped — only where MCP puts them (a `data`
//! beside `"type": "image"|"audio"`, a `blob` beside a `uri`), only when they are base64, and
//! not at all when the walk is told to scan everything (tool arguments: a field named `blob`
//! there is the tool's own, and would otherwise carry anything past the scan).
//!
//! Object keys are text too (a map keyed by e-mail address, a secret used as a name): a key
//! over a string or integer leaf is scanned with it (`key: value`), any other key on its own,
//! and what is found in a key is reported with `in_key` set. A key with
//! something to mask is renamed to its masked form, keeping its place in the object; when
//! that name is already taken in the object (two addresses both redacted to
//! `[REDACTED:email]`), ` #2`, ` #3`, … is appended, so no member is lost. JSON Pointers
//! (`Found::path`, which the gateway logs and records) never hold a key's finding in clear:
//! with a mask plan, a key with any finding appears in paths masked by its rules' strategies,
//! whether or not the document itself is masked. Keys scanned on their own and found clean are
//! remembered per core (in a fixed table, compared byte for byte), so the names repeated in
//! every message are scanned once; so are short leaves found clean, as scanned (`key: value`:
//! the `"type": "text"` and status strings every answer repeats). A `Buffers` serves one
//! engine at a time (the gateway keeps them together, with the engine alive, and makes new ones
//! on reload).

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
    /// Skip MCP binary payloads (image/audio `data`, resource `blob`); `false` scans them.
    pub skip_binary: bool,
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
    clean: CleanKeys,
    clean_leaves: Box<CleanLeaves>,
    /// Where the current member's segment starts in `path`.
    seg: usize,
    /// The current member's new name, when something found in its key is masked.
    rename: Option<String>,
}

/// Object keys whose scan found nothing.
type CleanKeys = CleanTexts<1024, 64>;

/// Short leaves (`key: value` as scanned) whose scan found nothing: 96 KiB a core.
type CleanLeaves = CleanTexts<1024, 96>;

/// Texts (up to `MAX` bytes, at most 255) whose scan found nothing, in a direct-mapped table
/// of `SLOTS` fixed slots: no allocation per text, a lookup instead of a scan for the texts
/// every message repeats (object keys, request header lines). A slot holds the text's bytes
/// and is compared exactly, so a text with a finding can never pass for a clean one (the
/// slot's hash only places it; a collision costs a scan).
#[derive(Default)]
pub struct CleanTexts<const SLOTS: usize, const MAX: usize> {
    /// `SLOTS` × `MAX` bytes, allocated on first use.
    bytes: Vec<u8>,
    /// Each slot's text length; 0 is an empty slot (the empty text is never remembered).
    lens: Vec<u8>,
    /// The engine the table was filled by (a reload brings another).
    engine: usize,
}

impl<const SLOTS: usize, const MAX: usize> CleanTexts<SLOTS, MAX> {
    pub const MAX_LEN: usize = MAX;

    /// The text's slot when it can be remembered.
    pub fn slot(&mut self, engine: &Engine, key: &str) -> Option<usize> {
        let k = key.as_bytes();
        if k.is_empty() || k.len() > MAX {
            return None;
        }
        let id = engine as *const Engine as usize;
        if self.engine != id || self.lens.is_empty() {
            self.bytes.clear();
            self.bytes.resize(SLOTS * MAX, 0);
            self.lens.clear();
            self.lens.resize(SLOTS, 0);
            self.engine = id;
        }
        // FxHash over 8-byte words: placement only, so speed matters, not strength.
        let mut h = k.len() as u64;
        for w in k.chunks(8) {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        Some((h >> 32) as usize % SLOTS)
    }

    pub fn contains(&self, slot: usize, key: &str) -> bool {
        let at = slot * MAX;
        usize::from(self.lens[slot]) == key.len() && &self.bytes[at..at + key.len()] == key.as_bytes()
    }

    pub fn insert(&mut self, slot: usize, key: &str) {
        let at = slot * MAX;
        self.bytes[at..at + key.len()].copy_from_slice(key.as_bytes());
        self.lens[slot] = key.len() as u8;
    }
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
                let binary = if self.skip_binary { binary_field(m) } else { None };
                let top = self.skip_binary && b.path.is_empty();
                let mut renames: Vec<(String, String)> = Vec::new();
                for (k, x) in m.iter_mut() {
                    if binary == Some(k.as_ref()) || (top && opaque_token(k, x)) {
                        continue;
                    }
                    let len = b.path.len();
                    b.seg = len;
                    // A string or integer leaf is scanned as `key: value`, which covers the key;
                    // any other key is scanned alone, before the walk below it.
                    let with_value = scanned_with_key(x);
                    let named = !with_value && self.key(sc, b, k, out);
                    if !named {
                        push_segment(&mut b.path, k);
                    }
                    // Taken before the walk below, whose members use the same slot.
                    let mut rename = b.rename.take();
                    changed |= self.value(sc, b, x, Some(k), out);
                    b.path.truncate(len);
                    if with_value {
                        rename = b.rename.take();
                    }
                    if let Some(new) = rename {
                        renames.push((k.to_string(), new));
                    }
                }
                if !renames.is_empty() {
                    rename_keys(m, renames);
                    changed = true;
                }
                changed
            }
            BorrowedValue::Static(_) => number_leaf(v) && self.number(sc, b, v, key, out),
        }
    }

    /// Scan an object key on its own; when something is in it, report it and name the member
    /// ([`Walk::name_key`]) and return `true`.
    fn key(&self, sc: &mut Scanner, b: &mut Buffers, key: &str, out: &mut Vec<Found>) -> bool {
        let slot = b.clean.slot(self.engine, key);
        if slot.is_some_and(|i| b.clean.contains(i, key)) {
            return false;
        }
        b.findings.clear();
        self.engine.scan(sc, key, &mut b.findings);
        if b.findings.is_empty() {
            if let Some(i) = slot {
                b.clean.insert(i, key);
            }
            return false;
        }
        self.name_key(b, key, out);
        true
    }

    /// Report the findings in `b.findings` that lie in `key` (offsets into it; those running
    /// on into the `: ` after it are cut at its end), and name the member: the path segment at
    /// `b.seg` becomes the key masked by every finding's strategy, and `b.rename` the key
    /// masked by the findings that are masked, if any.
    fn name_key(&self, b: &mut Buffers, key: &str, out: &mut Vec<Found>) {
        let meta = self.engine.meta();
        let in_key = |f: &&Finding| f.start < key.len() && f.end <= key.len() + 2;
        let (path, rename) = match self.mask {
            Some(plan) => {
                let span = |f: &Finding| {
                    Span { start: f.start, end: f.end.min(key.len()), kind: &meta[f.rule as usize].kind, strategy: plan.strategies[f.rule as usize] }
                };
                let all: Vec<Span<'_>> = b.findings.iter().filter(in_key).map(span).collect();
                let mut path = String::new();
                apply(plan.masker, key, &all, &mut path);
                let masked: Vec<Span<'_>> = b.findings.iter().filter(in_key).filter(|f| (plan.mask_rule)(f.rule)).map(span).collect();
                let rename = (!masked.is_empty()).then(|| {
                    let mut new = String::new();
                    apply(plan.masker, key, &masked, &mut new);
                    new
                });
                (path, rename)
            }
            None => (key.to_owned(), None),
        };
        b.path.truncate(b.seg);
        push_segment(&mut b.path, &path);
        for f in b.findings.iter().filter(in_key) {
            let end = f.end.min(key.len());
            let fingerprint = self.mask.map(|p| p.masker.fingerprint(&key[f.start..end]));
            out.push(Found { path: b.path.clone(), finding: Finding { end, ..*f }, in_key: true, fingerprint });
        }
        b.rename = rename;
    }

    fn number(&self, sc: &mut Scanner, b: &mut Buffers, v: &mut BorrowedValue<'_>, key: Option<&str>, out: &mut Vec<Found>) -> bool {
        let digits = match v {
            BorrowedValue::Static(StaticNode::I64(n)) => n.to_string(),
            BorrowedValue::Static(StaticNode::U64(n)) => n.to_string(),
            // A whole float under 1e19 (see `number_leaf`): its integer digits.
            BorrowedValue::Static(StaticNode::F64(f)) if *f < 0.0 => format!("-{}", (-*f) as u64),
            BorrowedValue::Static(StaticNode::F64(f)) => (*f as u64).to_string(),
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
        // A leaf found clean before is not scanned again (what `across` found still counts).
        let slot = b.clean_leaves.slot(self.engine, hay);
        if !slot.is_some_and(|i| b.clean_leaves.contains(i, hay)) {
            self.engine.scan(sc, hay, &mut b.findings);
            if let Some(i) = slot.filter(|_| b.findings.is_empty()) {
                b.clean_leaves.insert(i, hay);
            }
        }
        if b.findings.is_empty() && b.spans.is_empty() {
            return None;
        }
        if let Some(k) = key.filter(|k| b.findings.iter().any(|f| f.start < k.len())) {
            self.name_key(b, k, out);
        }
        for f in &b.findings {
            if f.end <= prefix {
                // In the key: reported above.
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

/// Integers from here on are scanned as their digits (smaller ones are counts and ids).
const NUMBER_LEAF: u64 = 100_000;

/// Whether [`Walk::value`] scans `v` as a leaf, joined to its key: strings and
/// [`number_leaf`]s.
fn scanned_with_key(v: &BorrowedValue<'_>) -> bool {
    matches!(v, BorrowedValue::String(_)) || number_leaf(v)
}

/// A number scanned as its digits: an integer of [`NUMBER_LEAF`] and more, or a float that
/// holds one (`4111111111111111.0`, `4.111111111111111e15`: JSON does not tell them apart, a
/// model reads the same number). Whole floats from 1e19 on hold no exact digits to find.
fn number_leaf(v: &BorrowedValue<'_>) -> bool {
    match v {
        BorrowedValue::Static(StaticNode::I64(n)) => n.unsigned_abs() >= NUMBER_LEAF,
        BorrowedValue::Static(StaticNode::U64(n)) => *n >= NUMBER_LEAF,
        BorrowedValue::Static(StaticNode::F64(f)) => (NUMBER_LEAF as f64..1e19).contains(&f.abs()) && f.fract() == 0.0,
        _ => false,
    }
}

/// Append `/key` to a JSON Pointer, escaped (`~` → `~0`, `/` → `~1`).
fn push_segment(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// Rename members of `m` (old name → masked name), keeping their places. A new name already
/// taken in the object gets ` #2`, ` #3`, … so that no member replaces another.
fn rename_keys(m: &mut simd_json::borrowed::Object<'_>, renames: Vec<(String, String)>) {
    use std::collections::{HashMap, HashSet};
    let old = std::mem::take(m);
    let from: HashSet<&str> = renames.iter().map(|(o, _)| o.as_str()).collect();
    let mut taken: HashSet<String> = old.keys().filter(|k| !from.contains(k.as_ref())).map(|k| k.to_string()).collect();
    // The next suffix to try per masked name: many keys redacted alike stay linear.
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut named: HashMap<String, String> = HashMap::with_capacity(renames.len());
    for (o, new) in renames {
        let mut name = new.clone();
        let n = next.entry(new.clone()).or_insert(1);
        while taken.contains(&name) {
            *n += 1;
            name = format!("{new} #{n}");
        }
        taken.insert(name.clone());
        named.insert(o, name);
    }
    for (k, v) in old {
        let k = match named.remove(k.as_ref()) {
            Some(name) => Cow::Owned(name),
            None => k,
        };
        m.insert(k, v);
    }
}

/// MCP envelope fields (`type`, `mimeType`, …) are short enumerations, not text that continues
/// from one message to the next; the carry-over skips them.
fn structural(key: Option<&str>) -> bool {
    matches!(key, Some("type" | "mimeType" | "level" | "role" | "uri" | "logger" | "progressToken" | "name"))
}

/// The base64 payload of an MCP binary content block (`data` of an image or audio block,
/// `blob` of resource contents, which also have a `uri`): binary, not text a model reads, and
/// masking inside it would corrupt it — it is neither scanned nor masked. A payload that is
/// not base64 (spaces, punctuation: text) is scanned like any other leaf.
fn binary_field(m: &simd_json::borrowed::Object<'_>) -> Option<&'static str> {
    let field = match m.get("type") {
        Some(BorrowedValue::String(t)) if t == "image" || t == "audio" => "data",
        _ if m.contains_key("uri") => "blob",
        _ => return None,
    };
    match m.get(field) {
        Some(BorrowedValue::String(s)) if is_base64(s) => Some(field),
        _ => None,
    }
}

/// A protocol token at the top of a server's result that the client hands back without reading
/// (`nextCursor`; `requestState`, MCP 2026-07-28: sealed by the server, often a long random
/// base64url string): opaque, never shown to a model, and a mask inside it breaks the
/// protocol — the next page or the second round of the call fails (a random `requestState`
/// looked like an encoded blob about once in a hundred). Neither scanned nor masked there; the
/// same member deeper in a result (a tool's own data) and what a client sends are.
fn opaque_token(k: &str, v: &BorrowedValue<'_>) -> bool {
    matches!(k, "requestState" | "nextCursor") && matches!(v, BorrowedValue::String(_))
}

/// What the record keeps of an opaque token ([`opaque_token`]).
pub const OPAQUE: &str = "[OPAQUE]";

/// Does a server's result hold opaque tokens at its top?
pub fn has_opaque_tokens(result: &BorrowedValue<'_>) -> bool {
    matches!(result, BorrowedValue::Object(m) if m.iter().any(|(k, v)| opaque_token(k, v)))
}

/// The record's copy of a server's result: its opaque tokens, forwarded unscanned (a mask
/// would break them), are replaced by [`OPAQUE`], so nothing uninspected reaches the record.
pub fn redact_opaque_tokens(result: &mut BorrowedValue<'_>) {
    if let BorrowedValue::Object(m) = result {
        for (k, v) in m.iter_mut() {
            if opaque_token(k, v) {
                *v = BorrowedValue::String(Cow::Borrowed(OPAQUE));
            }
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4), as MCP binary payloads are.
fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    let body = b.strip_suffix(b"==").or_else(|| b.strip_suffix(b"=")).unwrap_or(b);
    b.len() % 4 == 0 && body.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
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
    use crate::detect::mask::{Masker, Strategy};
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
        let w = Walk { engine: e, mask: Some(Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true }), skip_binary: true };
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

    /// A float holding a card number is a card number (JSON does not tell `4111111111111111.0`
    /// from the integer); a float with a fraction or beyond exact digits is not scanned.
    #[test]
    fn whole_floats_are_scanned_as_their_digits() {
        let (out, found) = mask_doc(r#"{"a":4111111111111111.0,"b":4.111111111111111e15,"c":-5500005555555559.0,"d":[5500005555555559E0],"e":1234.5,"f":1e300,"g":100000.25}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["a"], "************1111", "{out}");
        assert_eq!(v["b"], "************1111", "{out}");
        assert_eq!(v["c"], "-************5559", "{out}");
        assert_eq!(v["d"][0], "************5559", "{out}");
        assert_eq!((v["e"].as_f64(), v["f"].as_f64(), v["g"].as_f64()), (Some(1234.5), Some(1e300), Some(100000.25)), "{out}");
        let paths: Vec<_> = found.iter().map(|f| (f.path.as_str(), f.finding.start, f.finding.end)).collect();
        assert_eq!(paths, [("/a", 0, 16), ("/b", 0, 16), ("/c", 1, 17), ("/d/0", 0, 16)], "{found:?}");
    }

    /// Walk `doc` with one strategy for every rule and `mask_rule` choosing what is masked.
    fn walk_doc(doc: &str, strategy: Strategy, mask_rule: &dyn Fn(u32) -> bool, sc: &mut Scanner, bufs: &mut Buffers) -> (String, Vec<Found>) {
        walk_doc_with(doc, strategy, mask_rule, true, sc, bufs)
    }

    fn walk_doc_with(
        doc: &str,
        strategy: Strategy,
        mask_rule: &dyn Fn(u32) -> bool,
        skip_binary: bool,
        sc: &mut Scanner,
        bufs: &mut Buffers,
    ) -> (String, Vec<Found>) {
        let e = engine();
        let masker = Masker::new([1; 32], "[MASKED]");
        let strategies = vec![strategy; e.meta().len()];
        let w = Walk { engine: e, mask: Some(Plan { masker: &masker, strategies: &strategies, mask_rule }), skip_binary };
        let mut bytes = doc.as_bytes().to_vec();
        let mut v = simd_json::to_borrowed_value(&mut bytes).unwrap();
        let mut found = Vec::new();
        w.run(sc, bufs, &mut v, &mut found);
        (simd_json::to_string(&v).unwrap(), found)
    }

    /// Keys are text: an address keying an object, a secret keying `null`, a card number keying
    /// a float — none of them was scanned before (only the key of a string or integer leaf was,
    /// as context), and a found key was never masked, so a gateway in mask mode forwarded them.
    #[test]
    fn keys_are_scanned_whatever_their_value_and_masked_in_place() {
        let doc = r#"{"users":{"first":1,"bob@example.com":{"role":"admin","since":2019},"AKIAIOSFODNN7EXAMPLE":null,"4111 1111 1111 1111":3.5,"last":[true]}}"#;
        let (out, found) = mask_doc(doc);
        // Same places, masked names (e-mail fingerprinted, secret redacted, card partial),
        // values untouched. (Compared as text: `serde_json::Value` would sort the keys.)
        let fp = &found.iter().find(|f| f.in_key && f.finding.end == 15).unwrap().fingerprint;
        let want = format!(
            r#"{{"users":{{"first":1,"[email:{}]":{{"role":"admin","since":2019}},"[REDACTED:aws_access_key_id]":null,"**** **** **** 1111":3.5,"last":[true]}}}}"#,
            fp.as_deref().unwrap()
        );
        assert_eq!(out, want);
        let in_keys: Vec<(&str, &str)> =
            found.iter().filter(|f| f.in_key).map(|f| (engine().meta()[f.finding.rule as usize].kind.as_str(), f.path.as_str())).collect();
        assert_eq!(in_keys.len(), 3, "{found:?}");
        assert!(in_keys.contains(&("aws_access_key_id", "/users/[REDACTED:aws_access_key_id]")), "{in_keys:?}");
        assert!(in_keys.contains(&("payment_card", "/users/**** **** **** 1111")), "{in_keys:?}");
        // Fingerprinted like a value is, so the analyzer can follow it.
        assert!(found.iter().filter(|f| f.in_key).all(|f| f.fingerprint.as_ref().is_some_and(|h| h.len() == 16)));
    }

    /// Paths name a key's finding masked even where the document is not masked (the finding
    /// is only logged) — paths go to the gateway log and the session record — and the
    /// findings below such a key carry the masked name too.
    #[test]
    fn paths_never_hold_a_key_finding_in_clear() {
        // An object under a found key (its key scanned alone), and a string leaf under one
        // (scanned as `key: value`).
        let doc = r#"{"bob@example.com":{"note":"key AKIAIOSFODNN7EXAMPLE","n":"x"},"eve@example.com":"AKIAIOSFODNN7EXAMPLE"}"#;
        let mut sc = engine().scanner().unwrap();
        let (out, found) = walk_doc(doc, Strategy::Redact, &|_| false, &mut sc, &mut Buffers::default());
        assert_eq!(out, doc, "nothing masked when no rule masks");
        let kinds = |found: &[Found]| -> Vec<(String, String, bool)> {
            found.iter().map(|f| (f.path.clone(), engine().meta()[f.finding.rule as usize].kind.clone(), f.in_key)).collect()
        };
        let e = |p: &str, k: &str, in_key: bool| (p.to_string(), k.to_string(), in_key);
        let want = vec![
            e("/[REDACTED:email]", "email", true),
            e("/[REDACTED:email]/note", "aws_access_key_id", false),
            e("/[REDACTED:email]", "email", true),
            e("/[REDACTED:email]", "aws_access_key_id", false),
        ];
        assert_eq!(kinds(&found), want);
        // Masked, the same paths, and the keys renamed (the second one taken: ` #2`).
        let (out, found) = walk_doc(doc, Strategy::Redact, &|_| true, &mut sc, &mut Buffers::default());
        assert_eq!(
            out,
            r#"{"[REDACTED:email]":{"note":"key [REDACTED:aws_access_key_id]","n":"x"},"[REDACTED:email] #2":"[REDACTED:aws_access_key_id]"}"#
        );
        assert_eq!(kinds(&found), want);
    }

    /// Keys redacted alike stay distinct members: the second and third get ` #2`, ` #3`,
    /// skipping a name the object already has; nothing is merged or lost.
    #[test]
    fn keys_masked_alike_stay_distinct() {
        let doc = r#"{"a@example.com":1,"[REDACTED:email] #2":"kept","b@example.com":2,"[REDACTED:email]":0,"c@example.com":3}"#;
        let mut sc = engine().scanner().unwrap();
        let (out, _) = walk_doc(doc, Strategy::Redact, &|_| true, &mut sc, &mut Buffers::default());
        assert_eq!(out, r#"{"[REDACTED:email] #3":1,"[REDACTED:email] #2":"kept","[REDACTED:email] #4":2,"[REDACTED:email]":0,"[REDACTED:email] #5":3}"#);
    }

    /// Two keys placed in one slot: the table holds the last one remembered and answers for
    /// it alone (a placement hash match is never taken for the key).
    #[test]
    fn a_clean_key_table_slot_answers_only_for_its_own_key() {
        let e = engine();
        let mut t = CleanKeys::default();
        let first = "field_0";
        let slot = t.slot(e, first).unwrap();
        let other = (1..).map(|i| format!("user{i}@example.com")).find(|k| t.slot(e, k) == Some(slot)).unwrap();
        t.insert(slot, first);
        assert!(t.contains(slot, first) && !t.contains(slot, &other));
        t.insert(slot, &other);
        assert!(t.contains(slot, &other) && !t.contains(slot, first));
        assert_eq!(t.slot(e, &"k".repeat(CleanKeys::MAX_LEN + 1)), None);
        assert_eq!(t.slot(e, ""), None);
    }

    /// Binary payloads are skipped only where MCP puts them and only when they are base64; a
    /// walk told to scan everything (tool arguments) skips nothing. Before, any `blob` member
    /// and any image's `data` went unscanned, whatever they held and wherever they were.
    #[test]
    fn binary_payloads_are_skipped_only_where_mcp_puts_them() {
        let mut sc = engine().scanner().unwrap();
        let key = "AKIAIOSFODNN7EXAMPLE"; // also valid base64 (20 characters of its alphabet)
        let cases = [
            (format!(r#"{{"type":"image","mimeType":"image/png","data":"{key}"}}"#), true),
            (format!(r#"{{"uri":"file:///a.bin","blob":"{key}"}}"#), true),
            // Not base64: text, scanned.
            (format!(r#"{{"type":"audio","data":"the key is {key}"}}"#), false),
            // Not where MCP puts binary: a `blob` without a `uri`, a `data` of a text block.
            (format!(r#"{{"blob":"{key}"}}"#), false),
            (format!(r#"{{"type":"text","data":"{key}"}}"#), false),
        ];
        for (doc, skipped) in &cases {
            let (out, found) = walk_doc_with(doc, Strategy::Redact, &|_| true, true, &mut sc, &mut Buffers::default());
            assert_eq!(found.is_empty(), *skipped, "{doc}");
            assert_eq!(out.contains(key), *skipped, "{out}");
            let (out, found) = walk_doc_with(doc, Strategy::Redact, &|_| true, false, &mut sc, &mut Buffers::default());
            assert!(!found.is_empty() && !out.contains(key), "scanning everything: {out}");
        }
        assert!(is_base64("aGVsbG8=") && is_base64("aGk=") && is_base64("") && !is_base64("aGk") && !is_base64("a=Gk") && !is_base64("aG k"));
    }

    /// `requestState` and `nextCursor` at the top of a server's result are the protocol's
    /// opaque tokens: masking one broke the next round of the call. Deeper (a tool's own data)
    /// or sent by a client, the same names are scanned.
    #[test]
    fn opaque_protocol_tokens_in_results_are_left_whole() {
        let mut sc = engine().scanner().unwrap();
        let blob = "QUJD".repeat(60);
        for top in ["requestState", "nextCursor"] {
            let doc = format!(r#"{{"resultType":"input_required","{top}":"v1.{blob}","structuredContent":{{"{top}":"{blob}"}}}}"#);
            let (out, found) = walk_doc_with(&doc, Strategy::Redact, &|_| true, true, &mut sc, &mut Buffers::default());
            assert_eq!(found.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), [format!("/structuredContent/{top}").as_str()], "{out}");
            assert!(out.contains(&format!(r#""{top}":"v1.{blob}""#)), "{out}");
            let (_, found) = walk_doc_with(&doc, Strategy::Redact, &|_| true, false, &mut sc, &mut Buffers::default());
            assert_eq!(found.len(), 2, "what a client sends is scanned whole");
            // The record's copy keeps neither: the top one unscanned becomes a placeholder,
            // the deeper one was scanned (and is masked there when found).
            use simd_json::prelude::{ValueAsScalar as _, ValueObjectAccess as _};
            let mut bytes = doc.clone().into_bytes();
            let mut v = simd_json::to_borrowed_value(&mut bytes).unwrap();
            assert!(has_opaque_tokens(&v));
            redact_opaque_tokens(&mut v);
            assert_eq!(v.get(top).and_then(|x| x.as_str()), Some(OPAQUE));
            assert_eq!(v.get("structuredContent").and_then(|c| c.get(top)).and_then(|x| x.as_str()), Some(blob.as_str()), "only the top one");
        }
        let mut bytes = br#"{"nextCursor":null,"requestState":{"x":1}}"#.to_vec();
        assert!(!has_opaque_tokens(&simd_json::to_borrowed_value(&mut bytes).unwrap()), "only string tokens are opaque");
    }

    /// The table of clean keys never hides a key with a finding: 5,000 distinct keys (far more
    /// than its slots, so slots are overwritten), every tenth an address, walked twice through
    /// the same buffers — every address found both times, and only they.
    #[test]
    fn remembered_clean_keys_never_hide_a_finding() {
        let mut doc = String::from("{");
        for i in 0..5000 {
            let key = if i % 10 == 0 { format!("user{i}@example.com") } else { format!("field_{i}") };
            doc.push_str(&format!("{}\"{key}\":{{\"v\":{i}}}", if i > 0 { "," } else { "" }));
        }
        doc.push('}');
        walked_twice(&doc, Strategy::Fingerprint, |pass, out, found| {
            assert_eq!(found.iter().filter(|f| f.in_key).count(), 500, "pass {pass}");
            assert!(!out.contains("@example.com"), "pass {pass}");
            assert!(out.contains("\"field_4999\""));
        });
    }

    /// `doc` walked twice through the same scanner and buffers, each walk checked.
    fn walked_twice(doc: &str, strategy: Strategy, check: impl Fn(usize, &str, &[Found])) {
        let mut sc = engine().scanner().unwrap();
        let mut bufs = Buffers::default();
        for pass in 0..2 {
            let (out, found) = walk_doc(doc, strategy, &|_| true, &mut sc, &mut bufs);
            check(pass, &out, &found);
        }
    }

    /// Remembered clean leaves never hide a finding: 5,000 leaves, most of them a few values
    /// repeated (remembered after their first scan), every seventh an address and every
    /// eleventh a card number keyed like the clean ones, walked twice through the same buffers.
    #[test]
    fn remembered_clean_leaves_never_hide_a_finding() {
        let mut doc = String::from("[");
        let (mut mails, mut cards, mut ok3) = (0, 0, 0);
        for i in 0..5000 {
            let leaf = if i % 7 == 0 {
                mails += 1;
                format!(r#"{{"status":"user{}@example.com"}}"#, i % 50)
            } else if i % 11 == 0 {
                cards += 1;
                r#"{"status":"4111 1111 1111 1111"}"#.to_string()
            } else {
                ok3 += usize::from(i % 5 == 3);
                format!(r#"{{"status":"ok {}","type":"text"}}"#, i % 5)
            };
            doc.push_str(&format!("{}{leaf}", if i > 0 { "," } else { "" }));
        }
        doc.push(']');
        walked_twice(&doc, Strategy::Redact, |pass, out, found| {
            let kind = |k: &str| found.iter().filter(|f| engine().meta()[f.finding.rule as usize].kind == k).count();
            assert_eq!((kind("email"), kind("payment_card")), (mails, cards), "pass {pass}");
            assert!(!out.contains("@example.com") && !out.contains("4111 1111"), "pass {pass}");
            assert_eq!(out.matches("\"ok 3\"").count(), ok3, "clean leaves pass unchanged");
        });
    }

    /// A leaf remembered as clean still completes a value split before it: the second half of
    /// an access key id, scanned clean on its own, is masked where the previous message ended
    /// with the first half.
    #[test]
    fn a_remembered_clean_leaf_still_completes_a_split_value() {
        let e = engine();
        let masker = Masker::new([1; 32], "[MASKED]");
        let strategies = vec![Strategy::Redact; e.meta().len()];
        let all = |_: u32| true;
        let w = Walk { engine: e, mask: Some(Plan { masker: &masker, strategies: &strategies, mask_rule: &all }), skip_binary: true };
        let mut sc = e.scanner().unwrap();
        let mut bufs = Buffers::default();
        let mut walk = |doc: &str, bufs: &mut Buffers| {
            let mut bytes = doc.as_bytes().to_vec();
            let mut v = simd_json::to_borrowed_value(&mut bytes).unwrap();
            let mut found = Vec::new();
            w.run_carry(&mut sc, bufs, &mut v, &mut found);
            (simd_json::to_string(&v).unwrap(), found)
        };
        let second = r#"{"text":"ODNN7EXAMPLE is the key"}"#;
        let (alone, found) = walk(second, &mut bufs);
        assert!(found.is_empty() && alone.contains("ODNN7EXAMPLE"), "clean alone: {alone}");
        bufs.carry.clear();
        let _ = walk(r#"{"text":"the key is AKIAIOSF"}"#, &mut bufs);
        let (out, found) = walk(second, &mut bufs);
        assert!(!found.is_empty(), "the joined key is found");
        assert!(!out.contains("ODNN7EXAMPLE"), "{out}");
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
            // The text as a leaf and as a key (of an object, which was never scanned before).
            let mut doc = serde_json::json!({"content": [{"type": "text", "text": text}], "keyed": {text.clone(): {"n": 1}}});
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
            let keyed = leaf["keyed"].as_object().unwrap();
            prop_assert_eq!(keyed.len(), 1);
            let (masked_key, inner) = keyed.iter().next().unwrap();
            prop_assert_eq!(inner, &serde_json::json!({"n": 1}));
            if nest == 0 {
                // A key reads as the same text in a leaf does: the same findings, in the same places.
                let spans = |keyed: bool| {
                    let mut v: Vec<(usize, usize, u32)> = found.iter()
                        .filter(|f| if keyed { f.in_key && f.path.starts_with("/keyed/") } else { f.path == "/content/0/text" })
                        .map(|f| (f.finding.start, f.finding.end, f.finding.rule)).collect();
                    v.sort_unstable();
                    v
                };
                prop_assert_eq!(spans(true), spans(false));
            }
            let (_, after) = mask_doc(&serde_json::json!({"text": masked_key}).to_string());
            for f in after {
                let value = &masked_key[f.finding.start..f.finding.end];
                prop_assert!(!before.contains(&value), "{value:?} survived masking in a key: {masked_key}");
            }
        }
    }
}
