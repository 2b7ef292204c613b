//! An SSE answer relayed event by event: each complete event parsed, passed through the hooks and
//! written to the agent at once; only a partial event is held back.

use super::answer_head::response_head;
use super::body::BodyReader;
use super::forward::answer_server;
use super::legacy::{LEGACY_POLL, legacy_endpoint};
use super::observe::observe;
use super::{Track, fail_answer, with_scratch};
use crate::proxy::Worker;
use crate::proxy::io::{deadline, Stream};
use crate::proxy::upstream::UpConn;
use crate::config::{Config, Route};
use crate::error::ProxyError;
use crate::hooks::{self, Direction, Outcome, RequestCtx};
use crate::http::body::BodyKind;
use crate::http::write;
use crate::jsonrpc;
use crate::sse;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::sync::atomic::Ordering;

/// Stream an SSE response event by event: each complete event is parsed, passed through the
/// hooks and written to the agent as its own chunk at once. Holds back only a partial event.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_sse(
    w: &Worker,
    cfg: &Config,
    route: &Route,
    down: &mut Stream,
    c: &mut UpConn,
    kind: BodyKind,
    ctx: &mut RequestCtx,
    track: &mut Track<'_>,
    answers: &[Vec<u8>],
    client_minor: u8,
    held: bool,
) -> Result<bool, ()> {
    let chunked_out = held || client_minor >= 1;
    let mut out = Vec::with_capacity(1024);
    // A held call's stream is already open (its head went out while it waited).
    if !held {
        response_head(w, &mut out, &c.head, ctx, track);
        if chunked_out {
            write::header(&mut out, "transfer-encoding", b"chunked");
        }
        write::header(&mut out, "connection", if chunked_out { b"keep-alive" } else { b"close" });
        out.extend_from_slice(b"\r\n");
    }
    let mut pending_events = Vec::new();
    for a in answers {
        pending_events.push(sse::Event {
            raw: Vec::new(),
            data: Some(String::from_utf8_lossy(a).into_owned()),
            event: Some("message".into()),
            id: None,
            retry: None,
        });
    }
    let mut payload = Vec::new();
    for ev in pending_events.drain(..) {
        if let Some(d) = &ev.data {
            ev.encode_with_data(d, &mut payload);
        }
    }
    frame(&mut out, &payload, chunked_out);
    if down.write_all(&out).await.is_err() || down.flush().await.is_err() {
        return Err(());
    }
    w.metrics.active_streams.fetch_add(1, Ordering::Relaxed);
    let _stream_guard = StreamGuard(w);
    let mut parser = sse::Parser::new(cfg.limits.max_sse_event_bytes);
    let mut reader = BodyReader::new(kind);
    let mut events = Vec::new();
    let mut parse_err = None;
    // The event still arriving counts against the worker's share of `limits.max_buffered_bytes`.
    let mut holding = crate::proxy::Held::new(w);
    loop {
        reader
            .drain(&mut c.rbuf, |bytes| {
                if let Err(e) = parser.feed(bytes, &mut events) {
                    parse_err = Some(e.to_string());
                }
            })
            .map_err(|e| tracing::warn!(worker = w.id, error = %e, "upstream SSE framing"))?;
        let refused = match parse_err.take() {
            Some(reason) => Some(ProxyError::UpstreamProtocol { upstream: cfg.upstreams[route.upstream].name.clone(), reason }),
            None => holding.resize(parser.pending(), &cfg.limits).err(),
        };
        if let Some(e) = refused {
            tracing::warn!(worker = w.id, route = %route.name, error = %e, "upstream SSE stream refused");
            // A call waiting on this stream gets its error as the stream's last event.
            if chunked_out && track.reply_id.is_some() {
                let _ = fail_answer(w, ctx, track, down, true, &e, false).await;
            }
            return Err(());
        }
        if !events.is_empty() {
            payload.clear();
            for ev in events.drain(..) {
                sse_event(w, cfg, route, ctx, track, ev, &mut payload);
            }
            out.clear();
            frame(&mut out, &payload, chunked_out);
            if !out.is_empty() && (down.write_all(&out).await.is_err() || down.flush().await.is_err()) {
                return Err(()); // the agent left; dropping `c` closes the upstream stream
            }
            if !track.to_server.is_empty() {
                answer_server(w, cfg, route, ctx, track).await;
            }
        }
        if reader.done {
            break;
        }
        // Wait for upstream bytes, a stream-idle timeout, or the agent going away — on a legacy
        // stream also, now and then, for the gateway's own answers to the session's posts.
        let legacy = track.legacy_session.clone();
        let next = futures_lite::future::or(
            futures_lite::future::or(
                async { Some(Some(deadline(cfg.upstreams[route.upstream].stream_idle, c.rbuf.fill(&mut c.stream, cfg.limits.max_sse_event_bytes)).await)) },
                async {
                    let mut probe = [0u8; 1];
                    let _ = down.read(&mut probe).await;
                    None
                },
            ),
            async {
                if legacy.is_none() {
                    futures_lite::future::pending::<()>().await;
                }
                glommio::timer::sleep(LEGACY_POLL).await;
                Some(None)
            },
        )
        .await;
        let next = match next {
            Some(Some(read)) => Some(read),
            None => None,
            Some(None) => {
                // The poll: send what the gateway answered to the session's posts.
                let queued = legacy.as_deref().and_then(|sid| w.shared.sessions.with(sid, |s| std::mem::take(&mut s.legacy_out))).unwrap_or_default();
                if !queued.is_empty() {
                    payload.clear();
                    for a in &queued {
                        let ev = sse::Event { raw: Vec::new(), data: None, event: Some("message".into()), id: None, retry: None };
                        ev.encode_with_data(&String::from_utf8_lossy(a), &mut payload);
                    }
                    out.clear();
                    frame(&mut out, &payload, chunked_out);
                    if down.write_all(&out).await.is_err() || down.flush().await.is_err() {
                        return Err(());
                    }
                }
                continue;
            }
        };
        match next {
            None => {
                tracing::debug!(worker = w.id, route = %route.name, "agent closed the stream");
                return Err(());
            }
            Some(None) => {
                w.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(worker = w.id, route = %route.name, "SSE stream idle timeout");
                return Err(());
            }
            Some(Some(Ok(0))) => {
                if let Err(e) = reader.eof() {
                    tracing::warn!(worker = w.id, route = %route.name, error = %e, "upstream ended the SSE stream abruptly");
                    return Err(());
                }
            }
            Some(Some(Ok(_))) => {}
            Some(Some(Err(e))) => {
                tracing::warn!(worker = w.id, route = %route.name, error = %e, "upstream SSE read failed");
                return Err(());
            }
        }
    }
    if chunked_out && (down.write_all(write::LAST_CHUNK).await.is_err() || down.flush().await.is_err()) {
        return Err(());
    }
    Ok(reader.kind != BodyKind::CloseDelimited)
}

/// Counts the stream in `active_streams` while it is open.
struct StreamGuard<'a>(&'a Worker);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `payload` for the agent: one chunk of a chunked answer, or as is.
fn frame(out: &mut Vec<u8>, payload: &[u8], chunked: bool) {
    if chunked {
        write::chunk(out, payload);
    } else {
        out.extend_from_slice(payload);
    }
}

/// One SSE event: parse its data as JSON-RPC, observe, run the hooks, and append what the
/// agent gets to `out` (the original bytes when nothing changed).
fn sse_event(w: &Worker, cfg: &Config, route: &Route, ctx: &mut RequestCtx, track: &mut Track<'_>, ev: sse::Event, out: &mut Vec<u8>) {
    let Some(data) = ev.data.as_deref().filter(|d| !d.trim().is_empty()) else {
        out.extend_from_slice(&ev.raw); // comments, keep-alives, priming events with empty data
        return;
    };
    if ev.event.as_deref() == Some("endpoint") {
        return legacy_endpoint(w, cfg, route, ctx, track, &ev, data.trim(), out);
    }
    with_scratch(w, data.as_bytes(), |buf| match jsonrpc::parse(buf) {
        Ok(mut parsed) => {
            observe(w, ctx, route, Direction::Response, &mut parsed, Some(track));
            match hooks::process_body(&w.chain, ctx, Direction::Response, &mut parsed) {
                Outcome::Unchanged => out.extend_from_slice(&ev.raw),
                Outcome::Rewritten { body, answers } => {
                    ev.encode_with_data(&String::from_utf8_lossy(&body), out);
                    track.to_server.extend(answers);
                }
                Outcome::Answer(b) => {
                    tracing::info!(worker = w.id, route = %route.name, "SSE event withheld by a hook");
                    if !b.is_empty() {
                        track.to_server.push(b);
                    }
                }
            }
        }
        Err(e) => {
            // Fail closed: what cannot be inspected does not reach the agent.
            tracing::warn!(worker = w.id, route = %route.name, error = %e, "SSE event withheld: data is not JSON-RPC");
            w.metrics.messages(&route.label, "response", "invalid", 1);
        }
    });
}
