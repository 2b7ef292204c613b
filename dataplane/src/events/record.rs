//! What the request path records: one event per JSON-RPC message (after masking), a
//! `findings` event when inspection found something in it, a `decision` event when a stage did
//! more than forward it, and session start/end. Events borrow from the request context; the
//! only copies are the serialised record.

use super::{micros, now_us, Emitter};
use crate::hooks::{Direction, Observer, RequestCtx, Verdict};
use crate::jsonrpc::{Kind as MsgKind, MessageInfo};
use simd_json::prelude::*;
use simd_json::BorrowedValue;
use sluice_schema::event::{self, Decision, Event, Finding, GatewayInfo, Kind};
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

/// The worker's recording observer at the end of its hook chain.
pub struct RecordObserver {
    emitter: Rc<Emitter>,
    payload: RefCell<Vec<u8>>,
}

impl RecordObserver {
    pub fn new(emitter: Rc<Emitter>) -> Self {
        RecordObserver { emitter, payload: RefCell::new(Vec::with_capacity(4096)) }
    }
}

/// The common fields of an event about this exchange.
pub fn base<'a>(ctx: &'a RequestCtx, instance: &'a str, kind: Kind) -> Event<'a> {
    let at = std::time::SystemTime::now();
    let mut e = Event::new(crate::ids::new_id_at(at), micros(at), kind, instance);
    e.worker = Some(ctx.worker as u32);
    e.session = ctx.gateway_session_id.as_deref().map(Cow::Borrowed);
    e.mcp_session = ctx.mcp_session_id.as_deref().filter(|_| !ctx.stateless).map(Cow::Borrowed);
    e.route = Some(Cow::Borrowed(&ctx.route));
    e.upstream = Some(Cow::Borrowed(&ctx.upstream));
    e.identity = ctx.identity.as_ref().map(|i| event::Identity {
        subject: Cow::Borrowed(&i.subject),
        groups: i.groups.iter().map(|g| Cow::Borrowed(g.as_str())).collect(),
        agent_type: i.agent_type.as_deref().map(Cow::Borrowed),
        via: Some(Cow::Borrowed(i.via)),
    });
    e.http_method = ctx.http_target.as_ref().map(|_| Cow::Borrowed(ctx.http_method.as_str()));
    e.http_path = ctx.http_target.as_deref().map(Cow::Borrowed);
    e
}

/// The answer the gateway gave in the upstream's place (unreachable, timed out, broke the
/// exchange): a `response` event (`document` on a plain HTTP route) for the call, with the
/// status and the JSON-RPC error as the agent received them. `call`: the method and tool of the
/// request it answers, when known.
pub fn gateway_answer(em: &Emitter, ctx: &RequestCtx, call: Option<(&str, Option<&str>, Option<&str>)>, id: Option<&str>, err: &crate::error::ProxyError) {
    let rec = em.recorder();
    let kind = if ctx.http_target.is_some() { Kind::Document } else { Kind::Response };
    let mut e = base(ctx, &rec.instance, kind);
    e.call = call.and_then(|c| c.2).map(Cow::Borrowed);
    e.direction = Some(event::Direction::Response);
    e.method = envelope_field(ctx, crate::detect::hook::ENVELOPE_METHOD, call.map(|c| c.0));
    e.tool = envelope_field(ctx, crate::detect::hook::ENVELOPE_TOOL, call.and_then(|c| c.1));
    e.rpc_id = envelope_field(ctx, crate::detect::hook::ENVELOPE_ID, id);
    e.status = Some(err.status());
    e.error_code = Some(err.code().value());
    e.latency_us = Some(ctx.started.elapsed().as_micros() as u64);
    let error = crate::jsonrpc::error_object(err.code(), err.title(), &err.to_string()).to_string();
    e.bytes = Some(error.len() as u64);
    em.emit_with_payload(&e, Some(error.as_bytes()));
}

/// A request the gateway refused before any stage read its content: malformed HTTP or
/// JSON-RPC, too large, a body it cannot inspect, over a limit, no route. A `decision` event
/// (stage `protocol`, action `refuse`) with the status and code the agent got, the client's
/// address, and a reason that repeats nothing the client sent. With `ctx` (the request was
/// routed and its caller identified) it carries the exchange's fields; without, only what is
/// known before that — never a session, which would be the client's unauthenticated claim.
/// `route`: the route's label when the request head was read but no context exists yet.
pub fn refusal(em: &Emitter, ctx: Option<&RequestCtx>, worker: usize, route: Option<&str>, client: std::net::IpAddr, err: &crate::error::ProxyError) {
    let rec = em.recorder();
    let mut e = match ctx {
        Some(ctx) => base(ctx, &rec.instance, Kind::Decision),
        None => {
            let mut e = Event::new(crate::ids::new_id(), now_us(), Kind::Decision, &*rec.instance);
            e.worker = Some(worker as u32);
            e.route = route.map(Cow::Borrowed);
            e
        }
    };
    let reason = err.recorded_reason();
    let client = client.to_string();
    e.direction = Some(event::Direction::Request);
    e.status = Some(err.status());
    e.error_code = Some(err.code().value());
    e.client_ip = Some(Cow::Borrowed(&client));
    e.decision = Some(Decision { action: Cow::Borrowed("refuse"), stage: Cow::Borrowed("protocol"), rule: None, reason: Some(reason) });
    em.emit(&e);
}

/// The `document` event of a plain HTTP request or response whose body is not recorded (none,
/// one the gateway does not inspect, or one it streamed): method, path and size, and for a
/// response its status and latency.
pub fn plain_event(em: &Emitter, ctx: &RequestCtx, dir: Direction, bytes: u64) {
    let rec = em.recorder();
    let mut e = base(ctx, &rec.instance, Kind::Document);
    e.direction = Some(direction(dir));
    e.bytes = Some(bytes);
    if dir == Direction::Response {
        e.latency_us = Some(ctx.started.elapsed().as_micros() as u64);
        e.status = ctx.status;
    }
    em.emit(&e);
}

fn direction(d: Direction) -> event::Direction {
    match d {
        Direction::Request => event::Direction::Request,
        Direction::Response => event::Direction::Response,
    }
}

fn message_kind(k: MsgKind) -> Kind {
    match k {
        MsgKind::Request => Kind::Request,
        MsgKind::Response | MsgKind::Error => Kind::Response,
        MsgKind::Notification => Kind::Notification,
        MsgKind::Document => Kind::Document,
    }
}

/// The part of a message that is recorded: `params`, `result` or `error`, or the document.
fn recorded_part<'v, 'a>(info: &MessageInfo, v: &'v BorrowedValue<'a>) -> Option<&'v BorrowedValue<'a>> {
    match info.kind {
        MsgKind::Document => Some(v),
        MsgKind::Request | MsgKind::Notification => v.get("params"),
        MsgKind::Response => v.get("result"),
        MsgKind::Error => v.get("error"),
    }
}

/// A message's `id` or `method` as recorded: `[REDACTED]` when the detection stage found
/// something in it.
fn envelope_field<'a>(ctx: &RequestCtx, bit: u8, v: Option<&'a str>) -> Option<Cow<'a, str>> {
    v.map(|v| Cow::Borrowed(if ctx.envelope_masked & bit != 0 { crate::detect::hook::REDACTED } else { v }))
}

impl Observer for RecordObserver {
    fn observed(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, value: &BorrowedValue<'_>, verdict: &Verdict, findings_from: usize) {
        let rec = self.emitter.recorder();
        let instance: &str = &rec.instance;
        let max = rec.cfg.max_payload_bytes;
        let masked_copy = ctx.record_payload.take();
        let stage = ctx.stage.take();
        let ctx = &*ctx;
        let mut buf = self.payload.borrow_mut();
        buf.clear();
        // The payload: never for a message content inspection refused (it may hold what was
        // blocked), the fully masked copy when findings were only logged, else the forwarded
        // (masked) value — also for a call the policy refused, as masked as if it had been
        // forwarded (audits and chain rules need to see what was attempted).
        let by_policy = ctx.decision.as_ref().is_some_and(|d| d.outcome != crate::policy::Outcome::Allow);
        let refused = matches!(verdict, Verdict::Refuse { .. }) && !by_policy;
        let text: Option<&str> = if refused {
            None
        } else if let Some(m) = masked_copy.as_deref() {
            Some(m)
        } else if let Some(part) = recorded_part(info, value) {
            // A server's opaque tokens (`nextCursor`, `requestState`) went on unscanned: the
            // record keeps a placeholder (a copy only for the answers that carry one).
            let written = if matches!(info.kind, MsgKind::Response) && dir == Direction::Response && crate::detect::json::has_opaque_tokens(part) {
                let mut copy = part.clone();
                crate::detect::json::redact_opaque_tokens(&mut copy);
                copy.write(&mut *buf)
            } else {
                part.write(&mut *buf)
            };
            if written.is_ok() {
                std::str::from_utf8(&buf).ok()
            } else {
                None
            }
        } else {
            None
        };
        let mut e = base(ctx, instance, message_kind(info.kind));
        // A request's event takes the id its answer will name; every other message names it.
        match (info.kind, info.call.as_deref()) {
            (MsgKind::Request, Some(own)) => e.id = Cow::Borrowed(own),
            (_, call) => e.call = call.map(Cow::Borrowed),
        }
        e.direction = Some(direction(dir));
        e.method = envelope_field(ctx, crate::detect::hook::ENVELOPE_METHOD, info.method.as_deref());
        e.rpc_id = envelope_field(ctx, crate::detect::hook::ENVELOPE_ID, info.id.as_deref());
        e.tool = envelope_field(ctx, crate::detect::hook::ENVELOPE_TOOL, info.tool.as_deref());
        e.error_code = info.error_code;
        // A task id is the server's string: what detection found in it is not recorded.
        let found = &ctx.findings[findings_from.min(ctx.findings.len())..];
        e.task = info.task.as_deref().map(|t| Cow::Borrowed(if found.iter().any(|f| f.path.ends_with("/taskId")) { crate::detect::hook::REDACTED } else { t }));
        e.bytes = text.map(|t| t.len() as u64);
        e.latency_us = (dir == Direction::Response).then(|| ctx.started.elapsed().as_micros() as u64);
        e.status = ctx.status;
        let payload = match text {
            Some(t) if t.len() <= max => Some(t.as_bytes()),
            Some(_) => {
                e.payload_truncated = true;
                None
            }
            None => None,
        };
        self.emitter.emit_with_payload(&e, payload);

        if !refused && info.kind == MsgKind::Response && info.method.as_deref() == Some("tools/list") {
            self.catalog(ctx, instance, value);
        }
        self.outcome(ctx, instance, dir, [&e.method, &e.rpc_id, &e.tool], info.call.as_deref(), found, verdict, stage);
    }

    /// Findings in the request URL or a streamed text body (there is no message to hang them
    /// on): a `findings` event and the detection stage's decision, without method or id.
    fn observed_outside(&self, ctx: &mut RequestCtx, dir: Direction, verdict: &Verdict, findings_from: usize) {
        let rec = self.emitter.recorder();
        let found = &ctx.findings[findings_from.min(ctx.findings.len())..];
        if found.is_empty() {
            return;
        }
        self.outcome(ctx, &rec.instance, dir, [&None, &None, &None], None, found, verdict, None);
    }
}

impl RecordObserver {
    /// The `findings` event of a message (or of the request URL) and the decisions taken on it.
    /// `stage`: the stage that changed or refused the message when neither detection nor policy did.
    #[allow(clippy::too_many_arguments)]
    fn outcome(&self, ctx: &RequestCtx, instance: &str, dir: Direction, envelope: [&Option<Cow<'_, str>>; 3], call: Option<&str>, found: &[crate::detect::hook::Recorded], verdict: &Verdict, stage: Option<&'static str>) {
        let [method, rpc_id, tool] = envelope;
        let call = call.map(Cow::Borrowed);
        if !found.is_empty() {
            let mut f = base(ctx, instance, Kind::Findings);
            f.call = call.clone();
            f.direction = Some(direction(dir));
            f.method = method.clone();
            f.rpc_id = rpc_id.clone();
            f.tool = tool.clone();
            f.findings = found
                .iter()
                .map(|r| Finding {
                    rule: Cow::Borrowed(&r.rule),
                    kind: Cow::Borrowed(&r.kind),
                    category: Cow::Borrowed(r.category.as_str()),
                    severity: Cow::Borrowed(r.severity.as_str()),
                    path: Cow::Borrowed(&r.path),
                    action: Cow::Borrowed(r.action.as_str()),
                    fingerprint: r.fingerprint.as_deref().map(Cow::Borrowed),
                    encoding: r.encoding.map(Cow::Borrowed),
                })
                .collect();
            self.emitter.emit(&f);
        }
        if let Some(pd) = &ctx.decision {
            let mut d = base(ctx, instance, Kind::Decision);
            d.call = call.clone();
            d.direction = Some(direction(dir));
            d.method = ctx.decided_input.as_deref().map(Cow::Borrowed).or_else(|| method.clone());
            d.rpc_id = rpc_id.clone();
            d.tool = tool.clone();
            let reason = match (&pd.outcome, verdict) {
                (_, Verdict::Refuse { reason, .. }) => Some(Cow::Borrowed(reason.as_str())),
                _ => None,
            };
            d.decision = Some(Decision {
                action: Cow::Borrowed(pd.outcome.name()),
                stage: Cow::Borrowed("policy"),
                rule: Some(Cow::Borrowed(pd.rule.as_deref().unwrap_or("default"))),
                reason,
            });
            self.emitter.emit(&d);
        }
        let by_policy = ctx.decision.as_ref().is_some_and(|d| d.outcome != crate::policy::Outcome::Allow);
        let decision = match verdict {
            Verdict::Pass => None,
            Verdict::Changed => Some(("mask", None)),
            Verdict::Refuse { .. } if by_policy => None,
            Verdict::Refuse { reason, .. } => Some(("refuse", Some(reason.as_str()))),
        };
        if let Some((action, reason)) = decision {
            // Pinning changes a listing only by hiding tools.
            let action = if stage == Some("pins") && action == "mask" { "hide" } else { action };
            let mut d = base(ctx, instance, Kind::Decision);
            d.call = call.clone();
            d.direction = Some(direction(dir));
            d.method = method.clone();
            d.rpc_id = rpc_id.clone();
            d.tool = tool.clone();
            // The deciding rule: the first finding that blocked (refuse) or masked.
            let rule = match stage {
                Some("pins") => Some(Cow::Borrowed("pin")),
                _ => found.iter().find(|r| if action == "refuse" { r.action.as_str() == "block" } else { r.action.as_str() == "mask" }).map(|r| Cow::Borrowed(r.rule.as_str())),
            };
            d.decision = Some(Decision { action: Cow::Borrowed(action), stage: Cow::Borrowed(stage.unwrap_or("detect")), rule, reason: reason.map(Cow::Borrowed) });
            self.emitter.emit(&d);
        }
    }

    /// A `catalog_snapshot` of a `tools/list` result: each tool's name and the blake3 of its
    /// definition in canonical JSON (keys sorted), as forwarded to the agent.
    fn catalog(&self, ctx: &RequestCtx, instance: &str, value: &BorrowedValue<'_>) {
        let Some(tools) = value.get("result").and_then(|r| r.get("tools")).and_then(|t| t.as_array()) else {
            return;
        };
        let mut e = base(ctx, instance, Kind::CatalogSnapshot);
        e.direction = Some(event::Direction::Response);
        e.method = Some(Cow::Borrowed("tools/list"));
        let mut canon = Vec::new();
        for t in tools {
            canon.clear();
            canonical(t, &mut canon);
            let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("");
            e.tools.push(event::ToolEntry { name: Cow::Owned(name.to_owned()), digest: Cow::Owned(blake3::hash(&canon).to_hex().to_string()) });
        }
        self.emitter.emit(&e);
    }
}

/// JSON with object keys sorted at every level: the same definition always hashes the same,
/// whatever order the upstream (or the parser's map) lists its keys in.
pub fn canonical(v: &BorrowedValue<'_>, out: &mut Vec<u8>) {
    match v {
        BorrowedValue::Object(m) => {
            let mut keys: Vec<&str> = m.keys().map(|k| k.as_ref()).collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                if let Some(x) = m.get(*k) {
                    canonical(x, out);
                }
            }
            out.push(b'}');
        }
        BorrowedValue::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => {
            let _ = other.write(&mut *out);
        }
    }
}

/// `session_start` / `session_end` for the exchange that opened or closed a session.
pub fn session_event(em: &Emitter, ctx: &RequestCtx, kind: Kind, gateway_session: &str, detail: Option<&str>) {
    let rec = em.recorder();
    em.emit(&session(ctx, &rec.instance, kind, gateway_session, detail));
}

/// `session_start` / `session_end` from outside the workers (the stdio transport's process).
pub fn process_session_event(rec: &std::sync::Arc<crate::events::Recorder>, ctx: &RequestCtx, kind: Kind, gateway_session: &str, detail: Option<&str>) {
    rec.process_emitter().emit(&session(ctx, &rec.instance, kind, gateway_session, detail));
}

fn session<'a>(ctx: &'a RequestCtx, instance: &'a str, kind: Kind, gateway_session: &'a str, detail: Option<&'a str>) -> Event<'a> {
    let mut e = base(ctx, instance, kind);
    e.session = Some(Cow::Borrowed(gateway_session));
    if kind == Kind::SessionStart {
        e.client_ip = Some(Cow::Owned(ctx.client.ip().to_string()));
    }
    e.gateway = detail.map(|d| GatewayInfo { version: None, config_digest: None, detail: Some(Cow::Borrowed(d)) });
    e
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_json_ignores_key_order_but_not_content() {
        let digest = |s: &str| {
            let mut b = s.as_bytes().to_vec();
            let v = simd_json::to_borrowed_value(&mut b).unwrap();
            let mut out = Vec::new();
            super::canonical(&v, &mut out);
            (String::from_utf8(out.clone()).unwrap(), blake3::hash(&out))
        };
        let (a, ha) = digest(r#"{"name":"t","inputSchema":{"type":"object","properties":{"b":1,"a":[1,{"z":0,"y":"\u00e9"}]}},"description":"d"}"#);
        let (_, hb) = digest(r#"{"description":"d","inputSchema":{"properties":{"a":[1,{"y":"é","z":0}],"b":1},"type":"object"},"name":"t"}"#);
        let (_, hc) = digest(r#"{"description":"d ","inputSchema":{"properties":{"a":[1,{"y":"é","z":0}],"b":1},"type":"object"},"name":"t"}"#);
        assert_eq!(ha, hb, "{a}");
        assert_ne!(ha, hc);
        assert!(a.starts_with(r#"{"description":"d","inputSchema":{"properties":{"a":[1,{"y":"#), "{a}");
    }
}
