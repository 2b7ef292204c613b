//! A JSON answer buffered (bounded), parsed, passed through the hooks and answered with its length.

use super::answer_head::response_head;
use super::body::BodyReader;
use super::observe::observe;
use super::request::document;
use super::{Track, fail_answer, with_scratch};
use crate::proxy::Worker;
use crate::proxy::io::{deadline, Stream};
use crate::proxy::upstream::UpConn;
use crate::config::schema::RouteKind;
use crate::config::{Config, Route};
use crate::error::ProxyError;
use crate::hooks::{self, Direction, Outcome, RequestCtx};
use crate::http::body::BodyKind;
use crate::http::write;
use crate::jsonrpc;
use futures_lite::AsyncWriteExt;

/// The worker's body and output buffers, taken for one buffered response and put back on drop
/// (never held by two tasks: a task that finds them taken works with fresh ones).
struct JsonBufs<'a> {
    w: &'a Worker,
    body: Vec<u8>,
    out: Vec<u8>,
}

impl<'a> JsonBufs<'a> {
    fn take(w: &'a Worker) -> Self {
        let (mut body, mut out) = (w.respbuf.take(), w.reqbuf.take());
        body.clear();
        out.clear();
        JsonBufs { w, body, out }
    }
}

impl Drop for JsonBufs<'_> {
    fn drop(&mut self) {
        self.w.respbuf.set(std::mem::take(&mut self.body));
        self.w.reqbuf.set(std::mem::take(&mut self.out));
    }
}

/// Buffer a JSON response (bounded), parse it, run the hooks, and answer with Content-Length.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_json(
    w: &Worker,
    cfg: &Config,
    down: &mut Stream,
    c: &mut UpConn,
    kind: BodyKind,
    ctx: &mut RequestCtx,
    track: &mut Track<'_>,
    route: &Route,
    answers: &[Vec<u8>],
    keep_alive: bool,
    held: bool,
) -> Result<bool, ()> {
    let mut bufs = JsonBufs::take(w);
    let JsonBufs { body, out, .. } = &mut bufs;
    let max = cfg.limits.max_body_bytes;
    let mut reader = BodyReader::new(kind);
    // The answer is held whole: it counts against the worker's memory limit like a request body.
    let mut holding = crate::proxy::Held::new(w);
    let mut over: Option<ProxyError> = None;
    if let BodyKind::Length(n) = kind {
        if let Err(e) = holding.grow((n as usize).min(max), &cfg.limits) {
            over = Some(e);
        }
    }
    let read = async {
        loop {
            if over.is_some() {
                return Ok(());
            }
            let mut too_big = false;
            reader.drain(&mut c.rbuf, |b| {
                let to = body.len() + b.len();
                if to > max {
                    too_big = true;
                } else if let Err(e) = holding.grow_to_fit(to, crate::proxy::KEEP_BODY, max, &cfg.limits) {
                    over.get_or_insert(e);
                } else {
                    body.extend_from_slice(b);
                }
            })?;
            if too_big {
                return Err(format!("the response is larger than limits.max_body_bytes ({max})"));
            }
            if over.is_some() {
                return Ok(());
            }
            if reader.done {
                return Ok(());
            }
            match c.rbuf.fill(&mut c.stream, max).await {
                Ok(0) => reader.eof()?,
                Ok(_) => {}
                Err(e) => return Err(format!("reading the response failed: {e}")),
            }
        }
    };
    let upstream_name = ctx.upstream.clone();
    let fail = |reason: String| ProxyError::UpstreamProtocol { upstream: upstream_name.clone(), reason };
    let idle = cfg.upstreams[route.upstream].stream_idle;
    let res = match deadline(idle, read).await {
        Some(Ok(())) => match over.take() {
            Some(e) => Err(e),
            None => Ok(()),
        },
        Some(Err(reason)) => Err(fail(reason)),
        None => Err(ProxyError::UpstreamTimeout {
            upstream: ctx.upstream.clone(),
            phase: "reading the response body",
            secs: idle.as_secs_f64(),
        }),
    };
    if let Err(e) = res {
        let _ = fail_answer(w, ctx, track, down, held, &e, false).await;
        return Err(());
    }
    // An MCP server's HTTP error may carry a JSON body that is not JSON-RPC (an authorization
    // server's `{"error":"invalid_token"}`, RFC 6750): passed on as a document, scanned like one.
    let is_mcp = route.kind == RouteKind::Mcp && (c.head.status < 400 || memchr::memmem::find(body, b"\"jsonrpc\"").is_some());
    let outcome = with_scratch(w, body, |buf| {
        if is_mcp {
            let mut parsed = jsonrpc::parse(buf).map_err(|e| fail(format!("the response is not JSON-RPC: {e}")))?;
            observe(w, ctx, route, Direction::Response, &mut parsed, Some(track));
            Ok(hooks::process_body(&w.chain, ctx, Direction::Response, &mut parsed))
        } else {
            let mut doc = document(buf).map_err(|e| fail(format!("the answer: {e}")))?;
            Ok(hooks::process_body(&w.chain, ctx, Direction::Response, &mut doc))
        }
    });
    let replaced = match outcome {
        Err(e) => {
            let _ = fail_answer(w, ctx, track, down, held, &e, false).await;
            return Err(());
        }
        Ok(Outcome::Unchanged) => None,
        Ok(Outcome::Rewritten { body: b, .. }) | Ok(Outcome::Answer(b)) => Some(b),
    };
    let merged = if answers.is_empty() { None } else { hooks::merge_answers(replaced.as_deref().unwrap_or(body), answers) };
    let final_body: &[u8] = merged.as_deref().or(replaced.as_deref()).unwrap_or(body);
    if held {
        // The answer of an approved call ends the stream that carried its waiting.
        out.clear();
        out.extend_from_slice(&crate::approvals::wait::sse_frame(final_body));
        out.extend_from_slice(write::LAST_CHUNK);
        return if down.write_all(out).await.is_ok() && down.flush().await.is_ok() { Ok(true) } else { Err(()) };
    }
    response_head(w, out, &c.head, ctx, track);
    write::content_length(out, final_body.len());
    write::header(out, "connection", if keep_alive { b"keep-alive" } else { b"close" });
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(final_body);
    if down.write_all(out).await.is_err() || down.flush().await.is_err() {
        return Err(());
    }
    Ok(true)
}
