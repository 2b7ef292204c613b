//! The operators' side, on the admin listener:
//! - `GET /pins`: every upstream's pinned tools (digest, a changed definition not accepted,
//!   absence, first seen, who accepted what);
//! - `POST /pins/accept`, body `{"upstream": "…", "tool": "…"}`: accept a changed definition.
//!
//! Accepting is a security decision: the caller authenticates like agents do (`[identity]`)
//! and must be a member of a `pins.approvers` group. Every acceptance is logged and recorded
//! (`pin_change`, `accepted`).

use crate::approvals::admin::{json, problem, Reply};
use crate::http::Head;
use crate::runtime::Shared;
use sluice_schema::event::{Event, GatewayInfo, Kind, PinChange};
use std::borrow::Cow;

pub fn handle(head: &Head, body: &[u8], sh: &Shared) -> Reply {
    let cfg = sh.config.load();
    let Some(pins) = cfg.pins.as_ref() else {
        return problem(404, "tool pinning is off ([pins] enabled = false)");
    };
    let Some(auth) = cfg.identity.as_ref() else {
        return problem(503, "pins need [identity] in the config: who reads and accepts them is authenticated by it");
    };
    let who = match auth.check_blocking(head.header_str("authorization"), head.header_str("x-api-key")) {
        Ok(Some(id)) => id,
        Ok(None) => return problem(401, "send `Authorization: Bearer <token>` of a member of a pins.approvers group"),
        Err(e) => return problem(if matches!(e, crate::identity::AuthError::IssuerUnavailable(_)) { 503 } else { 401 }, &e.to_string()),
    };
    if !who.groups.iter().any(|g| pins.approvers.contains(g)) {
        return problem(403, &format!("{} is in none of the pins.approvers groups {:?}", who.subject, pins.approvers));
    }
    match (head.method(), head.path().trim_end_matches('/')) {
        ("GET", "/pins") => json(200, sh.pins.list()),
        ("POST", "/pins/accept") => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let (Some(upstream), Some(tool)) = (v.get("upstream").and_then(|u| u.as_str()), v.get("tool").and_then(|t| t.as_str())) else {
                return problem(400, "send {\"upstream\": \"…\", \"tool\": \"…\"} (GET /pins lists them)");
            };
            match sh.pins.accept(upstream, tool, &who.subject) {
                Ok(p) => {
                    tracing::warn!(upstream, tool, by = %who.subject, digest = %p.digest, "tool pin: changed definition accepted");
                    if let Some(rec) = &sh.recorder {
                        let mut e = Event::new(crate::ids::new_id(), crate::events::now_us(), Kind::PinChange, &*rec.instance);
                        e.upstream = Some(Cow::Borrowed(upstream));
                        e.tool = Some(Cow::Borrowed(tool));
                        e.pin = Some(PinChange { tool: Cow::Borrowed(tool), change: Cow::Borrowed("accepted"), old_digest: None, new_digest: Some(Cow::Borrowed(&p.digest)) });
                        let detail = format!("accepted by {}", who.subject);
                        e.gateway = Some(GatewayInfo { version: None, config_digest: None, detail: Some(Cow::Borrowed(&detail)) });
                        rec.process_emitter().emit(&e);
                    }
                    json(200, serde_json::json!({ "upstream": upstream, "tool": tool, "pin": p }))
                }
                Err(e @ crate::pins::AcceptError::Unknown { .. }) => problem(404, &e.to_string()),
                Err(e @ crate::pins::AcceptError::Unchanged { .. }) => problem(409, &e.to_string()),
            }
        }
        _ => problem(404, "try GET /pins or POST /pins/accept"),
    }
}
