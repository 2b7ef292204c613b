//! Holding a call on its worker until a reviewer decides, without blocking the worker: the
//! task sleeps on the executor's timer between looks at the record, so every other
//! connection of the core goes on. When the agent accepts SSE, the answer becomes a stream at
//! once and carries `notifications/progress` (with the request's progress token) or
//! `notifications/message` while the call waits; the upstream's answer follows in the same
//! stream once approved.

use super::{Entry, State};
use crate::http::write;
use crate::jsonrpc::{self, Code};
use crate::proxy::Worker;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use sluice_schema::event::Kind;
use std::time::{Duration, Instant};

/// How often the record is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How often a waiting agent hears that it is still waiting.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A call held for approval (set by the policy hook, taken by the exchange).
#[derive(Debug, Clone)]
pub struct Hold {
    pub entry: Box<Entry>,
    /// A new request (its `approval_requested` event is still to be recorded).
    pub created: bool,
    /// The request's JSON-RPC id (JSON text).
    pub rpc_id: Option<String>,
    /// `params._meta.progressToken` (JSON text), when the agent asked for progress.
    pub progress_token: Option<String>,
}

/// What became of a held call.
pub enum Held {
    /// Approved: forward it. `streaming`: the agent's answer is already an open SSE stream.
    Go { streaming: bool },
    /// Refused (denied, expired, or the agent left); the answer is written. The value says
    /// whether the connection can be kept.
    Done(bool),
}

fn progress(h: &Hold, waited: Duration) -> Vec<u8> {
    let groups = h.entry.approvers.join(" or ");
    let message = format!("waiting for approval {} by {groups} ({} s so far)", h.entry.id, waited.as_secs());
    let msg = match &h.progress_token {
        Some(t) => format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{t},"progress":{},"message":{}}}}}"#,
            waited.as_secs(),
            serde_json::Value::String(message)
        ),
        None => format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","logger":"sluice.approvals","data":{}}}}}"#,
            serde_json::Value::String(message)
        ),
    };
    sse_frame(msg.as_bytes())
}

/// One SSE `message` event as an HTTP chunk.
pub fn sse_frame(data: &[u8]) -> Vec<u8> {
    let mut ev = Vec::with_capacity(data.len() + 32);
    ev.extend_from_slice(b"event: message\ndata: ");
    ev.extend_from_slice(data);
    ev.extend_from_slice(b"\n\n");
    let mut out = Vec::with_capacity(ev.len() + 16);
    out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
    out.extend_from_slice(&ev);
    out.extend_from_slice(b"\r\n");
    out
}

/// Hold the call until it is decided, its request expires, or the agent goes away.
pub async fn hold(w: &Worker, down: &mut crate::proxy::io::Stream, h: &Hold, sse: bool, keep_alive: bool, cors: Option<crate::proxy::cors::Reader<'_>>) -> Held {
    let store = &w.shared.approvals;
    let instance = w.shared.recorder.as_ref().map(|r| r.instance.clone());
    if h.created {
        tracing::info!(approval = %h.entry.id, tool = %h.entry.tool, subject = %h.entry.subject, approvers = ?h.entry.approvers, "call held for approval");
        if let (Some(em), Some(inst)) = (&w.emitter, &instance) {
            em.emit(&super::event(&h.entry, Kind::ApprovalRequested, inst));
        }
        let cfg = w.shared.config.load();
        w.shared.notifier.tell(super::notify::Step::Requested, &h.entry, &cfg.approvals, &cfg.instance);
    }
    if sse {
        let mut head = Vec::with_capacity(160);
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        write::header(&mut head, "content-type", b"text/event-stream");
        write::header(&mut head, "cache-control", b"no-cache");
        write::header(&mut head, "transfer-encoding", b"chunked");
        crate::proxy::cors::write_answer_headers(&mut head, cors);
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&progress(h, Duration::ZERO));
        if down.write_all(&head).await.is_err() || down.flush().await.is_err() {
            return Held::Done(false);
        }
    }
    let started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let Some((state, newly)) = store.poll(&h.entry.id) else {
            return refuse(down, h, sse, keep_alive, cors, "the approval request is gone (the gateway restarted or pruned it); send the call again").await;
        };
        match state {
            State::Approved { by, .. } => {
                tracing::info!(approval = %h.entry.id, by = %by, waited_ms = started.elapsed().as_millis() as u64, "approved call goes through");
                return Held::Go { streaming: sse };
            }
            State::Denied { by, reason } => {
                let why = if reason.is_empty() { String::new() } else { format!(": {reason}") };
                return refuse(down, h, sse, keep_alive, cors, &format!("{by} denied this call{why}; do not retry it unchanged")).await;
            }
            State::Expired | State::Used { .. } => {
                if newly {
                    let mut e = (*h.entry).clone();
                    e.state = State::Expired;
                    if let (Some(em), Some(inst)) = (&w.emitter, &instance) {
                        em.emit(&super::event(&e, Kind::ApprovalExpired, inst));
                    }
                    let cfg = w.shared.config.load();
                    w.shared.notifier.tell(super::notify::Step::Expired, &e, &cfg.approvals, &cfg.instance);
                }
                let groups = h.entry.approvers.join(" or ");
                return refuse(down, h, sse, keep_alive, cors, &format!("no member of {groups} decided in time (approval {}); the call was not made — send it again to ask again", h.entry.id)).await;
            }
            State::Pending => {}
        }
        if w.draining() {
            // A draining gateway does not keep calls waiting for people.
            let reason = if w.config().approvals.state_file.is_some() {
                format!("the gateway is restarting; approval {} stays open across the restart — send the call again to wait for it", h.entry.id)
            } else {
                format!("the gateway is restarting and approval {} ends with it (no approvals.state_file) — send the call again to ask again", h.entry.id)
            };
            return refuse(down, h, sse, false, cors, &reason).await;
        }
        if sse && last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let f = progress(h, started.elapsed());
            if down.write_all(&f).await.is_err() || down.flush().await.is_err() {
                return Held::Done(false);
            }
        }
        // Sleep, or notice the agent hanging up.
        let gone = futures_lite::future::or(
            async {
                glommio::timer::sleep(POLL).await;
                false
            },
            async {
                let mut probe = [0u8; 1];
                matches!(down.read(&mut probe).await, Ok(0) | Err(_))
            },
        )
        .await;
        if gone {
            tracing::info!(approval = %h.entry.id, "the agent left while its call waited for approval");
            return Held::Done(false);
        }
    }
}

async fn refuse(down: &mut crate::proxy::io::Stream, h: &Hold, sse: bool, keep_alive: bool, cors: Option<crate::proxy::cors::Reader<'_>>, reason: &str) -> Held {
    let body = jsonrpc::error_body(h.rpc_id.as_deref(), Code::ApprovalRequired, "approval not given", reason);
    if sse {
        let mut out = sse_frame(&body);
        out.extend_from_slice(write::LAST_CHUNK);
        let ok = down.write_all(&out).await.is_ok() && down.flush().await.is_ok();
        return Held::Done(ok && keep_alive);
    }
    let ok = crate::proxy::respond::send(down, 200, "application/json", &body, keep_alive, &[], cors).await.is_ok();
    Held::Done(ok && keep_alive)
}
