//! What the request path records: one event per JSON-RPC message (after masking), a
//! `findings` event when inspection found something in it, a `decision` event when a stage did
//! more than forward it, and session start/end. Events borrow from the request context; the
//! only copies are the serialised record.

use super::{now_us, Emitter};
use crate::hooks::{Direction, Observer, RequestCtx, Verdict};
use crate::jsonrpc::{Kind as MsgKind, MessageInfo};
use sluice_schema::event::{self, Decision, Event, Finding, GatewayInfo, Kind};
use simd_json::prelude::*;
use simd_json::BorrowedValue;
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
    let mut e = Event::new(crate::ids::new_id(), now_us(), kind, instance);
    e.worker = Some(ctx.worker as u32);
    e.session = ctx.gateway_session_id.as_deref().map(Cow::Borrowed);
    e.mcp_session = ctx.mcp_session_id.as_deref().map(Cow::Borrowed);
    e.route = Some(Cow::Borrowed(&ctx.route));
    e.upstream = Some(Cow::Borrowed(&ctx.upstream));
    e
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

impl Observer for RecordObserver {
    fn observed(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, value: &BorrowedValue<'_>, verdict: &Verdict, findings_from: usize) {
        let rec = self.emitter.recorder();
        let instance: &str = &rec.instance;
        let max = rec.cfg.max_payload_bytes;
        let masked_copy = ctx.record_payload.take();
        let ctx = &*ctx;
        let mut buf = self.payload.borrow_mut();
        buf.clear();
        // The payload: never for a refused message (it may hold what was blocked), the fully
        // masked copy when findings were only logged, else the forwarded (masked) value.
        let refused = matches!(verdict, Verdict::Refuse { .. });
        let text: Option<&str> = if refused {
            None
        } else if let Some(m) = masked_copy.as_deref() {
            Some(m)
        } else if let Some(part) = recorded_part(info, value) {
            if part.write(&mut *buf).is_ok() {
                std::str::from_utf8(&buf).ok()
            } else {
                None
            }
        } else {
            None
        };
        let mut e = base(ctx, instance, message_kind(info.kind));
        e.direction = Some(direction(dir));
        e.method = info.method.as_deref().map(Cow::Borrowed);
        e.rpc_id = info.id.as_deref().map(Cow::Borrowed);
        e.tool = info.tool.as_deref().map(Cow::Borrowed);
        e.error_code = info.error_code;
        e.bytes = text.map(|t| t.len() as u64);
        e.latency_us = (dir == Direction::Response).then(|| ctx.started.elapsed().as_micros() as u64);
        let payload = match text {
            Some(t) if t.len() <= max => Some(t.as_bytes()),
            Some(_) => {
                e.payload_truncated = true;
                None
            }
            None => None,
        };
        self.emitter.emit_with_payload(&e, payload);

        let found = &ctx.findings[findings_from.min(ctx.findings.len())..];
        if !found.is_empty() {
            let mut f = base(ctx, instance, Kind::Findings);
            f.direction = Some(direction(dir));
            f.method = e.method.clone();
            f.rpc_id = e.rpc_id.clone();
            f.tool = e.tool.clone();
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
        let decision = match verdict {
            Verdict::Pass => None,
            Verdict::Changed => Some(("mask", None)),
            Verdict::Refuse { reason, .. } => Some(("refuse", Some(reason.as_str()))),
        };
        if let Some((action, reason)) = decision {
            let mut d = base(ctx, instance, Kind::Decision);
            d.direction = Some(direction(dir));
            d.method = e.method.clone();
            d.rpc_id = e.rpc_id.clone();
            d.tool = e.tool.clone();
            // The deciding rule: the first finding that blocked (refuse) or masked.
            let rule = found.iter().find(|r| if action == "refuse" { r.action.as_str() == "block" } else { r.action.as_str() == "mask" }).map(|r| Cow::Borrowed(r.rule.as_str()));
            d.decision = Some(Decision { action: Cow::Borrowed(action), stage: Cow::Borrowed("detect"), rule, reason: reason.map(Cow::Borrowed) });
            self.emitter.emit(&d);
        }
    }
}

/// `session_start` / `session_end` for the exchange that opened or closed a session.
pub fn session_event(em: &Emitter, ctx: &RequestCtx, kind: Kind, gateway_session: &str, detail: Option<&str>) {
    let rec = em.recorder();
    let mut e = base(ctx, &rec.instance, kind);
    e.session = Some(Cow::Borrowed(gateway_session));
    e.gateway = detail.map(|d| GatewayInfo { version: None, config_digest: None, detail: Some(Cow::Borrowed(d)) });
    em.emit(&e);
}
