//! One request/response exchange. `handle` drives the phases, each in a file of its own:
//!
//! ```text
//! route, web origin, identity (here)
//!   → session.rs      which session the request belongs to (the gateway's ids, legacy posts,
//!                     stateless requests), whose it is, the caller's share
//!   → forward.rs      the URL and headers through the hooks
//!   → request.rs      the body parsed and through the hooks (observe.rs pairs the messages)
//!   → [approval hold, token exchange]
//!   → forward.rs      the upstream request: rewritten head, credential, caller identity
//!   → media.rs        can the answer be framed and inspected at all?
//!   → session.rs      a session opened or ended by the answer head
//!   → relay_sse.rs    (legacy.rs for HTTP+SSE) | relay_json.rs | relay_plain.rs, each writing
//!                     answer_head.rs's head and reading body.rs's framing
//!   → finish          metrics, access log
//! ```
//!
//! Errors before the first response byte become an HTTP status with a JSON-RPC error; after
//! it, the connection is closed.

mod session;
mod request;
mod media;
mod observe;
mod forward;
mod answer_head;
mod body;
mod relay_sse;
mod legacy;
mod relay_json;
mod relay_plain;

use self::forward::{caller_for, encode_request, exchanged, inspect_head, Forward, HeadEdits};
use self::legacy::legacy_answers;
use self::media::{media, usable_answer, Media};
pub(crate) use self::observe::observe;
use self::relay_json::relay_json;
use self::relay_plain::relay_plain;
use self::relay_sse::relay_sse;
pub(crate) use self::request::reused_request_id;
use self::request::{plain_decision, request_phase};
use self::session::{admit, after_response_head, end_session, session_token, Admitted};
use super::io::Stream;
use super::upstream;
use super::{respond, Worker};
use crate::config::detect::Action;
use crate::config::schema::RouteKind;
use crate::config::{Config, Route};
use crate::error::ProxyError;
use crate::hooks::{self, Direction, Outcome, RequestCtx, Verdict};
use crate::http::body::BodyKind;
use crate::http::{write, Head};
use crate::jsonrpc;
use crate::session::Pending;
use futures_lite::AsyncWriteExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What this exchange learned about its messages, to correlate responses and track sessions.
#[derive(Default)]
pub(crate) struct Track<'h> {
    /// Requests sent in this exchange: id text → what was asked.
    pending: Vec<(String, Pending)>,
    /// For the access log: how many requests the exchange sent, and the first one answered
    /// (moved out of `pending` when its answer came).
    asked: usize,
    first_answered: Option<Pending>,
    /// `initialize` params (client info, capabilities, protocol version), when this exchange
    /// opens a session.
    init: Option<serde_json::Value>,
    /// Id of the single request, so that a gateway error can answer it by id.
    reply_id: Option<String>,
    /// The session this legacy HTTP+SSE stream opened (it ends with the stream).
    legacy_session: Option<String>,
    /// Where that session's messages go upstream (the `endpoint` event's target, upstream-side).
    legacy_target: Option<String>,
    /// This request posts to a legacy HTTP+SSE session: its answers go out on the stream.
    legacy_post: bool,
    /// The session id the agent gets in place of the upstream's (`session::Ids`).
    session_token: Option<String>,
    /// The web page reading the answer, if the request came from one (`cors`).
    cors: Option<super::cors::Reader<'h>>,
    /// The agent's `MCP-Protocol-Version`, for what the gateway posts upstream in its place.
    protocol_version: Option<&'h [u8]>,
    /// Errors for the server's own requests (sampling, elicitation, roots) that a stage
    /// refused on their way to the agent: posted to the upstream as the agent's answers.
    to_server: Vec<Vec<u8>>,
    /// The standard headers (`Mcp-Name`, `Mcp-Param-*`) written again from the masked body:
    /// header position → new value, or `None` to leave it out (`jsonrpc::mirror`).
    mirror_edits: Vec<(usize, Option<String>)>,
}

/// The end of an exchange that reached a route: its metrics, and its access-log line.
fn finish(w: &Worker, cfg: &Config, route: &Route, ctx: &RequestCtx, track: Option<&Track<'_>>, status: u16) {
    let elapsed = ctx.started.elapsed();
    w.metrics.request_done(&route.label, crate::metrics::method_label(&ctx.http_method), status, elapsed);
    if cfg.access_log {
        let (first, calls) = track.map_or((None, 0), |t| (t.first_answered.as_ref().or(t.pending.first().map(|(_, p)| p)), t.asked));
        super::access::exchange(ctx, route, first, calls, status, elapsed);
    }
}

/// Handle one request. `Ok(keep_alive)` once a response went out; `Err` when nothing was
/// written and the caller should answer with the error.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    w: &Worker,
    cfg: &Arc<Config>,
    down: &mut Stream,
    head: &Head,
    body: &[u8],
    client: SocketAddr,
    tls: bool,
    peer: Option<&crate::tls::PeerNames>,
    started: Instant,
) -> Result<bool, ProxyError> {
    // Fail closed: a call the gateway cannot record is not forwarded.
    if w.emitter.as_ref().is_some_and(|e| !e.accepting()) {
        return Err(ProxyError::RecordingUnavailable);
    }
    let path = head.path();
    if let Some(auth) = cfg.identity.as_ref().filter(|_| path.starts_with(super::auth::METADATA_PATH)) {
        let keep_alive = head.keep_alive() && !w.draining();
        return super::auth::serve_metadata(down, cfg, auth, head, tls, keep_alive).await.map(|_| keep_alive).map_err(|_| ProxyError::ClientTimeout);
    }
    let Some((_, route)) = cfg.route_for(head.header_str("host"), path) else {
        let e = ProxyError::NoRoute(path.to_string());
        w.record_refusal(None, None, client, &e);
        return Err(e);
    };
    // A web page may call only from an origin the deployment lists (or a loopback one).
    if let Some(origin) = head.header("origin").filter(|o| !cfg.origins.allows(o)) {
        let e = ProxyError::ForbiddenOrigin(String::from_utf8_lossy(origin).into_owned());
        tracing::info!(worker = w.id, route = %route.name, origin = %String::from_utf8_lossy(origin), "request from a web origin refused");
        w.record_refusal(None, Some(&route.label), client, &e);
        return Err(e);
    }
    // A web page's preflight is the gateway's to answer (it decides which origins may call).
    let cors = super::cors::reader(cfg, head, route.kind == RouteKind::Mcp);
    if let Some(reader) = cors.filter(|_| super::cors::is_preflight(head)) {
        let keep_alive = head.keep_alive() && !w.draining();
        down.write_all(&super::cors::preflight_answer(head, reader, keep_alive)).await.map_err(|_| ProxyError::ClientTimeout)?;
        down.flush().await.map_err(|_| ProxyError::ClientTimeout)?;
        w.metrics.request_done(&route.label, crate::metrics::method_label(head.method()), 204, started.elapsed());
        if cfg.access_log {
            super::access::early(client, Some(&route.name), Some(head.method()), 204, started.elapsed(), "CORS preflight answered");
        }
        return Ok(keep_alive);
    }
    let up = &cfg.upstreams[route.upstream];
    let method = head.method();
    let mut ctx = RequestCtx {
        worker: w.id,
        upstream: up.name.clone(),
        client,
        http_method: method.to_owned(),
        path: path.to_owned(),
        mcp_session_id: head.header_str("mcp-session-id").map(str::to_owned),
        protocol_version: head.header_str("mcp-protocol-version").map(str::to_owned),
        detect: cfg.detect.clone(),
        credential: up.credential.clone(),
        policy: cfg.policy.clone(),
        ..RequestCtx::blank(route.label.clone(), started)
    };
    // Identify: no call is parsed, let alone forwarded, for a caller that is not authenticated.
    if let Some(auth) = cfg.identity.as_ref() {
        match super::auth::authenticate(auth, head, peer).await {
            Ok(id) => ctx.identity = id,
            Err(e) => {
                let keep_alive = head.keep_alive() && !w.draining();
                super::auth::refuse(w, down, &ctx, route, head, tls, &e, keep_alive, cors).await.map_err(|_| ProxyError::ClientTimeout)?;
                finish(w, cfg, route, &ctx, None, if matches!(e, crate::identity::AuthError::IssuerUnavailable(_)) { 503 } else { 401 });
                return Ok(keep_alive);
            }
        }
    }
    // Which session the request belongs to, and whether its caller may use it.
    let Admitted { upstream_sid_at, legacy_post } = admit(w, cfg, route, head, &mut ctx, client)?;
    let mut track = Track { legacy_post, cors, protocol_version: head.header("mcp-protocol-version"), ..Track::default() };
    let keep_alive = head.keep_alive() && !w.draining();

    // The URL below the route's prefix and the headers the upstream reads carry arguments too:
    // the hooks see them first.
    let plain = route.kind != RouteKind::Mcp;
    let HeadEdits { target, headers: mut header_edits, rewrite_host, strip_credentials } = match inspect_head(w, cfg, route, head, &mut ctx, upstream_sid_at) {
        Ok(edits) => edits,
        Err(refusal) => {
            respond::send(down, 403, "application/json", &refusal, keep_alive, &[], cors).await.map_err(|_| ProxyError::ClientTimeout)?;
            finish(w, cfg, route, &ctx, Some(&track), 403);
            return Ok(keep_alive);
        }
    };

    // Request phase: parse, observe and pass the hooks, before any await.
    let mut forwarded: Option<Vec<u8>> = None;
    let mut answers = Vec::new();
    let inspected = match request_phase(w, cfg, &mut ctx, route, head, body, &mut track) {
        Ok(i) => i,
        Err(e) => {
            w.record_refusal(Some(&ctx), None, client, &e);
            // A single request that could be read is answered by its id.
            if track.reply_id.is_none() {
                return Err(e);
            }
            let keep = keep_alive && e.keeps_connection();
            respond::error(down, &e, track.reply_id.as_deref(), keep, cors).await.map_err(|_| ProxyError::ClientTimeout)?;
            finish(w, cfg, route, &ctx, Some(&track), e.status());
            return Ok(keep);
        }
    };
    let mut dropped_headers = Vec::new();
    for (at, value) in std::mem::take(&mut track.mirror_edits) {
        header_edits.retain(|(i, _)| *i != at);
        match value {
            Some(v) => header_edits.push((at, v)),
            None => dropped_headers.push(at),
        }
    }
    header_edits.sort_by_key(|(i, _)| *i);
    if inspected.is_none() && plain {
        // A plain HTTP request the hooks did not see (no body, or one not inspected): recorded
        // without its body, and the policy still decides it.
        if let Some(em) = &w.emitter {
            crate::events::record::plain_event(em, &ctx, Direction::Request, body.len() as u64);
        }
        if let Some(refusal) = plain_decision(w, &mut ctx) {
            respond::send(down, 403, "application/json", &refusal, keep_alive, &[], cors).await.map_err(|_| ProxyError::ClientTimeout)?;
            finish(w, cfg, route, &ctx, Some(&track), 403);
            return Ok(keep_alive);
        }
    }
    if let Some(outcome) = inspected {
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Rewritten { body, answers: a } => {
                forwarded = Some(body);
                answers = a;
                if track.legacy_post {
                    if let Err(e) = legacy_answers(w, &ctx, &answers) {
                        w.record_refusal(Some(&ctx), Some(&route.label), client, &e);
                        return Err(e);
                    }
                    answers.clear();
                }
            }
            Outcome::Answer(b) if track.legacy_post => {
                // The agent reads its answers on the session's stream, not here.
                if let Err(e) = legacy_answers(w, &ctx, &[b]) {
                    w.record_refusal(Some(&ctx), Some(&route.label), client, &e);
                    return Err(e);
                }
                respond::send(down, 202, "text/plain", b"Accepted", keep_alive, &[], cors).await.map_err(|_| ProxyError::ClientTimeout)?;
                finish(w, cfg, route, &ctx, Some(&track), 202);
                return Ok(keep_alive);
            }
            Outcome::Answer(b) => {
                // JSON-RPC errors travel in a 200; a refused plain HTTP document is a 403.
                let status = if b.is_empty() || route.kind != RouteKind::Mcp { 403 } else { 200 };
                let b = if b.is_empty() { jsonrpc::error_body(None, jsonrpc::Code::Refused, "Refused", "the gateway refused this notification") } else { b };
                respond::send(down, status, "application/json", &b, keep_alive, &[], cors).await.map_err(|_| ProxyError::ClientTimeout)?;
                finish(w, cfg, route, &ctx, Some(&track), status);
                return Ok(keep_alive);
            }
        }
    }
    // A call held for a human's approval waits here (the worker serves others meanwhile).
    let mut held = false;
    if let Some(h) = ctx.hold.take() {
        let sse = head.minor_version >= 1 && head.header("accept").is_some_and(|a| a.windows(17).any(|x| x.eq_ignore_ascii_case(b"text/event-stream")));
        match crate::approvals::wait::hold(w, down, &h, sse, keep_alive, cors).await {
            crate::approvals::wait::Held::Go { streaming } => held = streaming,
            crate::approvals::wait::Held::Done(keep) => {
                finish(w, cfg, route, &ctx, Some(&track), 200);
                return Ok(keep);
            }
        }
    }
    let out_body = forwarded.as_deref().unwrap_or(body);

    // A token exchanged for the caller's own: held, or asked for now (the task waits on the
    // executor's timer, the worker goes on).
    if let Some(x) = up.credential.as_ref().and_then(|c| c.exchanger()) {
        match exchanged(x, &ctx, head, up.first_byte_timeout).await {
            Ok(live) => ctx.exchanged = Some(live),
            Err(e) => {
                tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name, error = %e, "call not forwarded");
                fail_answer(w, &ctx, &track, down, held, &e, keep_alive && !held).await.map_err(|_| ProxyError::ClientTimeout)?;
                finish(w, cfg, route, &ctx, Some(&track), e.status());
                return Ok(keep_alive && !held);
            }
        }
    }
    // The upstream's credential: a token endpoint that has issued none (or only an expired
    // one) leaves the call unanswerable — answered here, never sent without it.
    let credential = ctx.upstream_credential();
    if let Some(reason) = credential.as_ref().filter(|l| l.value.is_none()).map(|l| l.error.clone().unwrap_or_default()) {
        let e = ProxyError::NoUpstreamCredential { upstream: up.name.clone(), reason };
        tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name, error = %e, "call not forwarded");
        fail_answer(w, &ctx, &track, down, held, &e, keep_alive && !held).await.map_err(|_| ProxyError::ClientTimeout)?;
        finish(w, cfg, route, &ctx, Some(&track), e.status());
        return Ok(keep_alive && !held);
    }

    // Forward.
    let mut req = w.reqbuf.take();
    req.clear();
    let credential_value = credential.as_ref().and_then(|l| l.value.as_deref());
    let (who, assertion) = caller_for(w, up, &ctx);
    let forward = Forward { target: target.as_deref(), headers: &header_edits, dropped: &dropped_headers, rewrite_host, strip_credentials, client, tls, credential: credential_value, who, assertion: assertion.as_deref() };
    encode_request(&mut req, head, route, up, &forward, out_body);
    let sent = upstream::send(w, up, &req, up.connect_timeout, up.first_byte_timeout, cfg.limits.max_head_bytes).await;
    w.reqbuf.set(req);
    let mut c = match sent {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name, error = %e, "upstream failed");
            fail_answer(w, &ctx, &track, down, held, &e, keep_alive).await.map_err(|_| ProxyError::ClientTimeout)?;
            finish(w, cfg, route, &ctx, Some(&track), e.status());
            return Ok(keep_alive);
        }
    };

    // Response head.
    let status = c.head.status;
    ctx.status = Some(status);
    let kind = match usable_answer(route, up, head, &c.head, method) {
        Ok(kind) => kind,
        Err(e) => {
            tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name, error = %e, "upstream answer not forwarded");
            fail_answer(w, &ctx, &track, down, held, &e, keep_alive && !held).await.map_err(|_| ProxyError::ClientTimeout)?;
            finish(w, cfg, route, &ctx, Some(&track), e.status());
            return Ok(keep_alive && !held);
        }
    };
    after_response_head(w, cfg, route, &mut ctx, &mut track, &c.head, method);
    // The id the request carried, when it opened (its header is the one the upstream's replaced).
    let opened = upstream_sid_at.and_then(|i| head.headers().nth(i)).and_then(|(_, v)| std::str::from_utf8(v).ok());
    track.session_token = session_token(cfg, route, &mut ctx, &c.head, opened);
    let ctype = c.head.header("content-type").unwrap_or(b"");
    let is_sse = starts_with_ci(ctype, b"text/event-stream");
    let is_json = media(Some(ctype)) == Media::Json;
    let is_mcp = route.kind == RouteKind::Mcp;

    let result = if is_mcp && is_sse && kind != BodyKind::None {
        // However quiet the stream (a `subscriptions/listen` waiting for changes), its session
        // is not idle while it is open.
        let _open = ctx.mcp_session_id.clone().and_then(|k| w.shared.sessions.open_stream(k));
        let r = relay_sse(w, cfg, route, down, &mut c, kind, &mut ctx, &mut track, &answers, head.minor_version, held).await;
        if let Some(sid) = track.legacy_session.take() {
            end_session(w, &ctx, route, &sid, "the legacy HTTP+SSE stream closed");
        }
        r
    } else if is_json && kind != BodyKind::None && (is_mcp || !w.chain.is_empty()) {
        relay_json(w, cfg, down, &mut c, kind, &mut ctx, &mut track, route, &answers, keep_alive, held).await
    } else if held {
        // The agent's answer is already an SSE stream: anything else from the upstream ends it with an error.
        let e = ProxyError::UpstreamProtocol { upstream: up.name.clone(), reason: format!("answered an approved call with status {status} and no JSON-RPC body") };
        fail_answer(w, &ctx, &track, down, true, &e, false).await.map(|_| false).map_err(|_| ())
    } else if !answers.is_empty() && kind == BodyKind::None {
        // Only notifications went upstream (202); the refused requests still get answers.
        let b = hooks::join_answers(true, answers);
        respond::send(down, 200, "application/json", &b, keep_alive, &[], cors).await.map(|_| true).map_err(|_| ())
    } else {
        let from = ctx.findings.len();
        let mut sent = 0;
        let r = relay_plain(w, cfg, &mut ctx, down, &mut c, kind, method, keep_alive, head.minor_version, &mut sent, is_mcp, &track, up.stream_idle).await;
        if let Some(em) = w.emitter.as_ref().filter(|_| plain) {
            crate::events::record::plain_event(em, &ctx, Direction::Response, sent);
        }
        // What the streamed text held, recorded once it has gone (masked) to the agent.
        let masked = ctx.findings[from..].iter().any(|f| f.action == Action::Mask);
        w.chain.observe_outside(&mut ctx, Direction::Response, if masked { &Verdict::Changed } else { &Verdict::Pass }, from);
        r
    };
    finish(w, cfg, route, &ctx, Some(&track), status);
    match result {
        Ok(upstream_clean) => {
            if upstream_clean && c.head.keep_alive() && kind != BodyKind::CloseDelimited {
                w.pool.put(&up.pool_key, c, up.pool_max_idle);
            }
            Ok(keep_alive && (kind != BodyKind::CloseDelimited || head.minor_version >= 1))
        }
        Err(()) => Ok(false),
    }
}

/// Answer with an error in the upstream's place: a whole response, or (`held`: the SSE stream
/// is already open) a last event that ends the stream. The answer is recorded as the call's
/// response: the upstream gave none.
#[allow(clippy::too_many_arguments)]
async fn fail_answer(w: &Worker, ctx: &RequestCtx, track: &Track<'_>, down: &mut Stream, held: bool, e: &ProxyError, keep_alive: bool) -> std::io::Result<()> {
    let id = track.reply_id.as_deref();
    if let Some(em) = &w.emitter {
        let call = match track.pending.as_slice() {
            [(_, p)] => Some(p),
            all => all.iter().find(|(i, _)| Some(i.as_str()) == id).map(|(_, p)| p),
        };
        let call = call.map(|p| (p.method.as_str(), p.tool.as_deref(), p.call.as_deref()));
        crate::events::record::gateway_answer(em, ctx, call, id, e);
    }
    if !held {
        return respond::error(down, e, id, keep_alive, track.cors).await;
    }
    let body = jsonrpc::error_body(id, e.code(), &e.to_string(), &e.to_string());
    let mut out = crate::approvals::wait::sse_frame(&body);
    out.extend_from_slice(write::LAST_CHUNK);
    down.write_all(&out).await?;
    down.flush().await
}

/// Run `f` on a copy of `bytes` in the worker's scratch buffer: simd-json parses in place, and
/// the original bytes must stay intact for forwarding. The buffer is put back afterwards (it is
/// never held across an await).
pub(crate) fn with_scratch<R>(w: &Worker, bytes: &[u8], f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut scratch = w.scratch.take();
    scratch.clear();
    scratch.extend_from_slice(bytes);
    let r = f(&mut scratch);
    w.scratch.set(scratch);
    r
}

/// `v` starts with `prefix`, ASCII case-insensitively.
fn starts_with_ci(v: &[u8], prefix: &[u8]) -> bool {
    v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}
