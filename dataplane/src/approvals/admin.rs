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
    // A request another gateway passed on is answered from this gateway's store alone.
    let peers = if head.header("x-sluice-peer").is_some() { &[][..] } else { cfg.approvals.peers.as_slice() };
    match (head.method(), path.trim_end_matches('/').split('/').collect::<Vec<_>>().as_slice()) {
        ("GET", ["", "approvals"]) => {
            let all = query.split('&').any(|kv| kv == "all=1" || kv == "all=true");
            let mut list = serde_json::to_value(sh.approvals.list(&reviewer.groups, all)).unwrap_or_default();
            let mut asked = Vec::new();
            if !peers.is_empty() {
                for a in list.as_array_mut().into_iter().flatten() {
                    a["gateway"] = cfg.instance.as_str().into();
                }
                for peer in peers {
                    match peer_call(&cfg.approvals, peer, "GET", target, head, None) {
                        Ok((200, v)) => {
                            let theirs = v.get("approvals").and_then(|a| a.as_array()).cloned().unwrap_or_default();
                            if let Some(l) = list.as_array_mut() {
                                l.extend(theirs.into_iter().map(|mut a| {
                                    a["gateway"] = peer.as_str().into();
                                    a
                                }));
                            }
                            asked.push(serde_json::json!({ "peer": peer, "ok": true }));
                        }
                        Ok((status, v)) => asked.push(serde_json::json!({ "peer": peer, "ok": false, "error": format!("{status}: {}", v.get("error").and_then(|e| e.as_str()).unwrap_or("")) })),
                        Err(e) => asked.push(serde_json::json!({ "peer": peer, "ok": false, "error": e })),
                    }
                }
            }
            let mut out = serde_json::json!({ "reviewer": reviewer.subject, "approvals": list });
            if !asked.is_empty() {
                out["peers"] = asked.into();
            }
            json(200, out)
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
                Err(e @ DecideError::Unknown(_)) => {
                    // Held on another gateway of the deployment: it decides (and records) it.
                    for peer in peers {
                        match peer_call(&cfg.approvals, peer, "POST", target, head, Some(body)) {
                            Ok((404, _)) => {}
                            Ok((status, mut v)) => {
                                v["gateway"] = peer.as_str().into();
                                return json(status, v);
                            }
                            Err(err) => tracing::warn!(peer = %peer, error = %err, "a peer gateway could not be asked about an approval"),
                        }
                    }
                    problem(404, &e.to_string())
                }
                Err(e @ DecideError::Closed(..)) => problem(409, &e.to_string()),
                Err(e @ DecideError::Stopping) => problem(503, &e.to_string()),
                Err(e @ (DecideError::NotApprover(_) | DecideError::OwnCall)) => problem(403, &e.to_string()),
            }
        }
        _ => problem(404, "try GET /approvals, POST /approvals/{id}/approve or /deny, GET /approvals/ui"),
    }
}

/// Pass a reviewer's request on to a peer gateway's admin listener (with the reviewer's own
/// credential, marked so that the peer answers from its own store); its status and JSON.
fn peer_call(cfg: &crate::config::approvals::ApprovalsCfg, peer: &str, method: &str, target: &str, head: &Head, body: Option<&[u8]>) -> Result<(u16, serde_json::Value), String> {
    let agent = cfg.peer_agent.as_ref().ok_or("no agent for peers")?;
    let url = format!("{peer}{target}");
    let resp = match body {
        Some(b) => as_reviewer(agent.post(&url), head).header("content-type", "application/json").send(b),
        None => as_reviewer(agent.get(&url), head).call(),
    };
    let mut resp = resp.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().with_config().limit(4 << 20).read_to_string().map_err(|e| format!("{method} {url}: {e}"))?;
    let v = serde_json::from_str(&text).map_err(|_| format!("{method} {url}: answered {status} with a body that is not JSON"))?;
    Ok((status, v))
}

/// A request to a peer carrying the reviewer's credential, marked as passed on.
fn as_reviewer<B>(mut req: ureq::RequestBuilder<B>, head: &Head) -> ureq::RequestBuilder<B> {
    req = req.header("x-sluice-peer", "1");
    for name in ["authorization", "x-api-key"] {
        if let Some(v) = head.header_str(name) {
            req = req.header(name, v);
        }
    }
    req
}
