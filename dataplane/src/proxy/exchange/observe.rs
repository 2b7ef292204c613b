//! Counting and correlating the messages of one body: requests remembered until answered, the
//! method and tool an answer or a server's request belongs to, the session record kept current.

use super::Track;
use crate::proxy::Worker;
use crate::config::Route;
use crate::hooks::{Direction, RequestCtx};
use crate::jsonrpc::{self, Kind};
use crate::session::{Pending, Session};
use simd_json::prelude::*;

/// Count and correlate the messages of one body; keep the session record current.
pub(crate) fn observe(w: &Worker, ctx: &RequestCtx, route: &Route, dir: Direction, body: &mut jsonrpc::Body<'_>, mut track: Option<&mut Track<'_>>) {
    let dlabel = if dir == Direction::Request { "request" } else { "response" };
    let sessions = &w.shared.sessions;
    let sid = ctx.mcp_session_id.as_deref();
    for (info, v) in body.infos.iter_mut().zip(&body.values) {
        w.metrics.messages(&route.label, dlabel, info.kind.as_str(), 1);
        let id = info.id.as_deref().unwrap_or("");
        // For a response: the method (and tool) of the request it answers, when known.
        let mut answers: Option<Pending> = None;
        match (dir, info.kind) {
            (Direction::Request, Kind::Request) => {
                // A task's follow-ups (`tasks/get`, `tasks/result`, `tasks/cancel`) are the
                // tool's that created it: decided, scanned and recorded as that tool's.
                if let (None, Some(sid), Some(task)) = (&info.tool, sid, info.followed_task()) {
                    info.tool = sessions.with(sid, |s| s.tasks.get(task).cloned()).flatten();
                }
                if w.emitter.is_some() {
                    info.call = Some(crate::ids::new_id());
                }
                let p = Pending { method: info.method.clone().unwrap_or_default(), tool: info.tool.clone(), task: info.task.clone(), call: info.call.clone() };
                if info.method.as_deref() == Some("initialize") {
                    if let Some(t) = track.as_deref_mut() {
                        t.init = v.get("params").and_then(|p| serde_json::to_value(p).ok());
                    }
                }
                if let Some(sid) = sid {
                    sessions.with(sid, |s| {
                        s.messages_in += 1;
                        Session::remember(&mut s.pending_client, id, p.clone());
                        // A stateless request says who the client is in `_meta` (MCP 2026-07-28).
                        if s.stateless && s.client_info.is_none() {
                            let meta = v.get("params").and_then(|p| p.get("_meta"));
                            let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(|x| serde_json::to_value(x).ok());
                            s.client_info = field("io.modelcontextprotocol/clientInfo");
                            s.client_capabilities = field("io.modelcontextprotocol/clientCapabilities");
                        }
                    });
                }
                if let Some(t) = track.as_deref_mut() {
                    t.pending.push((id.to_owned(), p));
                    t.asked += 1;
                }
            }
            (Direction::Request, Kind::Response | Kind::Error) => {
                if let Some(sid) = sid {
                    answers = sessions
                        .with(sid, |s| {
                            s.messages_in += 1;
                            s.pending_server.remove(id)
                        })
                        .flatten();
                }
            }
            (Direction::Response, Kind::Response | Kind::Error) => {
                let asked = track.as_deref_mut().and_then(|t| {
                    let pos = t.pending.iter().position(|(i, _)| i == id)?;
                    Some(t.pending.swap_remove(pos).1)
                });
                let is_init = asked.as_ref().is_some_and(|p| p.method == "initialize");
                answers = asked;
                if let Some(sid) = sid {
                    let from_session = sessions.with(sid, |s| {
                        s.messages_out += 1;
                        let p = s.pending_client.remove(id);
                        // A legacy HTTP+SSE session's answers come on its stream, not the post.
                        if is_init || p.as_ref().is_some_and(|p| p.method == "initialize") {
                            if let Some(r) = v.get("result") {
                                s.server_info = r.get("serverInfo").and_then(|x| serde_json::to_value(x).ok());
                                s.server_capabilities = r.get("capabilities").and_then(|x| serde_json::to_value(x).ok());
                                s.protocol_version = r.get("protocolVersion").and_then(|x| x.as_str()).map(str::to_owned);
                            }
                        }
                        p
                    });
                    if answers.is_none() {
                        answers = from_session.flatten();
                    }
                }
            }
            (Direction::Response, Kind::Request) => {
                // The tool asking: the call whose stream carries the request, or the task the
                // request names as related (`_meta["io.modelcontextprotocol/related-task"]`).
                if info.tool.is_none() {
                    info.tool = track.as_deref().and_then(|t| match t.pending.as_slice() {
                        [(_, p)] if p.method == "tools/call" => p.tool.clone(),
                        _ => None,
                    });
                    let related = v.get("params").and_then(|p| p.get("_meta")).and_then(|m| m.get("io.modelcontextprotocol/related-task")).and_then(|r| r.get("taskId")).and_then(|t| t.as_str());
                    if let (None, Some(sid)) = (&info.tool, sid) {
                        // Else the session's one call in progress (a legacy stream, a GET stream).
                        info.tool = sessions
                            .with(sid, |s| match related {
                                Some(task) => s.tasks.get(task).cloned(),
                                None => {
                                    let mut calls = s.pending_client.values().filter(|p| p.method == "tools/call");
                                    match (calls.next(), calls.next()) {
                                        (Some(p), None) => p.tool.clone(),
                                        _ => None,
                                    }
                                }
                            })
                            .flatten();
                    }
                }
                if w.emitter.is_some() {
                    info.call = Some(crate::ids::new_id());
                }
                if let Some(sid) = sid {
                    let p = Pending { method: info.method.clone().unwrap_or_default(), tool: info.tool.clone(), task: info.task.clone(), call: info.call.clone() };
                    sessions.with(sid, |s| {
                        s.messages_out += 1;
                        Session::remember(&mut s.pending_server, id, p);
                    });
                }
            }
            (_, Kind::Notification | Kind::Document) => {
                if let Some(sid) = sid {
                    sessions.with(sid, |s| if dir == Direction::Request { s.messages_in += 1 } else { s.messages_out += 1 });
                }
            }
        }
        // A response carries the method and tool of the request it answers (for the record),
        // and its event's id.
        if let (Some(p), None) = (&answers, &info.call) {
            info.call = p.call.clone();
        }
        if let (Some(p), true) = (&answers, info.method.is_none()) {
            info.method = Some(p.method.clone());
            info.tool = p.tool.clone();
            if info.task.is_none() {
                info.task = p.task.clone();
            }
        }
        if let (Direction::Response, Some(t), Some(p)) = (dir, track.as_deref_mut(), answers.take()) {
            if t.first_answered.is_none() {
                t.first_answered = Some(p);
            }
        }
        // A call answered with a task (`result.task.taskId`): the task is the tool's.
        if dir == Direction::Response && info.kind == Kind::Response && info.method.as_deref() == Some("tools/call") {
            let task = v.get("result").and_then(|r| r.get("task")).and_then(|t| t.get("taskId")).and_then(|t| t.as_str());
            if let (Some(sid), Some(tool), Some(task)) = (sid, info.tool.as_deref(), task) {
                sessions.with(sid, |s| s.remember_task(task, tool));
            }
        }
        // Fail closed: an answer the gateway cannot pair with its request (an id it never saw;
        // a legacy session whose posts went through another instance) that lists tools is
        // decided as a `tools/list` answer — filtered by the policy, pinned, recorded as a
        // catalog — rather than passing unfiltered.
        if dir == Direction::Response && info.kind == Kind::Response && info.method.is_none() && v.get("result").and_then(|r| r.get("tools")).is_some_and(|t| t.is_array()) {
            tracing::debug!(worker = w.id, route = %route.name, id, "an unpaired answer lists tools: decided as tools/list");
            info.method = Some("tools/list".to_owned());
        }
    }
}
