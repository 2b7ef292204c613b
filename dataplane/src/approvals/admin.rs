//! The reviewers' side, on the admin listener:
//! - `GET /approvals` (`?all=1` for decided ones too): the calls this reviewer may decide;
//! - `POST /approvals/{id}/approve`, `POST /approvals/{id}/deny`, body `{"reason": "…"}`;
//! - `GET /approvals/ui`: a page listing pending calls with approve/deny buttons (it calls the
//!   API above with the reviewer's token).
//!
//! Reviewers authenticate like agents do (`Authorization: Bearer <token>` checked by
//! `[identity]`); only members of a call's approver groups may decide it, and never the
//! caller who made it. Every decision is recorded (`approval_decided`).

use super::DecideError;
use crate::http::Head;
use crate::runtime::Shared;
use sluice_schema::event::Kind;

const PAGE: &str = include_str!("page.html");

/// An admin answer: status, content type, body.
pub(crate) type Reply = (u16, &'static str, Vec<u8>);

pub(crate) fn json(status: u16, v: serde_json::Value) -> Reply {
    (status, "application/json", v.to_string().into_bytes())
}

pub(crate) fn problem(status: u16, msg: &str) -> Reply {
    json(status, serde_json::json!({ "error": msg }))
}

pub fn handle(head: &Head, body: &[u8], sh: &Shared) -> Reply {
    let target = head.target();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if head.method() == "GET" && path == "/approvals/ui" {
        return (200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec());
    }
    let cfg = sh.config.load();
    let Some(auth) = cfg.identity.as_ref() else {
        return problem(503, "approvals need [identity] in the config: reviewers are authenticated by it");
    };
    let reviewer = match auth.check_blocking(head.header_str("authorization"), head.header_str("x-api-key")) {
        Ok(Some(id)) => id,
        Ok(None) => return problem(401, "send `Authorization: Bearer <token>` of a member of the approver group"),
        Err(e) => return problem(if matches!(e, crate::identity::AuthError::IssuerUnavailable(_)) { 503 } else { 401 }, &e.to_string()),
    };
    match (head.method(), path.trim_end_matches('/').split('/').collect::<Vec<_>>().as_slice()) {
        ("GET", ["", "approvals"]) => {
            let all = query.split('&').any(|kv| kv == "all=1" || kv == "all=true");
            let list = sh.approvals.list(&reviewer.groups, all);
            json(200, serde_json::json!({ "reviewer": reviewer.subject, "approvals": list }))
        }
        ("POST", ["", "approvals", id, verb @ ("approve" | "deny")]) => {
            let reason = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned)).unwrap_or_default();
            if *verb == "deny" && reason.trim().is_empty() {
                return problem(400, "a denial needs a reason the agent can act on: {\"reason\": \"…\"}");
            }
            match sh.approvals.decide(id, &reviewer.subject, &reviewer.groups, *verb == "approve", reason.trim()) {
                Ok(e) => {
                    tracing::info!(approval = %e.id, decision = e.state.name(), by = %reviewer.subject, tool = %e.tool, subject = %e.subject, "approval decided");
                    if let Some(rec) = &sh.recorder {
                        rec.process_emitter().emit(&super::event(&e, Kind::ApprovalDecided, &rec.instance));
                    }
                    sh.notifier.tell(super::notify::Step::Decided, &e, &cfg.approvals, &cfg.instance);
                    json(200, serde_json::to_value(&e).unwrap_or_default())
                }
                Err(e @ DecideError::Unknown(_)) => problem(404, &e.to_string()),
                Err(e @ DecideError::Closed(..)) => problem(409, &e.to_string()),
                Err(e @ (DecideError::NotApprover(_) | DecideError::OwnCall)) => problem(403, &e.to_string()),
            }
        }
        _ => problem(404, "try GET /approvals, POST /approvals/{id}/approve or /deny, GET /approvals/ui"),
    }
}
