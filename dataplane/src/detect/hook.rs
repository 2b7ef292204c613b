//! Detection on the request path: a [`MessageHook`] that scans every message with the
//! worker's own scanner, masks, blocks or logs per the `[detect]` actions, and records what it
//! found in the request context (for the policy stage and the session record) without ever
//! keeping the values.
//!
//! What is scanned: a request's or notification's `params` (tool arguments), a response's
//! `result` (text and structured content, resource contents, prompt messages, tool
//! metadata) and `error`, and the whole document on plain HTTP routes. Response messages of
//! one exchange (SSE events) are scanned with a carry-over, so a value split across two
//! events is found.

use super::engine::{Finding, Scanner};
use super::json::{Buffers, CleanTexts, Found, Walk};
use super::mask::Plan;
use super::rules::{Category, Severity};
use crate::config::detect::{Action, DetectCfg};
use crate::hooks::{Direction, MessageHook, RequestCtx, Verdict};
use crate::jsonrpc::{Code, Kind, MessageInfo};
use crate::metrics::WorkerMetrics;
use simd_json::prelude::*;
use simd_json::BorrowedValue;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

/// One finding as the rest of the gateway sees it: what and where, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub direction: Direction,
    pub rule: String,
    pub kind: String,
    pub category: Category,
    pub severity: Severity,
    /// JSON Pointer of the leaf, relative to the scanned part (`params`, `result`, `error`).
    pub path: String,
    pub action: Action,
    /// The JSON-RPC id of the message, as JSON text.
    pub message_id: Option<String>,
    /// Keyed blake3 fingerprint of the normalised value (16 hex digits).
    pub fingerprint: Option<String>,
    /// `base64` or `percent` when found inside an encoded span.
    pub encoding: Option<&'static str>,
}

/// The worker's detection stage; its scanner follows config reloads.
pub struct DetectHook {
    metrics: Arc<WorkerMetrics>,
    state: RefCell<Option<State>>,
    /// Per-rule strategies with the policy's mask rules applied (reused).
    strategies: RefCell<Vec<super::mask::Strategy>>,
}

struct State {
    cfg: Arc<DetectCfg>,
    scanner: Scanner,
    bufs: Buffers,
    found: Vec<Found>,
    envelope: Vec<Finding>,
    /// The request headers not known clean, as one text, `name: value` per line (see `on_headers`).
    headers: String,
    /// Header lines whose scan found nothing: agents repeat theirs on every request.
    clean_headers: Box<CleanTexts<256, 128>>,
    /// Slots of the lines in `headers`, remembered once the scan finds nothing.
    header_slots: Vec<(usize, std::ops::Range<usize>)>,
}

impl Recorded {
    pub(crate) fn new(
        direction: Direction,
        m: &super::engine::Meta,
        path: String,
        action: Action,
        message_id: Option<String>,
        fingerprint: Option<String>,
        encoding: Option<&'static str>,
    ) -> Self {
        Recorded {
            direction,
            rule: m.id.clone(),
            kind: m.kind.clone(),
            category: m.category,
            severity: m.severity,
            path,
            action,
            message_id,
            fingerprint,
            encoding,
        }
    }
}

impl DetectHook {
    pub fn new(metrics: Arc<WorkerMetrics>) -> Self {
        DetectHook { metrics, state: RefCell::new(None), strategies: RefCell::new(Vec::new()) }
    }
}

impl MessageHook for DetectHook {
    fn name(&self) -> &'static str {
        "detect"
    }

    fn on_message(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, value: &mut BorrowedValue<'_>) -> Verdict {
        let Some(cfg) = ctx.detect.clone() else {
            return Verdict::Pass;
        };
        let policy = ctx.policy.clone().filter(|_| !ctx.policy_masks.is_empty());
        if !cfg.active(dir) && policy.is_none() {
            return Verdict::Pass;
        }
        let mut slot = match self.state(&cfg) {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let st = &mut *slot;
        let meta = cfg.engine.meta();
        // The policy's mask rules for this message: extra kinds to mask, maybe another strategy.
        let forced = |r: u32| {
            let m = &meta[r as usize];
            policy.as_deref().and_then(|p| p.mask_for(&ctx.policy_masks, &m.kind, m.category))
        };
        let action = |r: u32| match cfg.action(dir, r) {
            Action::Block => Action::Block,
            _ if forced(r).is_some() => Action::Mask,
            a => a,
        };
        if let Some(v) = self.envelope(Envelope { route: &ctx.route, findings: &mut ctx.findings, masked: &mut ctx.envelope_masked }, &cfg, st, dir, info, &action) {
            return v;
        }
        let mut strategies = self.strategies.borrow_mut();
        let strategies: &[super::mask::Strategy] = if policy.is_some() {
            strategies.clear();
            strategies.extend(cfg.strategies.iter().enumerate().map(|(r, s)| forced(r as u32).flatten().unwrap_or(*s)));
            &strategies
        } else {
            &cfg.strategies
        };
        let mask_rule = |r: u32| action(r) == Action::Mask;
        let plan = Plan { masker: &cfg.masker, strategies, mask_rule: &mask_rule };
        // A client's requests carry no MCP binary content (tool arguments are the tool's own
        // JSON): everything in them is scanned.
        let skip_binary = !(dir == Direction::Request && matches!(info.kind, Kind::Request | Kind::Notification));
        let walk = Walk { engine: &cfg.engine, mask: Some(plan), skip_binary };
        st.found.clear();
        let mut changed = false;
        let parts: &[&str] = match info.kind {
            Kind::Request | Kind::Notification => &["params"],
            Kind::Response | Kind::Error => &["result", "error"],
            Kind::Document => &[],
        };
        if parts.is_empty() {
            changed |= walk.run(&mut st.scanner, &mut st.bufs, value, &mut st.found);
        } else if let BorrowedValue::Object(m) = value {
            for part in parts {
                if let Some(v) = m.get_mut(*part) {
                    if dir == Direction::Response {
                        std::mem::swap(&mut st.bufs.carry, &mut ctx.carry);
                        changed |= walk.run_carry(&mut st.scanner, &mut st.bufs, v, &mut st.found);
                        std::mem::swap(&mut st.bufs.carry, &mut ctx.carry);
                    } else {
                        changed |= walk.run(&mut st.scanner, &mut st.bufs, v, &mut st.found);
                    }
                }
            }
        }
        if st.found.is_empty() {
            return Verdict::Pass;
        }
        let dlabel = if dir == Direction::Request { "request" } else { "response" };
        // The name a call or prompt request names (`params.name`) is recorded and logged as the
        // call's tool: a finding in it cannot be masked there, so it refuses the message.
        let names = dir == Direction::Request && matches!(info.method.as_deref(), Some("tools/call" | "prompts/get"));
        let in_name = |f: &Found| names && f.path == "/name";
        if st.found.iter().any(|f| in_name(f) && action(f.finding.rule) != Action::Off) {
            ctx.envelope_masked |= ENVELOPE_TOOL;
        }
        let tool = if ctx.envelope_masked & ENVELOPE_TOOL != 0 { Some(REDACTED) } else { info.tool.as_deref() };
        let mut blocked: Vec<&str> = Vec::new();
        for f in &st.found {
            let action = match action(f.finding.rule) {
                Action::Off => continue,
                _ if in_name(f) => Action::Block,
                a => a,
            };
            let m = &meta[f.finding.rule as usize];
            self.metrics.finding(&ctx.route, dlabel, &m.kind, action.as_str());
            tracing::info!(
                target: "sluice::detect",
                route = %ctx.route, direction = dlabel, kind = %m.kind, category = ?m.category, severity = ?m.severity,
                rule = %m.id, action = action.as_str(), method = info.method.as_deref().unwrap_or(""), tool = tool.unwrap_or(""),
                id = info.id.as_deref().unwrap_or(""), path = %f.path, encoding = ?f.finding.encoding, "finding"
            );
            if action == Action::Block && !blocked.contains(&m.kind.as_str()) {
                blocked.push(&m.kind);
            }
            ctx.findings.push(Recorded::new(dir, m, f.path.clone(), action, info.id.clone(), f.fingerprint.clone(), encoding(f)));
        }
        if blocked.is_empty() && st.found.iter().any(|f| action(f.finding.rule) == Action::Log) {
            ctx.record_payload = Some(masked_copy(&cfg, st, parts, value, skip_binary));
        }
        if !blocked.is_empty() {
            blocked.sort_unstable();
            let what = if dir == Direction::Request { "the request's arguments contain" } else { "the upstream's answer contains" };
            return blocked_kinds(what, &blocked);
        }
        if changed {
            Verdict::Changed
        } else {
            Verdict::Pass
        }
    }

    /// The request URL below the route's prefix ([`super::url`]): scanned like tool
    /// arguments with the request actions; a masked part is rewritten percent-encoded, a
    /// blocked finding refuses the whole request. (The policy's mask rules, which are per
    /// message, do not apply to it.)
    fn on_target(&self, ctx: &mut RequestCtx, target: &mut String) -> Verdict {
        let Some(cfg) = ctx.detect.clone().filter(|c| c.active(Direction::Request)) else {
            return Verdict::Pass;
        };
        let parts = super::url::Target::parse(target);
        if parts.is_empty() {
            return Verdict::Pass;
        }
        let mut slot = match self.state(&cfg) {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let st = &mut *slot;
        let action = |r: u32| cfg.action(Direction::Request, r);
        let mask_rule = |r: u32| action(r) == Action::Mask;
        let walk = Walk { engine: &cfg.engine, mask: Some(Plan { masker: &cfg.masker, strategies: &cfg.strategies, mask_rule: &mask_rule }), skip_binary: false };
        let mut v = parts.value();
        st.found.clear();
        let changed = walk.run(&mut st.scanner, &mut st.bufs, &mut v, &mut st.found);
        let blocked = self.outside_findings(ctx, &cfg, Direction::Request, &st.found, false, "finding in the URL");
        // The record never shows a value that was only logged or that refused the request.
        if st.found.iter().any(|f| matches!(action(f.finding.rule), Action::Log | Action::Block)) {
            let all = |_: u32| true;
            let walk = Walk { engine: &cfg.engine, mask: Some(Plan { masker: &cfg.masker, strategies: &cfg.strategies, mask_rule: &all }), skip_binary: false };
            let mut whole = parts.value();
            let mut found = Vec::new();
            walk.run(&mut st.scanner, &mut st.bufs, &mut whole, &mut found);
            ctx.record_target = Some(parts.rebuild(&whole));
        }
        if !blocked.is_empty() {
            return blocked_kinds("the request's URL (path or query) contains", &blocked);
        }
        if !changed {
            return Verdict::Pass;
        }
        let new = parts.rebuild(&v);
        drop(v);
        drop(parts);
        *target = new;
        Verdict::Changed
    }

    /// Headers (see [`MessageHook::on_headers`]), except those `detect.skip_headers` names, as
    /// `{"headers": [{"name": "value"}, …]}`: each value scanned with its name as context, with
    /// the direction's actions. A masked value is rewritten. On a request, a blocked finding, or
    /// any finding in a header's name (which cannot be rewritten), refuses the request; on an
    /// answer, whose status the agent is to get, a blocked value is masked.
    fn on_headers(&self, ctx: &mut RequestCtx, dir: Direction, headers: &mut [(Cow<'_, str>, Cow<'_, str>)]) -> Verdict {
        let Some(cfg) = ctx.detect.clone().filter(|c| c.active(dir)) else {
            return Verdict::Pass;
        };
        let inspected = |name: &str| !cfg.skip_headers.iter().any(|s| s.eq_ignore_ascii_case(name));
        if !headers.iter().any(|(n, _)| inspected(n)) {
            return Verdict::Pass;
        }
        let mut slot = match self.state(&cfg) {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let st = &mut *slot;
        // Most requests hold nothing, and repeat the headers of the one before: each inspected
        // header as a `name: value` line (what the walk scans it as), those not remembered clean
        // scanned together once. Nothing found there: nothing in any line alone either (a
        // line's findings are among those of a text that holds it), so all are remembered.
        st.headers.clear();
        st.header_slots.clear();
        for (n, v) in headers.iter().filter(|(n, _)| inspected(n)) {
            let at = st.headers.len();
            st.headers.push_str(n);
            st.headers.push_str(": ");
            st.headers.push_str(v);
            let line = &st.headers[at..];
            match st.clean_headers.slot(&cfg.engine, line) {
                Some(slot) if st.clean_headers.contains(slot, line) => st.headers.truncate(at),
                slot => {
                    if let Some(slot) = slot {
                        st.header_slots.push((slot, at..st.headers.len()));
                    }
                    st.headers.push('\n');
                }
            }
        }
        if st.headers.is_empty() {
            return Verdict::Pass;
        }
        st.envelope.clear();
        cfg.engine.scan(&mut st.scanner, &st.headers, &mut st.envelope);
        if st.envelope.is_empty() {
            for (slot, r) in &st.header_slots {
                st.clean_headers.insert(*slot, &st.headers[r.clone()]);
            }
            return Verdict::Pass;
        }
        let answer = dir == Direction::Response;
        let mask_rule = |r: u32| matches!(cfg.action(dir, r), Action::Mask) || (answer && cfg.action(dir, r) == Action::Block);
        let walk = Walk { engine: &cfg.engine, mask: Some(Plan { masker: &cfg.masker, strategies: &cfg.strategies, mask_rule: &mask_rule }), skip_binary: false };
        let mut v = super::url::pairs_value(headers.iter().filter(|(n, _)| inspected(n)).map(|(n, v)| (n.as_ref(), v.as_ref())), "headers");
        st.found.clear();
        let changed = walk.run(&mut st.scanner, &mut st.bufs, &mut v, &mut st.found);
        let what = if answer { "finding in an answer header" } else { "finding in a request header" };
        let blocked = self.outside_findings(ctx, &cfg, dir, &st.found, !answer, what);
        if !blocked.is_empty() && !answer {
            return blocked_kinds("the request's headers contain", &blocked);
        }
        if !changed {
            return Verdict::Pass;
        }
        // Each header as the walk left it: (name, value), a name masked where it held a finding.
        let now: Vec<Option<(String, Option<String>)>> = v
            .get("headers")
            .and_then(|h| h.as_array())
            .map(|a| a.iter().map(|o| o.as_object().and_then(|o| o.iter().next()).map(|(k, s)| (k.to_string(), s.as_str().map(str::to_owned)))).collect())
            .unwrap_or_default();
        drop(v);
        for ((name, value), new) in headers.iter_mut().filter(|(n, _)| inspected(n)).zip(now) {
            let Some((new_name, new_value)) = new else { continue };
            if new_name != *name {
                *name = Cow::Owned(new_name);
            }
            if let Some(new) = new_value.filter(|n| n != value) {
                *value = Cow::Owned(new);
            }
        }
        Verdict::Changed
    }
}

impl DetectHook {
    /// Count, log and keep for the record what inspection found outside any message (URL,
    /// headers), with the direction's actions; the kinds that block, sorted. With
    /// `keys_block`, a finding in a name (`Found::in_key`) blocks whatever its action.
    fn outside_findings<'c>(&self, ctx: &mut RequestCtx, cfg: &'c DetectCfg, dir: Direction, found: &[Found], keys_block: bool, what: &'static str) -> Vec<&'c str> {
        let meta = cfg.engine.meta();
        let dlabel = if dir == Direction::Request { "request" } else { "response" };
        let mut blocked: Vec<&str> = Vec::new();
        for f in found {
            let action = match cfg.action(dir, f.finding.rule) {
                Action::Off => continue,
                _ if keys_block && f.in_key => Action::Block,
                // An answer's head goes out with its status: what would block is masked.
                Action::Block if dir == Direction::Response => Action::Mask,
                a => a,
            };
            let m = &meta[f.finding.rule as usize];
            self.metrics.finding(&ctx.route, dlabel, &m.kind, action.as_str());
            tracing::info!(
                target: "sluice::detect",
                route = %ctx.route, direction = dlabel, kind = %m.kind, category = ?m.category, severity = ?m.severity,
                rule = %m.id, action = action.as_str(), http_method = %ctx.http_method, path = %f.path, encoding = ?f.finding.encoding, "{what}"
            );
            if action == Action::Block && !blocked.contains(&m.kind.as_str()) {
                blocked.push(&m.kind);
            }
            ctx.findings.push(Recorded::new(dir, m, f.path.clone(), action, None, f.fingerprint.clone(), encoding(f)));
        }
        blocked.sort_unstable();
        blocked
    }

    /// This core's scanner and buffers for `cfg` (new ones after a reload); `Err`: the
    /// refusal to answer when no scratch can be had (fail closed).
    fn state(&self, cfg: &Arc<DetectCfg>) -> Result<std::cell::RefMut<'_, State>, Verdict> {
        let mut slot = self.state.borrow_mut();
        if !slot.as_ref().is_some_and(|s| Arc::ptr_eq(&s.cfg, cfg)) {
            match cfg.engine.scanner() {
                Ok(scanner) => *slot = Some(State { cfg: cfg.clone(), scanner, bufs: Buffers::default(), found: Vec::new(), envelope: Vec::new(), headers: String::new(), clean_headers: Box::default(), header_slots: Vec::new() }),
                Err(e) => {
                    // Fail closed: without a scanner nothing can be inspected.
                    tracing::error!(error = %e, "detect: cannot allocate Hyperscan scratch");
                    return Err(refuse("the gateway cannot inspect this message right now; retry later".into()));
                }
            }
        }
        // Set just above; were it not, refuse rather than pass unscanned.
        std::cell::RefMut::filter_map(slot, Option::as_mut).map_err(|_| refuse("the gateway cannot inspect this message right now; retry later".into()))
    }
}

impl DetectHook {
    /// The message's JSON-RPC `id` and `method` pass to the other side as they are (an id
    /// cannot be masked: it pairs the answer with the call), so they are scanned like any text,
    /// and a finding in either refuses the message — otherwise an agent could carry a key out
    /// in its request ids. Short ids (counters: under six characters) are not worth a scan.
    /// The session record and the log then show the field as `[REDACTED]`.
    fn envelope(
        &self,
        ctx: Envelope<'_>,
        cfg: &DetectCfg,
        st: &mut State,
        dir: Direction,
        info: &MessageInfo,
        action: &dyn Fn(u32) -> Action,
    ) -> Option<Verdict> {
        // An answer's id is the agent's own (checked on its way out; a refused answer's error
        // carries it back); a request's id, either way, is chosen by the sender.
        let answer = dir == Direction::Response && matches!(info.kind, Kind::Response | Kind::Error);
        let id = info.id.as_deref().filter(|id| id.len() >= 6 && !answer);
        let method = info.method.as_deref().filter(|m| !crate::jsonrpc::is_mcp_method(m));
        if id.is_none() && method.is_none() {
            return None;
        }
        let meta = cfg.engine.meta();
        let mut kinds: Vec<&str> = Vec::new();
        let mut fields: Vec<&str> = Vec::new();
        for (field, text, bit) in [("id", id, ENVELOPE_ID), ("method", method, ENVELOPE_METHOD)] {
            let Some(text) = text else { continue };
            st.envelope.clear();
            cfg.engine.scan(&mut st.scanner, text, &mut st.envelope);
            let mut hit = false;
            for f in &st.envelope {
                let a = action(f.rule);
                if a == Action::Off {
                    continue;
                }
                let m = &meta[f.rule as usize];
                hit = true;
                let dlabel = if dir == Direction::Request { "request" } else { "response" };
                self.metrics.finding(ctx.route, dlabel, &m.kind, Action::Block.as_str());
                tracing::info!(
                    target: "sluice::detect",
                    route = %ctx.route, direction = dlabel, kind = %m.kind, category = ?m.category, severity = ?m.severity,
                    rule = %m.id, action = Action::Block.as_str(), path = field, "finding in the message's {field}"
                );
                let fingerprint = Some(cfg.masker.fingerprint(&text[f.start..f.end]));
                ctx.findings.push(Recorded::new(dir, m, format!("/{field}"), Action::Block, Some(REDACTED.into()), fingerprint, None));
                if !kinds.contains(&m.kind.as_str()) {
                    kinds.push(&m.kind);
                }
            }
            if hit {
                *ctx.masked |= bit;
                fields.push(field);
            }
        }
        if kinds.is_empty() {
            return None;
        }
        kinds.sort_unstable();
        Some(refuse(format!(
            "the message's {} contains {}; the gateway cannot mask it (ids and method names pass unchanged), so it blocks the message. Use an opaque id (a counter or a random string) and retry.",
            fields.join(" and "),
            kinds.join(", ")
        )))
    }
}

/// The parts of the request context the envelope check writes (the action closure holds
/// another part of it).
struct Envelope<'a> {
    route: &'a Arc<str>,
    findings: &'a mut Vec<Recorded>,
    masked: &'a mut u8,
}

/// What the record and the log show for an `id` or `method` that held a finding.
pub const REDACTED: &str = "[REDACTED]";
/// Bits of [`RequestCtx::envelope_masked`].
pub const ENVELOPE_ID: u8 = 1;
pub const ENVELOPE_METHOD: u8 = 2;
/// The tool (or prompt) name of a `tools/call` (`prompts/get`).
pub const ENVELOPE_TOOL: u8 = 4;

/// The recorded part of a message (`params`, `result`/`error`, or the document) with every
/// finding masked: what the session record holds when logged findings are forwarded as they
/// are (nothing sensitive is recorded unmasked).
fn masked_copy(cfg: &DetectCfg, st: &mut State, parts: &[&str], value: &BorrowedValue<'_>, skip_binary: bool) -> String {
    let all = |_: u32| true;
    let plan = Plan { masker: &cfg.masker, strategies: &cfg.strategies, mask_rule: &all };
    let walk = Walk { engine: &cfg.engine, mask: Some(plan), skip_binary };
    let mut found = Vec::new();
    let part = match (parts.is_empty(), value) {
        (true, v) => Some(v.clone()),
        (false, BorrowedValue::Object(m)) => parts.iter().find_map(|p| m.get(*p)).cloned(),
        _ => None,
    };
    match part {
        Some(mut v) => {
            walk.run(&mut st.scanner, &mut st.bufs, &mut v, &mut found);
            if skip_binary {
                // A server's result: what the walk left unscanned at its top stays out.
                super::json::redact_opaque_tokens(&mut v);
            }
            simd_json::to_string(&v).unwrap_or_else(|_| "null".into())
        }
        None => "null".into(),
    }
}

/// How a finding's value was encoded, for the record.
fn encoding(f: &Found) -> Option<&'static str> {
    f.finding.encoding.map(super::decode::Encoding::name)
}

/// The refusal of a blocked finding: where, and the kinds (sorted), never the values.
fn blocked_kinds(what: &str, kinds: &[&str]) -> Verdict {
    refuse(format!(
        "{what} {}; the gateway's content policy blocks this. Remove the value (or ask an operator to review the finding in the gateway log) and retry.",
        kinds.join(", ")
    ))
}

fn refuse(reason: String) -> Verdict {
    Verdict::Refuse { code: Code::Refused, message: "blocked by content inspection".into(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook_and_ctx() -> (DetectHook, RequestCtx) {
        let text = "[[listener]]\naddress = \"127.0.0.1:9\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\npath = \"/mcp\"\nupstream = \"u\"\n\
                    [detect.request]\npii = \"mask\"\nsecret = \"block\"\n";
        let f: crate::config::schema::File = toml::from_str(text).unwrap();
        let cfg = crate::config::from_schema(&f).unwrap();
        (DetectHook::new(Arc::default()), RequestCtx::offline("r", cfg.detect.clone(), None, None))
    }

    /// Header lines remembered clean never hide a finding: 3,000 requests repeating two clean
    /// headers beside one that changes every time (far more distinct lines than the table has
    /// slots), every third holding an address, one in fifty a key — each address masked and
    /// each key refused every time, and nothing else touched.
    #[test]
    fn remembered_clean_header_lines_never_hide_a_finding() {
        let (hook, mut ctx) = hook_and_ctx();
        for i in 0..3000 {
            let note = match i {
                _ if i % 50 == 0 => format!("key AKIAIOSFODNN7EXAMPL{}", (b'A' + (i / 50 % 26) as u8) as char),
                _ if i % 3 == 0 => format!("user{i}@example.com"),
                _ => format!("ticket {i}"),
            };
            let mut headers = [(Cow::Borrowed("accept"), Cow::Borrowed("application/json, text/event-stream")), (Cow::Borrowed("x-note"), Cow::Owned(note.clone())), (Cow::Borrowed("user-agent"), Cow::Borrowed("agent/1.0"))];
            let v = hook.on_headers(&mut ctx, Direction::Request, &mut headers);
            match i {
                _ if i % 50 == 0 => assert!(matches!(&v, Verdict::Refuse { reason, .. } if reason.contains("aws_access_key_id")), "{i}: {v:?}"),
                _ if i % 3 == 0 => {
                    assert_eq!(v, Verdict::Changed, "{i}");
                    assert!(!headers[1].1.contains("@example.com"), "{i}: {}", headers[1].1);
                }
                _ => assert_eq!(v, Verdict::Pass, "{i}"),
            }
            assert_eq!((headers[0].1.as_ref(), headers[2].1.as_ref()), ("application/json, text/event-stream", "agent/1.0"));
            if i % 3 != 0 {
                assert_eq!(headers[1].1, note);
            }
        }
    }

    /// Names in `detect.skip_headers` are not scanned; a finding in a header's name refuses
    /// even under `mask` (a name cannot be rewritten).
    #[test]
    fn skipped_headers_pass_and_a_finding_in_a_name_refuses() {
        let (hook, mut ctx) = hook_and_ctx();
        let mut headers = [(Cow::Borrowed("X-Real-IP"), Cow::Borrowed("8.8.8.8")), (Cow::Borrowed("x-origin"), Cow::Borrowed("8.8.4.4"))];
        assert_eq!(hook.on_headers(&mut ctx, Direction::Request, &mut headers), Verdict::Changed);
        assert_eq!(headers[0].1, "8.8.8.8");
        assert_ne!(headers[1].1, "8.8.4.4");
        let mut headers = [(Cow::Borrowed("+12025550143"), Cow::Borrowed("1"))];
        assert!(matches!(hook.on_headers(&mut ctx, Direction::Request, &mut headers), Verdict::Refuse { reason, .. } if reason.contains("phone_number")));
    }

    /// An answer's headers: a blocked kind is masked (the head goes out with the upstream's
    /// status), a logged one left as sent, both recorded in the answer's direction.
    #[test]
    fn an_answers_headers_are_masked_where_a_request_would_be_refused() {
        let text = "[[listener]]\naddress = \"127.0.0.1:9\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\npath = \"/mcp\"\nupstream = \"u\"\n\
                    [detect.response]\npii = \"log\"\nsecret = \"block\"\n";
        let f: crate::config::schema::File = toml::from_str(text).unwrap();
        let cfg = crate::config::from_schema(&f).unwrap();
        let (hook, mut ctx) = (DetectHook::new(Arc::default()), RequestCtx::offline("r", cfg.detect.clone(), None, None));
        let mut headers = [
            (Cow::Borrowed("x-debug-token"), Cow::Borrowed("AKIAQYLPMN5HFIQR7XQB")),
            (Cow::Borrowed("x-contact"), Cow::Borrowed("bob@example.com")),
            (Cow::Borrowed("x-request-id"), Cow::Borrowed("r-17")),
            (Cow::Borrowed("x-key-AKIAQYLPMN5HFIQR7XQC"), Cow::Borrowed("1")),
        ];
        assert_eq!(hook.on_headers(&mut ctx, Direction::Response, &mut headers), Verdict::Changed);
        assert!(!headers[0].1.contains("AKIA") && headers[0].1.contains("aws_access_key_id"), "{}", headers[0].1);
        assert_eq!((headers[1].1.as_ref(), headers[2].1.as_ref()), ("bob@example.com", "r-17"));
        // A finding in a name: the name comes back masked (the exchange then drops the header).
        assert!(!headers[3].0.contains("AKIA") && headers[3].0.contains("aws_access_key_id"), "{}", headers[3].0);
        assert_eq!(headers.iter().take(3).map(|(n, _)| n.as_ref()).collect::<Vec<_>>(), ["x-debug-token", "x-contact", "x-request-id"]);
        let got: Vec<_> = ctx.findings.iter().map(|f| (f.direction, f.kind.as_str(), f.action)).collect();
        assert_eq!(got, [(Direction::Response, "aws_access_key_id", Action::Mask), (Direction::Response, "email", Action::Log), (Direction::Response, "aws_access_key_id", Action::Mask)]);
    }
}
