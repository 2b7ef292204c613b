//! One request/response exchange, in phases: route → parse and observe the request's
//! JSON-RPC messages → request hooks → forward → response head (session bookkeeping) →
//! response body: SSE relayed event by event, JSON buffered and parsed, anything else streamed
//! through → account. Errors before the first response byte become an HTTP status with a
//! JSON-RPC error; after it, the connection is closed.

use super::io::{deadline, ReadBuf, Stream};
use super::upstream::{self, UpConn};
use super::{respond, Worker};
use crate::config::detect::{Action, DetectCfg};
use crate::config::schema::RouteKind;
use crate::config::{Config, Route, Upstream};
use crate::error::ProxyError;
use crate::hooks::{self, Direction, Outcome, RequestCtx, Verdict};
use crate::http::body::{response_body_kind, BodyKind, ChunkedDecoder, Decoded};
use crate::http::{write, Head};
use crate::jsonrpc::{self, Kind};
use crate::session::{Pending, Session};
use crate::sse;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
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
        route: route.label.clone(),
        upstream: up.name.clone(),
        client,
        http_method: method.to_owned(),
        path: path.to_owned(),
        mcp_session_id: head.header_str("mcp-session-id").map(str::to_owned),
        stateless: false,
        gateway_session_id: None,
        protocol_version: head.header_str("mcp-protocol-version").map(str::to_owned),
        started,
        refused: 0,
        detect: cfg.detect.clone(),
        findings: Vec::new(),
        carry: String::new(),
        record_payload: None,
        http_target: None,
        record_target: None,
        envelope_masked: 0,
        status: None,
        identity: None,
        credential: up.credential.clone(),
        exchanged: None,
        policy: cfg.policy.clone(),
        policy_masks: Vec::new(),
        decision: None,
        decided_input: None,
        message_findings_from: 0,
        in_batch: false,
        hold: None,
        stage: None,
        listing_paged: None,
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
    // The session id an agent holds is the gateway's (`session::Ids`): it opens only for the
    // caller that opened the session, on its route, and names the upstream's id, which is what
    // goes upstream. Checked by key, it holds on every gateway of the deployment: a session
    // opened on another gateway, or before a restart, continues here under its own id.
    let mut upstream_sid_at = None;
    if route.kind == RouteKind::Mcp {
        if let Some(held) = ctx.mcp_session_id.take() {
            let caller = ctx.identity.as_ref().map(|i| i.subject.as_str());
            match cfg.sessions.ids.open(&route.name, caller, &held) {
                Ok((gid, usid)) => {
                    upstream_sid_at = head.headers().position(|(n, _)| n.eq_ignore_ascii_case("mcp-session-id"));
                    ctx.gateway_session_id = Some(gid.to_owned());
                    ctx.mcp_session_id = Some(usid.to_owned());
                }
                Err(why) => {
                    let owner = match why {
                        crate::session::Unopened::Foreign { upstream } => w.shared.sessions.with(upstream, |s| s.owner.clone()).flatten(),
                        crate::session::Unopened::Malformed => None,
                    };
                    match owner.filter(|o| Some(o.as_str()) != caller) {
                        Some(owner) => tracing::warn!(worker = w.id, route = %route.name, caller = caller.unwrap_or("-"), owner = %owner, "a session was presented by another caller than the one that opened it; refused"),
                        None => tracing::info!(worker = w.id, route = %route.name, caller = caller.unwrap_or("-"), problem = ?why, "a session id this gateway did not hand out to this caller on this route (another caller's, another key's, or altered); refused"),
                    }
                    let e = ProxyError::ForeignSession;
                    w.record_refusal(Some(&ctx), Some(&route.label), client, &e);
                    return Err(e);
                }
            }
        }
    }
    // A legacy HTTP+SSE post names its session in the query (see `legacy_endpoint`).
    let mut legacy_post = false;
    if ctx.mcp_session_id.is_none() && route.kind == RouteKind::Mcp {
        if let Some(sid) = legacy_session_id(head.target()).filter(|sid| w.shared.sessions.with(sid, |_| ()).is_some()) {
            ctx.mcp_session_id = Some(sid.to_owned());
            legacy_post = true;
        }
    }
    // MCP 2026-07-28 has no sessions: every request stands alone. What the gateway keeps per
    // session — the policy's `session` facts, the record's `session` that audits and chain
    // rules follow — would be lost, so a caller's stateless requests on a route are one
    // session of the gateway's, until `sessions.idle_timeout` passes without one. It is keyed
    // by the authenticated caller alone: nothing the client says (its `clientInfo`) can start
    // a fresh one and shed what the policy knows.
    if ctx.mcp_session_id.is_none() && route.kind == RouteKind::Mcp && ctx.protocol_version.as_deref().is_some_and(is_stateless_version) {
        let caller = ctx.identity.as_ref().map(|i| i.subject.clone());
        let key = Session::caller_key(&route.name, caller.as_deref());
        let (gid, made) = w.shared.sessions.get_or_insert(&key, cfg.sessions.max_sessions, || {
            let mut s = Session::new(&key, &route.name);
            s.owner = caller.clone();
            s.stateless = true;
            s.protocol_version = ctx.protocol_version.clone();
            s
        });
        ctx.stateless = true;
        ctx.mcp_session_id = Some(key);
        ctx.gateway_session_id = Some(gid);
        if made {
            tracing::info!(worker = w.id, route = %route.name, caller = caller.as_deref().unwrap_or("-"), gateway_session = ctx.gateway_session_id.as_deref().unwrap_or(""), "session started (the caller's stateless requests, MCP 2026-07-28)");
            if let (Some(em), Some(gid)) = (&w.emitter, ctx.gateway_session_id.as_deref()) {
                crate::events::record::session_event(em, &ctx, sluice_schema::Kind::SessionStart, gid, None);
            }
        }
    }
    // A legacy HTTP+SSE stream (a GET naming no session) opens a session once the upstream
    // names its endpoint: the caller's share is checked before the upstream makes one, as for
    // `initialize`.
    if ctx.mcp_session_id.is_none() && route.kind == RouteKind::Mcp && head.method() == "GET" {
        if let Err(e) = within_session_share(w, cfg, &ctx) {
            w.record_refusal(Some(&ctx), Some(&route.label), client, &e);
            return Err(e);
        }
    }
    // The gateway's session id keys every event of the session (Kafka partition, order). A
    // session belongs to the caller that opened it: another caller presenting its id (learned
    // from a log, a proxy, a shared machine) would continue its upstream state and write into
    // its record, so it is answered as if the session did not exist.
    if let Some(sid) = ctx.mcp_session_id.as_deref() {
        let caller = ctx.identity.as_ref().map(|i| i.subject.as_str());
        match w.shared.sessions.with(sid, |s| (s.gateway_id.clone(), s.owner.clone())) {
            Some((gid, owner)) => {
                // Ids are checked by key above; a legacy session (named in the query) by owner.
                let other_gateway_id = ctx.gateway_session_id.as_deref().is_some_and(|g| g != gid);
                if other_gateway_id || owner.as_deref().is_some_and(|o| Some(o) != caller) {
                    tracing::warn!(worker = w.id, route = %route.name, caller = caller.unwrap_or("-"), owner = owner.as_deref().unwrap_or("-"), gateway_session = %gid, "a session was presented by another caller than the one that opened it; refused");
                    let e = ProxyError::ForeignSession;
                    w.record_refusal(Some(&ctx), Some(&route.label), client, &e);
                    return Err(e);
                }
                ctx.gateway_session_id = Some(gid);
            }
            None => {
                if let Some(gid) = ctx.gateway_session_id.as_deref() {
                    // Opened on another gateway or before a restart: this gateway takes it up
                    // under the same id (its events stay one session in the record) — within
                    // the caller's share here, as a new one would be.
                    if let Err(e) = within_session_share(w, cfg, &ctx) {
                        w.record_refusal(Some(&ctx), Some(&route.label), client, &e);
                        return Err(e);
                    }
                    let mut s = Session::new(sid, &route.name);
                    s.gateway_id = gid.to_owned();
                    s.owner = caller.map(str::to_owned);
                    tracing::info!(worker = w.id, route = %route.name, mcp_session = sid, gateway_session = gid, "session continued here (opened on another gateway or before a restart)");
                    w.shared.sessions.insert(s, cfg.sessions.max_sessions);
                }
            }
        }
    }
    let mut track = Track { legacy_post, cors, protocol_version: head.header("mcp-protocol-version"), ..Track::default() };
    let keep_alive = head.keep_alive() && !w.draining();

    // The URL below the route's prefix carries arguments too: the hooks see it first.
    let mut target: Option<String> = None;
    let prefix = &path[..route.path.len().min(path.len())];
    let below = &head.target()[prefix.len()..];
    let plain = route.kind != RouteKind::Mcp;
    let mut refused = None;
    if !below.is_empty() {
        let mut t = below.to_owned();
        let from = ctx.findings.len();
        let verdict = w.chain.run_target(&mut ctx, &mut t);
        // The record shows the URL as forwarded, and with every finding masked where
        // detection only logged or refused.
        if plain {
            ctx.http_target = Some(format!("{prefix}{}", ctx.record_target.take().as_deref().unwrap_or(if verdict == Verdict::Changed { &t } else { below })));
        }
        w.chain.observe_outside(&mut ctx, Direction::Request, &verdict, from);
        match verdict {
            Verdict::Pass => {}
            Verdict::Changed => {
                ctx.path = format!("{prefix}{}", t.split_once('?').map_or(t.as_str(), |(p, _)| p));
                target = Some(t);
            }
            refusal => refused = Some(refusal),
        }
    }
    if plain && ctx.http_target.is_none() {
        ctx.http_target = Some(head.target().to_owned());
    }
    // The headers the upstream reads carry data too (credentials and framing aside).
    let strip_credentials = cfg.identity.is_some() || up.credential.is_some();
    let rewrite_host = route.rewrite_host || head.header("host").is_none();
    let mut header_edits = Vec::new();
    if refused.is_none() && !w.chain.is_empty() {
        match inspect_headers(w, &mut ctx, head, up, !plain && head.method() == "POST", rewrite_host, strip_credentials, upstream_sid_at) {
            Ok(edits) => header_edits = edits,
            Err(refusal) => refused = Some(refusal),
        }
    }
    if let (Some(at), Some(usid)) = (upstream_sid_at, ctx.mcp_session_id.as_deref()) {
        header_edits.push((at, usid.to_owned()));
        header_edits.sort_by_key(|(i, _)| *i);
    }
    if let Some(Verdict::Refuse { code, message, reason }) = refused {
        let b = jsonrpc::error_body(None, code, &message, &reason);
        respond::send(down, 403, "application/json", &b, keep_alive, &[], cors).await.map_err(|_| ProxyError::ClientTimeout)?;
        finish(w, cfg, route, &ctx, Some(&track), 403);
        return Ok(keep_alive);
    }

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
    // An answer the gateway cannot frame or inspect is answered (by id) and recorded in its
    // place. So is an upstream refusing the gateway's own credential: the agent can do nothing
    // about it (and must not be sent after the upstream's authorization server); a token is
    // renewed at once.
    let refused_credential = up.credential.as_ref().filter(|_| status == 401).map(|cred| {
        // A caller's exchanged token is asked for again on its next call.
        if let (Some(x), Some(b)) = (cred.exchanger(), bearer(head)) {
            x.forget(b);
        }
        ProxyError::UpstreamRefusedCredential { upstream: up.name.clone(), renewing: cred.token().inspect(|t| t.request_refresh()).is_some() || cred.exchanger().is_some() }
    });
    let protocol = |reason: String| ProxyError::UpstreamProtocol { upstream: up.name.clone(), reason };
    let unusable = match (refused_credential, response_body_kind(&c.head, method)) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(protocol(e.to_string())),
        // The gateway asks for identity; a compressed answer it would inspect is not forwarded.
        (None, Ok(kind)) => match encoding(&c.head).filter(|_| kind != BodyKind::None && (route.kind == RouteKind::Mcp || media(c.head.header("content-type")) != Media::Other)) {
            Some(e) => Err(protocol(format!("answered with Content-Encoding: {e} although the gateway asked for identity; the gateway does not forward what it cannot inspect"))),
            None => answer_type_problem(&c.head, kind, route.kind).map_or(Ok(kind), |r| Err(protocol(r))),
        },
    };
    let kind = match unusable {
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

/// A plain JSON document (plain HTTP routes) as a one-element body for the hooks.
fn document(buf: &mut [u8]) -> Result<jsonrpc::Body<'_>, jsonrpc::BodyError> {
    let v = jsonrpc::read_value(buf)?;
    Ok(jsonrpc::Body { batch: false, values: vec![v], infos: vec![jsonrpc::MessageInfo::document()] })
}

fn starts_with_ci(v: &[u8], prefix: &[u8]) -> bool {
    v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Parse the request body (MCP: JSON-RPC; HTTP: a JSON document), observe it and run the hooks.
/// `Ok(None)`: nothing to inspect (no body, or not JSON on a plain route).
fn request_phase(w: &Worker, cfg: &Config, ctx: &mut RequestCtx, route: &Route, head: &Head, body: &[u8], track: &mut Track<'_>) -> Result<Option<Outcome>, ProxyError> {
    let is_mcp = route.kind == RouteKind::Mcp;
    // A compressed body cannot be read; one the gateway would inspect is refused.
    let encoded = || encoding(head).map(|e| ProxyError::Encoded(e.to_owned()));
    if is_mcp && head.method() == "POST" {
        if body.is_empty() {
            return Err(ProxyError::EmptyBody);
        }
        if let Some(e) = encoded() {
            return Err(e);
        }
        return with_scratch(w, body, |buf| {
            let mut parsed = jsonrpc::parse(buf)?;
            reused_request_id(w, ctx, &parsed)?;
            observe(w, ctx, route, Direction::Request, &mut parsed, Some(track));
            if !parsed.batch {
                track.reply_id = parsed.infos[0].id.clone();
            }
            if track.init.is_some() && ctx.gateway_session_id.is_none() {
                within_session_share(w, cfg, ctx)?;
                // `initialize` opens a session: its id exists before the first event.
                ctx.gateway_session_id = Some(crate::ids::new_id());
            }
            // The standard headers (2026-07-28) must repeat the body as sent, and are written
            // again from it once the hooks have masked it.
            let mirrors = jsonrpc::mirror::check(head.headers(), &parsed).map_err(ProxyError::HeaderMismatch)?;
            let outcome = hooks::process_body(&w.chain, ctx, Direction::Request, &mut parsed);
            if let (Outcome::Rewritten { .. }, false, Some(msg)) = (&outcome, mirrors.is_empty(), parsed.values.first()) {
                track.mirror_edits = jsonrpc::mirror::rewrite(&mirrors, msg);
            }
            Ok(Some(outcome))
        });
    }
    if is_mcp || body.is_empty() || w.chain.is_empty() {
        return Ok(None);
    }
    let m = media(head.header("content-type"));
    if let (true, Some(e)) = (m != Media::Other, encoded()) {
        return Err(e);
    }
    match m {
        Media::Json => with_scratch(w, body, |buf| match document(buf) {
            Ok(mut doc) => Ok(Some(hooks::process_body(&w.chain, ctx, Direction::Request, &mut doc))),
            Err(e) => Err(ProxyError::JsonRpc(e)),
        }),
        m @ (Media::Form | Media::Text) => text_document(w, ctx, m, head, body).map(Some),
        Media::Multipart => multipart_document(w, ctx, head, body),
        Media::Other => Ok(None),
    }
}

/// The body's `Content-Encoding`, unless none or `identity`.
fn encoding(head: &Head) -> Option<&str> {
    head.header_str("content-encoding").map(str::trim).filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
}

/// A `multipart/form-data` request body on a plain route passes the hooks as its text parts
/// (see [`crate::detect::multipart`]) and, when a hook changed them, is written back with only
/// those bytes replaced. A form that cannot be split is refused: it could not be inspected.
fn multipart_document(w: &Worker, ctx: &mut RequestCtx, head: &Head, body: &[u8]) -> Result<Option<Outcome>, ProxyError> {
    use crate::detect::multipart::{boundary, Multipart};
    let ctype = head.header_str("content-type").unwrap_or("");
    let form = boundary(ctype)
        .ok_or_else(|| "its Content-Type names no boundary".to_owned())
        .and_then(|b| Multipart::parse(body, b))
        .map_err(|why| ProxyError::Uninspectable(format!("the multipart/form-data body cannot be read ({why})")))?;
    if form.is_empty() {
        return Ok(None);
    }
    document_through_hooks(w, ctx, form.value(), |v| Ok(form.rebuild(v))).map(Some)
}

/// A non-JSON request body, as the `value` the hooks read, through the chain as a plain
/// document; when a hook changed it, `write` turns the changed value back into the body's own
/// format.
fn document_through_hooks<'v>(
    w: &Worker,
    ctx: &mut RequestCtx,
    value: simd_json::BorrowedValue<'v>,
    write: impl FnOnce(&simd_json::BorrowedValue<'v>) -> Result<Vec<u8>, ProxyError>,
) -> Result<Outcome, ProxyError> {
    let mut doc = jsonrpc::Body { batch: false, values: vec![value], infos: vec![jsonrpc::MessageInfo::document()] };
    Ok(match hooks::process_body(&w.chain, ctx, Direction::Request, &mut doc) {
        Outcome::Rewritten { answers, .. } => match doc.values.first() {
            Some(v) => Outcome::Rewritten { body: write(v)?, answers },
            None => return Err(ProxyError::Uninspectable("the inspected body could not be written back".into())),
        },
        o => o,
    })
}

/// What a body's `Content-Type` makes it for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    /// `application/json`, `application/*+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `text/*`, `application/xml`, `*/*+xml`.
    Text,
    /// `multipart/form-data`.
    Multipart,
    /// Anything else (binary): not inspected.
    Other,
}

/// Why an upstream answer's type would let it past inspection, if it would: more than one
/// `Content-Type` (clients differ on which counts — fetch joins them, so the TypeScript SDK
/// finds `application/json` in `application/octet-stream, application/json` and parses a body
/// the gateway passed as binary), or, on an MCP route, a typed body that is neither JSON, an SSE
/// stream, nor — where no client reads JSON-RPC from it — a 202's body or an error's text (which
/// the gateway scans): a `text/plain; x=application/json` tool listing would reach the
/// TypeScript SDK unfiltered and unpinned.
fn answer_type_problem(head: &Head, kind: BodyKind, route: RouteKind) -> Option<String> {
    let n = head.header_count("content-type");
    if n > 1 {
        return Some(format!("answered with {n} Content-Type headers, which clients read differently; the gateway does not forward it"));
    }
    if route != RouteKind::Mcp || kind == BodyKind::None {
        return None;
    }
    let ctype = head.header("content-type");
    let media_type = ctype.map(essence);
    let m = media(ctype);
    // No client reads a 202's body (the Python SDK's legacy transport sends "Accepted" with
    // no type), nor JSON-RPC from an error's text.
    let unread = head.status == 202 || (m == Media::Text && head.status >= 400);
    // An untyped body (the TypeScript SDK's 200 to a DELETE, chunked and empty) is scanned as
    // text (`relay_plain`); the SDKs refuse to read JSON-RPC from it.
    if m == Media::Json || media_type.is_some_and(|e| e.eq_ignore_ascii_case(b"text/event-stream")) || unread || ctype.is_none() {
        return None;
    }
    // Named when it looks like a media type (it is the upstream's text, shown to the agent).
    let shown = match media_type {
        None | Some(b"") => "no media type".to_owned(),
        Some(e) if e.len() <= 64 && e.iter().all(|b| b.is_ascii_alphanumeric() || b"/+.-_".contains(b)) => format!("Content-Type {}", String::from_utf8_lossy(e)),
        Some(_) => "an unusual Content-Type".to_owned(),
    };
    Some(format!("answered an MCP request (status {}) with a body of {shown}, neither JSON nor an SSE stream; the gateway does not forward what a client could read as JSON-RPC uninspected", head.status))
}

/// A media type without its parameters (`application/json; charset=utf-8` → `application/json`).
fn essence(ctype: &[u8]) -> &[u8] {
    ctype.split(|b| *b == b';').next().unwrap_or(b"").trim_ascii()
}

fn media(ctype: Option<&[u8]>) -> Media {
    let Some(c) = ctype else {
        return Media::Other;
    };
    let essence = essence(c);
    let ends_ci = |suffix: &[u8]| essence.len() >= suffix.len() && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    if essence.eq_ignore_ascii_case(b"application/json") || ends_ci(b"+json") {
        Media::Json
    } else if essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        Media::Form
    } else if starts_with_ci(essence, b"text/") || essence.eq_ignore_ascii_case(b"application/xml") || ends_ci(b"+xml") {
        Media::Text
    } else if essence.eq_ignore_ascii_case(b"multipart/form-data") {
        Media::Multipart
    } else {
        Media::Other
    }
}

/// A form or text request body on a plain route passes the hooks as a document — a form as its
/// parameters (`[{"name": "value"}, …]`, percent-decoded), text as one string — and, when a
/// hook changed it, is written back in its own format (a form re-encoding only the changed
/// parts). Text that is not UTF-8 is refused: it could not be inspected.
fn text_document(w: &Worker, ctx: &mut RequestCtx, m: Media, head: &Head, body: &[u8]) -> Result<Outcome, ProxyError> {
    let text = std::str::from_utf8(body).map_err(|_| ProxyError::NotUtf8(head.header_str("content-type").unwrap_or("text").to_owned()))?;
    // Counted before the form is split (splitting a huge one is what the cap is against).
    let params = if m == Media::Form { memchr::memchr_iter(b'&', body).count() + 1 } else { 0 };
    if params > crate::detect::multipart::MAX_PARTS {
        return Err(ProxyError::Uninspectable(format!("the form has {params} parameters, more than the {} the gateway inspects", crate::detect::multipart::MAX_PARTS)));
    }
    let form = (m == Media::Form).then(|| crate::detect::url::Target::form(text));
    let value = match &form {
        Some(f) => f.params_value(),
        None => simd_json::BorrowedValue::String(std::borrow::Cow::Borrowed(text)),
    };
    document_through_hooks(w, ctx, value, |v| match (&form, v) {
        (Some(f), v) => Ok(f.rebuild_form(v).into_bytes()),
        (None, simd_json::BorrowedValue::String(s)) => Ok(s.as_bytes().to_vec()),
        // A hook turned the text into something else: nothing faithful to forward.
        (None, _) => Err(ProxyError::Uninspectable("the inspected text body could not be written back".into())),
    })
}

/// The policy's decision on a plain HTTP request without a JSON body: `Some(error body)` when
/// refused (the decision is recorded either way).
fn plain_decision(w: &Worker, ctx: &mut RequestCtx) -> Option<Vec<u8>> {
    let p = ctx.policy.clone()?;
    let mut f = crate::policy::Facts::new("");
    f.identity = ctx.identity.as_ref();
    f.route = &ctx.route;
    f.upstream = &ctx.upstream;
    f.http_method = &ctx.http_method;
    f.path = &ctx.path;
    // What detection found in the URL.
    f.request = crate::policy::FindingFacts { all: &ctx.findings, direction: Direction::Request };
    let d = p.decide(&f, None);
    w.metrics.decision(&ctx.route, "request", d.outcome.name(), d.rule.as_deref().unwrap_or("default"));
    let refusal = match &d.outcome {
        crate::policy::Outcome::Allow => None,
        crate::policy::Outcome::Deny { reason } => Some(jsonrpc::error_body(None, jsonrpc::Code::PolicyDenied, "denied by policy", reason)),
        crate::policy::Outcome::RateLimited { retry_after } => Some(jsonrpc::error_body(
            None,
            jsonrpc::Code::RateLimited,
            "rate limited",
            &format!("too many calls: policy rule \"{}\" limits them; retry in {:.1} s", d.rule.as_deref().unwrap_or(""), retry_after.as_secs_f64().max(0.1)),
        )),
        crate::policy::Outcome::RequireApproval { .. } => Some(jsonrpc::error_body(
            None,
            jsonrpc::Code::ApprovalRequired,
            "approval required",
            "this request needs a human's approval, which plain HTTP routes cannot wait for; ask an operator",
        )),
    };
    if let Some(em) = &w.emitter {
        let mut e = crate::events::record::base(ctx, &em.recorder().instance, sluice_schema::event::Kind::Decision);
        let reason = refusal.as_ref().map(|_| match &d.outcome {
            crate::policy::Outcome::Deny { reason } => reason.clone(),
            o => o.name().to_owned(),
        });
        e.decision = Some(sluice_schema::event::Decision {
            action: std::borrow::Cow::Borrowed(d.outcome.name()),
            stage: std::borrow::Cow::Borrowed("policy"),
            rule: Some(std::borrow::Cow::Borrowed(d.rule.as_deref().unwrap_or("default"))),
            reason: reason.map(std::borrow::Cow::Owned),
        });
        em.emit(&e);
    }
    // A path detection found something in is not logged (under `log` it was forwarded as is).
    let path = if ctx.findings.iter().any(|f| f.path.starts_with("/url/path/")) { crate::detect::hook::REDACTED } else { ctx.path.as_str() };
    tracing::debug!(route = %ctx.route, method = %ctx.http_method, path, decision = %d.label(), "policy");
    refusal
}

/// Count and correlate the messages of one body; keep the session record current.
/// A request id used twice in a batch, or again while the session still awaits the answer to
/// it, is refused: answers are paired with their requests by id, and a second request under
/// the same id would have the answer to one read as the other's — a `tools/list` answer taken
/// for a `tools/call` result escapes the policy's filtering of the listing (the MCP base
/// protocol: an id "MUST NOT have been previously used by the requestor within the same
/// session").
pub(crate) fn reused_request_id(w: &Worker, ctx: &RequestCtx, body: &jsonrpc::Body<'_>) -> Result<(), ProxyError> {
    let ids = || body.infos.iter().enumerate().filter(|(_, i)| i.kind == Kind::Request).filter_map(|(n, i)| Some((n, i.id.as_deref()?)));
    let index = |n: usize| body.batch.then_some(n);
    if body.batch {
        // Sorted, so that a batch of many requests costs n log n, not n².
        let mut seen: Vec<(&str, usize)> = ids().map(|(n, id)| (id, n)).collect();
        seen.sort_unstable();
        if let Some(pair) = seen.windows(2).filter(|p| p[0].0 == p[1].0).min_by_key(|p| p[1].1) {
            return Err(ProxyError::JsonRpc(jsonrpc::BodyError::Invalid { index: index(pair[1].1), reason: "the batch uses this request id twice; give each request its own id" }));
        }
    }
    // Stateless requests (MCP 2026-07-28) are answered on their own exchange: ids need not
    // differ across them (two agent processes of one caller both start at 1).
    let Some(sid) = ctx.mcp_session_id.as_deref().filter(|_| !ctx.stateless) else { return Ok(()) };
    let pending = w.shared.sessions.with(sid, |s| ids().find(|(_, id)| s.pending_client.contains_key(*id)).map(|(n, _)| n)).flatten();
    match pending {
        Some(n) => Err(ProxyError::JsonRpc(jsonrpc::BodyError::Invalid {
            index: index(n),
            reason: "a request with this id still awaits its answer in this session; use a new id for each request",
        })),
        None => Ok(()),
    }
}

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

/// Session bookkeeping on the response head: a new session on `initialize`, release on DELETE
/// or on the upstream's 404 for a session it no longer knows.
fn after_response_head(w: &Worker, cfg: &Config, route: &Route, ctx: &mut RequestCtx, track: &mut Track<'_>, head: &Head, method: &str) {
    let sessions = &w.shared.sessions;
    let status = head.status;
    let init = track.init.take();
    if let (Some(init), None, Some(sid)) = (&init, head.header_str("mcp-session-id"), ctx.mcp_session_id.as_deref()) {
        // A legacy HTTP+SSE session (opened by its stream) learns who the client is.
        sessions.with(sid, |s| {
            s.client_info = init.get("clientInfo").cloned();
            s.client_capabilities = init.get("capabilities").cloned();
            s.protocol_version = init.get("protocolVersion").and_then(|v| v.as_str()).map(str::to_owned);
        });
    }
    if let (Some(init), Some(new_sid)) = (init, head.header_str("mcp-session-id")) {
        if (200..300).contains(&status) {
            let mut s = Session::new(new_sid, &route.name);
            s.owner = ctx.identity.as_ref().map(|i| i.subject.clone());
            if let Some(g) = &ctx.gateway_session_id {
                s.gateway_id = g.clone();
            }
            s.client_info = init.get("clientInfo").cloned();
            s.client_capabilities = init.get("capabilities").cloned();
            s.protocol_version = init.get("protocolVersion").and_then(|v| v.as_str()).map(str::to_owned);
            s.messages_in = 1;
            ctx.gateway_session_id = Some(s.gateway_id.clone());
            tracing::info!(worker = w.id, route = %route.name, mcp_session = new_sid, gateway_session = %s.gateway_id, "session started");
            sessions.insert(s, cfg.sessions.max_sessions);
            ctx.mcp_session_id = Some(new_sid.to_owned());
            if let (Some(em), Some(gid)) = (&w.emitter, ctx.gateway_session_id.as_deref()) {
                crate::events::record::session_event(em, ctx, sluice_schema::Kind::SessionStart, gid, None);
            }
        }
        return;
    }
    let Some(sid) = ctx.mcp_session_id.as_deref() else {
        return;
    };
    // (A stateless session is the gateway's: no upstream answer ends it.)
    if !ctx.stateless && ((method == "DELETE" && (200..300).contains(&status)) || status == 404) {
        let why = if status == 404 { "upstream no longer knows the session (404)" } else { "DELETE" };
        if let Some(gid) = end_session(w, ctx, route, sid, why) {
            ctx.gateway_session_id = Some(gid);
        }
    } else if let Some(gid) = sessions.with(sid, |s| s.gateway_id.clone()) {
        ctx.gateway_session_id = Some(gid);
    }
}

/// The session id the agent gets for the one the upstream names in its answer: the gateway's
/// (see `handle`), bound to the route and the caller.
/// `held`: the id the request carried, when it opened. Servers that repeat their session id on
/// every answer get it back as it came (the same caller, route and ids: minting it again would
/// hash the same tag).
fn session_token(cfg: &Config, route: &Route, ctx: &mut RequestCtx, head: &Head, held: Option<&str>) -> Option<String> {
    let usid = head.header_str("mcp-session-id").filter(|_| route.kind == RouteKind::Mcp)?;
    if let Some(h) = held.filter(|_| ctx.mcp_session_id.as_deref() == Some(usid)) {
        return Some(h.to_owned());
    }
    let gid = ctx.gateway_session_id.get_or_insert_with(crate::ids::new_id);
    Some(cfg.sessions.ids.mint(&route.name, ctx.identity.as_ref().map(|i| i.subject.as_str()), gid, usid))
}

/// Does this `MCP-Protocol-Version` name a revision without sessions (2026-07-28 and later)?
fn is_stateless_version(v: &str) -> bool {
    // Revisions are dates: they compare as text.
    v.len() == 10 && v.as_bytes()[4] == b'-' && v >= "2026-07-28"
}

/// Forget a session and record its end; its gateway id, when it was known.
fn end_session(w: &Worker, ctx: &RequestCtx, route: &Route, sid: &str, why: &str) -> Option<String> {
    let s = w.shared.sessions.remove(sid)?;
    tracing::info!(worker = w.id, route = %route.name, mcp_session = sid, gateway_session = %s.gateway_id, why, "session ended");
    if let Some(em) = &w.emitter {
        crate::events::record::session_event(em, ctx, sluice_schema::Kind::SessionEnd, &s.gateway_id, Some(why));
    }
    Some(s.gateway_id)
}

/// What the hooks changed in the request head, and how its headers are passed on.
struct Forward<'a> {
    /// The path below the route's prefix and the query, when the hooks rewrote them.
    target: Option<&'a str>,
    /// Header values the hooks rewrote, by position in the head (ascending).
    headers: &'a [(usize, String)],
    /// Headers left out, by position (a standard header whose argument masking renamed).
    dropped: &'a [usize],
    /// The upstream's authority replaces the agent's `Host`.
    rewrite_host: bool,
    /// The agent's credentials (meant for the gateway, or replaced by the upstream's own) are
    /// not passed through.
    strip_credentials: bool,
    /// The agent's address and whether it came over TLS (the forwarding headers).
    client: SocketAddr,
    tls: bool,
    /// The upstream's credential as it stands for this request.
    credential: Option<&'a [u8]>,
    /// The caller and the gateway session, told to an upstream with `forward_identity = "headers"`.
    who: Option<(&'a crate::identity::Identity, Option<&'a str>)>,
    /// The signed assertion for one with `forward_identity = "token"`.
    assertion: Option<&'a str>,
}

/// Headers the gateway does not pass on as the agent sent them: forwarding headers (it writes
/// its own), `Host` when it names the upstream, the agent's credentials when they are not for
/// the upstream, the upstream credential's header (it injects the value), `Accept-Encoding`,
/// and `Origin`: the gateway checked it and answers for CORS (`cors`); an upstream checking it
/// again against its own list would refuse the web clients the gateway serves.
fn replaced_header(n: &str, rewrite_host: bool, strip_credentials: bool, up: &Upstream) -> bool {
    n.eq_ignore_ascii_case("origin")
        || n.eq_ignore_ascii_case("x-forwarded-for")
        || n.eq_ignore_ascii_case("x-forwarded-proto")
        || n.eq_ignore_ascii_case("forwarded")
        || (rewrite_host && n.eq_ignore_ascii_case("host"))
        || (strip_credentials && (n.eq_ignore_ascii_case("authorization") || n.eq_ignore_ascii_case("x-api-key")))
        || up.credential.as_ref().is_some_and(|c| n.eq_ignore_ascii_case(&c.header))
        || n.eq_ignore_ascii_case("accept-encoding")
        || n.get(..crate::identity::forward::PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(crate::identity::forward::PREFIX))
}

/// Headers that are never inspected even when passed on: credentials (secrets by design),
/// the routing and framing headers the gateway itself reads.
const UNINSPECTED_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "x-api-key", "host", "content-length"];

/// The request headers the upstream will read as the agent sent them, through the hooks
/// ([`hooks::MessageHook::on_headers`]); `Ok`: the values to write instead (by position in the
/// head), `Err`: the refusal.
/// `session_at`: the session id header the gateway opened (it writes the upstream's id there).
#[allow(clippy::too_many_arguments)]
fn inspect_headers(w: &Worker, ctx: &mut RequestCtx, head: &Head, up: &Upstream, mcp_post: bool, rewrite_host: bool, strip_credentials: bool, session_at: Option<usize>) -> Result<Vec<(usize, String)>, Verdict> {
    let conn = head.header("connection").unwrap_or(b"");
    let mut at = Vec::new();
    let mut pairs: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> = Vec::new();
    for (i, (n, v)) in head.headers().enumerate() {
        // On an MCP route's POST the standard headers repeat the body, which is inspected in
        // their place (`jsonrpc::mirror`: checked equal to it, written again from it masked).
        // On any other request they repeat nothing, and are inspected as sent.
        if Some(i) == session_at || crate::http::is_hop_by_hop(n, conn) || replaced_header(n, rewrite_host, strip_credentials, up) || UNINSPECTED_HEADERS.iter().any(|u| u.eq_ignore_ascii_case(n)) || (mcp_post && jsonrpc::mirror::is_mirror_header(n)) {
            continue;
        }
        at.push((i, v));
        pairs.push((n.into(), String::from_utf8_lossy(v)));
    }
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    match w.chain.run_headers(ctx, Direction::Request, &mut pairs) {
        Verdict::Pass => Ok(Vec::new()),
        // Only the values a hook changed are rewritten (compared as the hooks read them: a value
        // that is not UTF-8 and was not masked goes on byte for byte). A mask never ends a
        // header line early (a placeholder is configuration, not trusted to be one line).
        Verdict::Changed => Ok(at.into_iter().zip(pairs).filter(|((_, old), (_, new))| *new != String::from_utf8_lossy(old)).map(|((i, _), (_, new))| (i, new.replace(['\r', '\n', '\0'], " "))).collect()),
        refusal => Err(refusal),
    }
}

/// What an upstream with `forward_identity` hears of the caller: the caller and session for
/// `headers`, the signed assertion for `token`.
type Caller<'a> = (Option<(&'a crate::identity::Identity, Option<&'a str>)>, Option<std::rc::Rc<str>>);

fn caller_for<'a>(w: &Worker, up: &Upstream, ctx: &'a RequestCtx) -> Caller<'a> {
    use crate::identity::forward::Forwarding;
    let session = ctx.gateway_session_id.as_deref();
    match (&up.forward_identity, &ctx.identity) {
        (Some(Forwarding::Headers), Some(who)) => (Some((who, session)), None),
        (Some(Forwarding::Token { signer, audience }), Some(who)) => (None, Some(w.assertions.borrow_mut().assertion(signer, audience, who, session))),
        _ => (None, None),
    }
}

/// The gateway's own headers on a request upstream: the upstream's credential and what it
/// hears of the caller.
fn gateway_headers(out: &mut Vec<u8>, up: &Upstream, credential: Option<&[u8]>, who: Option<(&crate::identity::Identity, Option<&str>)>, assertion: Option<&str>) {
    if let (Some(c), Some(v)) = (&up.credential, credential) {
        write::header(out, &c.header, v);
    }
    // Who the caller is, where the upstream asked for it (the agent's own `X-Sluice-*` are gone).
    if let Some((who, session)) = who {
        crate::identity::forward::write_headers(out, who, session);
    }
    if let Some(a) = assertion {
        write::header(out, "x-sluice-identity", a.as_bytes());
    }
}

/// Answers the gateway gives the upstream in the agent's place: errors for the server's own
/// requests a stage refused on their way to the agent (policy `from = "server"` rules,
/// detection's block), posted on the session as the agent would post them, so the server is
/// not left waiting for an answer that will never come.
async fn answer_server(w: &Worker, cfg: &Config, route: &Route, ctx: &RequestCtx, track: &mut Track<'_>) {
    let answers = std::mem::take(&mut track.to_server);
    let up = &cfg.upstreams[route.upstream];
    // Streamable HTTP: the MCP endpoint the stream came from; legacy HTTP+SSE: the message
    // endpoint the stream named.
    let target = match (&track.legacy_session, &track.legacy_target) {
        (Some(_), Some(t)) => t.clone(),
        (Some(_), None) => return,
        (None, _) => {
            let below = ctx.path.get(route.path.len()..).unwrap_or("");
            let t = format!("{}{below}", route.upstream_path);
            if t.is_empty() { "/".to_owned() } else { t }
        }
    };
    let credential = ctx.upstream_credential();
    let (who, assertion) = caller_for(w, up, ctx);
    for a in answers {
        let mut req = Vec::with_capacity(512 + a.len());
        req.extend_from_slice(b"POST ");
        req.extend_from_slice(target.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\n");
        write::header(&mut req, "host", up.authority.as_bytes());
        write::header(&mut req, "content-type", b"application/json");
        write::header(&mut req, "accept", b"application/json, text/event-stream");
        write::header(&mut req, "accept-encoding", b"identity");
        if let Some(sid) = ctx.mcp_session_id.as_deref().filter(|_| track.legacy_session.is_none()) {
            write::header(&mut req, "mcp-session-id", sid.as_bytes());
        }
        if let Some(v) = track.protocol_version {
            write::header(&mut req, "mcp-protocol-version", v);
        }
        gateway_headers(&mut req, up, credential.as_ref().and_then(|l| l.value.as_deref()), who, assertion.as_deref());
        write::content_length(&mut req, a.len());
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(&a);
        match upstream::send(w, up, &req, up.connect_timeout, up.first_byte_timeout, cfg.limits.max_head_bytes).await {
            Ok(c) if (200..300).contains(&c.head.status) => tracing::info!(worker = w.id, route = %route.name, upstream = %up.name, "the server's refused request answered with an error in the agent's place"),
            Ok(c) => tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name, status = c.head.status, "the upstream did not take the gateway's answer to its refused request"),
            Err(e) => tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name, error = %e, "cannot answer the server's refused request"),
        }
    }
}

/// The upstream request: the head as the agent sent it, with what [`Forward`] says.
fn encode_request(out: &mut Vec<u8>, head: &Head, route: &Route, up: &Upstream, fwd: &Forward<'_>, body: &[u8]) {
    let path = head.path();
    let below = fwd.target.unwrap_or(&head.target()[route.path.len().min(path.len())..]);
    out.extend_from_slice(head.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(route.upstream_path.as_bytes());
    if (below.is_empty() || below.starts_with('?')) && route.upstream_path.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(below.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write::end_to_end_headers(out, head, |i, n| replaced_header(n, fwd.rewrite_host, fwd.strip_credentials, up) || fwd.dropped.contains(&i), fwd.headers);
    // Answers must come readable: compressed ones could not be inspected.
    write::header(out, "accept-encoding", b"identity");
    // The upstream's own credential: agents never hold it.
    gateway_headers(out, up, fwd.credential, fwd.who, fwd.assertion);
    if fwd.rewrite_host {
        write::header(out, "host", up.authority.as_bytes());
    }
    write::forwarding_headers(out, head, fwd.client.ip(), fwd.tls);
    if !body.is_empty() || matches!(head.method(), "POST" | "PUT" | "PATCH") {
        write::content_length(out, body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The upstream's status line and end-to-end headers for the agent; a header value holding the
/// upstream's injected credential (an upstream that echoes what it was sent) has it replaced,
/// as `ScrubHook` does in bodies.
/// The gateway's say on session id (`track.session_token`, in place of the upstream's) and on
/// CORS (the upstream's `Access-Control-*` headers dropped, the gateway's for a web page added).
fn response_head(w: &Worker, out: &mut Vec<u8>, up: &Head, ctx: &mut RequestCtx, track: &Track<'_>) {
    let session = track.session_token.as_deref();
    write::status_line(out, up.status, up.reason());
    let mut replaced = ctx.upstream_credential().map(|c| crate::scrub::header_values(up, &c.secrets)).unwrap_or_default();
    if !replaced.is_empty() {
        tracing::warn!(upstream = %ctx.upstream, "the upstream echoed its injected credential in a response header; scrubbed");
    }
    let dropped = inspect_answer_headers(w, ctx, up, &mut replaced);
    if let (Some(token), Some(at)) = (session, up.headers().position(|(n, _)| n.eq_ignore_ascii_case("mcp-session-id"))) {
        replaced.retain(|(i, _)| *i != at);
        replaced.push((at, token.to_owned()));
        replaced.sort_by_key(|(i, _)| *i);
    }
    write::end_to_end_headers(out, up, |_, n| super::cors::is_cors_header(n) || dropped.iter().any(|d| d.eq_ignore_ascii_case(n)), &replaced);
    super::cors::write_answer_headers(out, track.cors);
}

/// Answer headers that carry no data of the upstream's choosing the agent reads, or that the
/// agent needs as sent (its session id, its cookies: credentials it is meant to hold).
const UNINSPECTED_ANSWER_HEADERS: &[&str] = &["content-type", "content-length", "date", "etag", "last-modified", "mcp-session-id", "set-cookie"];

/// The answer's headers the agent reads through the hooks (detection, as on requests): masked
/// values join `replaced` (header index → new value), after the credential scrub. Returns the
/// names of headers not to pass on: those whose name held a finding (a masked name is no
/// header name, and the agent must not read the name as sent).
fn inspect_answer_headers(w: &Worker, ctx: &mut RequestCtx, up: &Head, replaced: &mut Vec<(usize, String)>) -> Vec<String> {
    let mut dropped = Vec::new();
    if w.chain.is_empty() {
        return dropped;
    }
    let conn = up.header("connection").unwrap_or(b"");
    let mut at = Vec::new();
    let mut pairs: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> = Vec::new();
    for (i, (n, v)) in up.headers().enumerate() {
        if crate::http::is_hop_by_hop(n, conn) || UNINSPECTED_ANSWER_HEADERS.iter().any(|u| u.eq_ignore_ascii_case(n)) {
            continue;
        }
        let v = match replaced.iter().find(|(j, _)| *j == i) {
            Some((_, scrubbed)) => std::borrow::Cow::Owned(scrubbed.clone()),
            None => String::from_utf8_lossy(v),
        };
        at.push(i);
        pairs.push((n.into(), v));
    }
    if pairs.is_empty() || w.chain.run_headers(ctx, Direction::Response, &mut pairs) != Verdict::Changed {
        return dropped;
    }
    for (i, (name, new)) in at.into_iter().zip(pairs) {
        if let Some((sent, _)) = up.headers().nth(i).filter(|(sent, _)| *sent != name) {
            dropped.push(sent.to_owned());
            continue;
        }
        let before = replaced.iter().position(|(j, _)| *j == i);
        let old = before.map_or_else(|| String::from_utf8_lossy(up.headers().nth(i).map_or(&b""[..], |(_, v)| v)), |k| std::borrow::Cow::Borrowed(replaced[k].1.as_str()));
        if new == old {
            continue;
        }
        // A mask never ends a header line early (a placeholder is configuration).
        let new = new.replace(['\r', '\n', '\0'], " ");
        match before {
            Some(k) => replaced[k].1 = new,
            None => replaced.push((i, new)),
        }
    }
    // The head is written in header order, taking the replacements in theirs.
    replaced.sort_by_key(|(i, _)| *i);
    dropped
}

/// Decodes the upstream body framing from the connection's read buffer.
struct BodyReader {
    kind: BodyKind,
    chunked: ChunkedDecoder,
    left: u64,
    done: bool,
}

impl BodyReader {
    fn new(kind: BodyKind) -> Self {
        let left = if let BodyKind::Length(n) = kind { n } else { 0 };
        BodyReader { kind, chunked: ChunkedDecoder::default(), left, done: kind == BodyKind::None }
    }

    /// Hand every decoded body byte now in `rbuf` to `f`.
    fn drain(&mut self, rbuf: &mut ReadBuf, mut f: impl FnMut(&[u8])) -> Result<(), String> {
        while !self.done && !rbuf.is_empty() {
            match self.kind {
                BodyKind::Length(_) => {
                    let take = (self.left as usize).min(rbuf.data().len());
                    f(&rbuf.data()[..take]);
                    rbuf.consume(take);
                    self.left -= take as u64;
                    self.done = self.left == 0;
                }
                BodyKind::CloseDelimited => {
                    f(rbuf.data());
                    let n = rbuf.data().len();
                    rbuf.consume(n);
                }
                BodyKind::Chunked => {
                    let (used, d) = self.chunked.decode(rbuf.data()).map_err(|e| e.to_string())?;
                    if let Decoded::Data(r) = &d {
                        f(&rbuf.data()[r.clone()]);
                    }
                    rbuf.consume(used);
                    self.done = d == Decoded::Done;
                }
                BodyKind::None => self.done = true,
            }
        }
        Ok(())
    }

    /// The upstream closed: fine only for a close-delimited body.
    fn eof(&mut self) -> Result<(), String> {
        if self.kind == BodyKind::CloseDelimited {
            self.done = true;
            Ok(())
        } else {
            Err("the upstream closed the connection in the middle of the body".into())
        }
    }
}

/// Stream an SSE response event by event: each complete event is parsed, passed through the
/// hooks and written to the agent as its own chunk at once. Holds back only a partial event.
#[allow(clippy::too_many_arguments)]
async fn relay_sse(
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
    let mut holding = super::Held::new(w);
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

struct StreamGuard<'a>(&'a Worker);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

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

/// Legacy HTTP+SSE (MCP 2024-11-05): the stream's `endpoint` event names the URL the agent
/// posts its messages to. It goes to the agent rewritten to the same place through the gateway
/// (the route's prefix in place of its upstream path), and the `session_id` (`sessionId`) in it
/// becomes the session's id: the posts name it, so they and this stream's answers are paired
/// and recorded as one session, which ends with the stream. An endpoint that does not map
/// through this route (another host, a path outside the route's upstream path) is withheld —
/// the agent is never sent around the gateway.
#[allow(clippy::too_many_arguments)]
fn legacy_endpoint(w: &Worker, cfg: &Config, route: &Route, ctx: &mut RequestCtx, track: &mut Track<'_>, ev: &sse::Event, data: &str, out: &mut Vec<u8>) {
    let up = &cfg.upstreams[route.upstream];
    let Some(mapped) = map_endpoint(data, &up.authority, &route.upstream_path, &route.path) else {
        tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name,
            "legacy SSE endpoint withheld: it does not lead back through this route (point the route at the server's root so its message path is under the route)");
        w.metrics.messages(&route.label, "response", "invalid", 1);
        return;
    };
    ev.encode_with_data(&mapped, out);
    track.legacy_target = Some(format!("{}{}", route.upstream_path, mapped.get(route.path.len()..).unwrap_or("")));
    let Some(sid) = legacy_session_id(&mapped) else {
        return;
    };
    let mut s = Session::new(sid, &route.name);
    s.owner = ctx.identity.as_ref().map(|i| i.subject.clone());
    ctx.gateway_session_id = Some(s.gateway_id.clone());
    ctx.mcp_session_id = Some(sid.to_owned());
    tracing::info!(worker = w.id, route = %route.name, mcp_session = sid, gateway_session = %s.gateway_id, "session started (legacy HTTP+SSE)");
    w.shared.sessions.insert(s, cfg.sessions.max_sessions);
    track.legacy_session = Some(sid.to_owned());
    if let (Some(em), Some(gid)) = (&w.emitter, ctx.gateway_session_id.as_deref()) {
        crate::events::record::session_event(em, ctx, sluice_schema::Kind::SessionStart, gid, None);
    }
}

/// The caller's bearer token, as it authenticated (`Authorization: Bearer …`).
fn bearer(head: &Head) -> Option<&str> {
    crate::identity::bearer(head.header_str("authorization")).filter(|t| !t.is_empty())
}

/// The token exchanged for this request's caller (`oauth_token_exchange`): held, or asked of
/// the identity provider, waiting at most `limit`.
async fn exchanged(x: &crate::token_exchange::Exchanger, ctx: &RequestCtx, head: &Head, limit: std::time::Duration) -> Result<std::sync::Arc<crate::oauth::Live>, ProxyError> {
    use crate::offload::Lookup;
    let not = |reason: String, refused: bool| ProxyError::NotExchanged { upstream: ctx.upstream.clone(), reason, refused };
    let Some(subject) = ctx.identity.as_ref().filter(|i| i.bearer()).and_then(|_| bearer(head)) else {
        return Err(not("this caller did not authenticate with one (API keys and client certificates cannot be exchanged); call with Authorization: Bearer <access token from the identity provider>".into(), true));
    };
    let failed = |f: crate::offload::Failure| match f.refused {
        true => not(format!("the identity provider refused to exchange it: {}", f.reason), true),
        false => not(format!("the identity provider could not be asked ({}); retry shortly", f.reason), false),
    };
    let slot = match x.lookup(subject, crate::token_exchange::expiry(ctx.identity.as_ref().and_then(|i| i.claims.as_deref()))) {
        Lookup::Ready(live) => return Ok(live),
        Lookup::Failed(f) => return Err(failed(f)),
        Lookup::Wait(slot) => slot,
    };
    match crate::offload::wait(&slot, limit).await {
        Some(Ok(live)) => Ok(live),
        Some(Err(f)) => Err(failed(f)),
        None => Err(not(format!("the identity provider did not answer within {limit:?}; retry shortly"), false)),
    }
}

/// One caller may not fill the store (evicting every other caller's sessions): past its
/// share (`sessions.max_per_caller`), a new session is refused before the upstream makes one.
fn within_session_share(w: &Worker, cfg: &Config, ctx: &RequestCtx) -> Result<(), ProxyError> {
    let cap = cfg.sessions.max_per_caller;
    let Some(caller) = ctx.identity.as_ref().map(|i| i.subject.as_str()).filter(|_| cap > 0) else { return Ok(()) };
    let held = w.shared.sessions.owned(caller);
    if held >= cap {
        return Err(ProxyError::TooManySessions { held });
    }
    Ok(())
}

/// Queue the gateway's answers to a legacy post for the session's stream (`relay_sse` sends
/// them within [`LEGACY_POLL`]). A stream nobody reads would let them pile up without end:
/// past [`LEGACY_OUT_MAX`] waiting, the post is refused instead (503, nothing forwarded).
fn legacy_answers(w: &Worker, ctx: &RequestCtx, answers: &[Vec<u8>]) -> Result<(), ProxyError> {
    let Some(sid) = ctx.mcp_session_id.as_deref() else { return Ok(()) };
    let adding: usize = answers.iter().map(Vec::len).sum();
    let waiting = w.shared.sessions.with(sid, |s| {
        let waiting: usize = s.legacy_out.iter().map(Vec::len).sum();
        if waiting + adding <= LEGACY_OUT_MAX {
            s.legacy_out.extend(answers.iter().filter(|a| !a.is_empty()).cloned());
        }
        waiting
    });
    match waiting {
        Some(waiting) if waiting + adding > LEGACY_OUT_MAX => Err(ProxyError::Overloaded(format!(
            "{waiting} bytes of the gateway's answers already wait on this session's SSE stream, and this post's would pass {LEGACY_OUT_MAX}: read the stream (GET …/sse) before posting more, and send large batches in parts"
        ))),
        _ => Ok(()),
    }
}

/// The most answer bytes that may wait for a legacy session's stream.
const LEGACY_OUT_MAX: usize = 1 << 20;

/// How often a legacy stream looks for the gateway's own answers to the session's posts.
const LEGACY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The gateway path for an endpoint the upstream named (an absolute path, or a URL on the
/// upstream's own authority): `gateway_prefix` in place of `upstream_path`; `None` when it
/// does not lead back through the route.
fn map_endpoint(data: &str, authority: &str, upstream_path: &str, gateway_prefix: &str) -> Option<String> {
    let path = if data.starts_with('/') && !data.starts_with("//") {
        data
    } else {
        let scheme = ["http://", "https://"].into_iter().find(|p| starts_with_ci(data.as_bytes(), p.as_bytes()))?;
        let rest = &data[scheme.len()..];
        let at = rest.find(['/', '?']).unwrap_or(rest.len());
        if !rest[..at].eq_ignore_ascii_case(authority) {
            return None;
        }
        &rest[at..]
    };
    let below = path.strip_prefix(upstream_path)?;
    if !(below.is_empty() || below.starts_with('/') || below.starts_with('?')) {
        return None;
    }
    let slash = if gateway_prefix.is_empty() && !below.starts_with('/') { "/" } else { "" };
    Some(format!("{gateway_prefix}{slash}{below}"))
}

/// The legacy transport's session id in a message endpoint's query.
fn legacy_session_id(target: &str) -> Option<&str> {
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|p| p.strip_prefix("session_id=").or_else(|| p.strip_prefix("sessionId="))).filter(|v| !v.is_empty())
}

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
async fn relay_json(
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
    let mut holding = super::Held::new(w);
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
                } else if let Err(e) = holding.grow_to_fit(to, super::KEEP_BODY, max, &cfg.limits) {
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

/// Stream a body the gateway does not inspect, re-framed for the agent.
#[allow(clippy::too_many_arguments)]
async fn relay_plain(
    w: &Worker,
    cfg: &Config,
    ctx: &mut RequestCtx,
    down: &mut Stream,
    c: &mut UpConn,
    kind: BodyKind,
    method: &str,
    keep_alive: bool,
    client_minor: u8,
    sent: &mut u64,
    mcp: bool,
    track: &Track<'_>,
    idle: std::time::Duration,
) -> Result<bool, ()> {
    // Text bodies are scanned and masked as they stream (the length may change, so they go
    // out chunked, or close-delimited to an HTTP/1.0 client).
    let ctype = c.head.header("content-type");
    let text = media(ctype) == Media::Text || (mcp && ctype.is_none());
    let detect = cfg.detect.as_ref().filter(|d| text && kind != BodyKind::None && d.active(Direction::Response));
    // An upstream's injected credential echoed in a text answer is replaced as it streams.
    let mut cred = ctx.upstream_credential().filter(|_| text && kind != BodyKind::None).map(|c| crate::scrub::StreamScrub::new(&c.secrets));
    let mut clean = Vec::new();
    let kind_out = if (detect.is_some() || cred.is_some()) && matches!(kind, BodyKind::Length(_)) { BodyKind::CloseDelimited } else { kind };
    let chunked_out = matches!(kind_out, BodyKind::Chunked | BodyKind::CloseDelimited) && client_minor >= 1;
    let mut scan = match detect {
        Some(d) => match (w.take_scanner(&d.engine), crate::detect::stream::StreamScanner::new(&d.engine)) {
            (Ok(sc), Ok(st)) => Some((d, sc, st)),
            _ => {
                tracing::error!(worker = w.id, "detect: cannot set up a streamed scan; refusing the body");
                return Err(());
            }
        },
        None => None,
    };
    // How findings are masked (block acts as mask once the head is out), for every piece.
    let mask_rule = |r: u32| detect.is_some_and(|d| matches!(d.action(Direction::Response, r), Action::Mask | Action::Block));
    let plan = detect.map(|d| crate::detect::mask::Plan { masker: &d.masker, strategies: &d.strategies, mask_rule: &mask_rule });
    let mut masked = Vec::new();
    let (mut found, mut fingerprints) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(1024);
    response_head(w, &mut out, &c.head, ctx, track);
    match kind_out {
        BodyKind::Length(n) => {
            let _ = std::io::Write::write_fmt(&mut out, format_args!("content-length: {n}\r\n"));
        }
        BodyKind::None => {
            if method == "HEAD" {
                if let Some(cl) = c.head.header("content-length") {
                    write::header(&mut out, "content-length", cl);
                }
            } else if !matches!(c.head.status, 100..=199 | 204 | 304) {
                write::content_length(&mut out, 0);
            }
        }
        _ if chunked_out => write::header(&mut out, "transfer-encoding", b"chunked"),
        _ => {}
    }
    let keep = keep_alive && (chunked_out || !matches!(kind_out, BodyKind::CloseDelimited));
    write::header(&mut out, "connection", if keep { b"keep-alive" } else { b"close" });
    out.extend_from_slice(b"\r\n");
    let mut reader = BodyReader::new(kind);
    loop {
        match scan.as_mut() {
            None => reader
                .drain(&mut c.rbuf, |b| {
                    let b = match cred.as_mut() {
                        Some(s) => {
                            clean.clear();
                            s.feed(b, &mut clean);
                            &clean[..]
                        }
                        None => b,
                    };
                    *sent += b.len() as u64;
                    if chunked_out {
                        write::chunk(&mut out, b)
                    } else {
                        out.extend_from_slice(b)
                    }
                })
                .map_err(|e| tracing::warn!(worker = w.id, error = %e, "upstream body framing"))?,
            Some((_, sc, st)) => {
                reader
                    .drain(&mut c.rbuf, |b| match cred.as_mut() {
                        Some(s) => {
                            clean.clear();
                            s.feed(b, &mut clean);
                            st.feed(sc, plan, &clean, &mut masked, &mut found)
                        }
                        None => st.feed(sc, plan, b, &mut masked, &mut found),
                    })
                    .map_err(|e| tracing::warn!(worker = w.id, error = %e, "upstream body framing"))?;
            }
        }
        // At the end, what the credential scrub held back goes on (to detection, or out).
        if let Some(mut s) = cred.take_if(|_| reader.done) {
            clean.clear();
            s.finish(&mut clean);
            if s.replaced {
                tracing::warn!(upstream = %ctx.upstream, "the upstream echoed its injected credential in a text answer; scrubbed");
            }
            match scan.as_mut() {
                Some((_, sc, st)) => st.feed(sc, plan, &clean, &mut masked, &mut found),
                None => masked.extend_from_slice(&clean),
            }
        }
        if let Some((_, _, st)) = scan.as_mut() {
            st.take_fingerprints(&mut fingerprints);
        }
        if let Some((d, mut sc, st)) = scan.take_if(|_| reader.done) {
            fingerprints.extend(st.finish(&mut sc, plan, &mut masked, &mut found));
            w.return_scanner(&d.engine, sc);
            log_stream_findings(w, ctx, d, &mut found, &mut fingerprints);
        } else if let Some((d, _, _)) = scan.as_ref() {
            log_stream_findings(w, ctx, d, &mut found, &mut fingerprints);
        }
        if !masked.is_empty() {
            *sent += masked.len() as u64;
            if chunked_out {
                write::chunk(&mut out, &masked)
            } else {
                out.extend_from_slice(&masked)
            }
            masked.clear();
        }
        if reader.done && chunked_out {
            out.extend_from_slice(write::LAST_CHUNK);
        }
        if !out.is_empty() {
            if down.write_all(&out).await.is_err() || down.flush().await.is_err() {
                return Err(());
            }
            out.clear();
        }
        if reader.done {
            return Ok(kind_out != BodyKind::CloseDelimited || chunked_out);
        }
        match deadline(idle, c.rbuf.fill(&mut c.stream, super::io::READ_BUF)).await {
            Some(Ok(0)) => reader.eof().map_err(|e| tracing::warn!(worker = w.id, error = %e, "upstream body"))?,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(()),
        }
    }
}

/// Findings of a streamed text body: counted, logged and kept for the record (block acts as
/// mask once the head is out). Their path is the body's, ``; each with the keyed fingerprint
/// the scanner took while it still held the value (`fingerprints`, one per finding).
fn log_stream_findings(w: &Worker, ctx: &mut RequestCtx, d: &DetectCfg, found: &mut Vec<crate::detect::engine::Finding>, fingerprints: &mut Vec<Option<String>>) {
    let mut fps = fingerprints.drain(..);
    for f in found.drain(..) {
        let fingerprint = fps.next().flatten();
        let m = &d.engine.meta()[f.rule as usize];
        let action = match d.action(Direction::Response, f.rule) {
            Action::Off => continue,
            Action::Block => Action::Mask,
            a => a,
        };
        w.metrics.finding(&ctx.route, "response", &m.kind, action.as_str());
        tracing::info!(target: "sluice::detect", route = %ctx.route, direction = "response", kind = %m.kind, rule = %m.id, action = action.as_str(), body = "text", "finding");
        let encoding = f.encoding.map(crate::detect::decode::Encoding::name);
        ctx.findings.push(crate::detect::hook::Recorded::new(Direction::Response, m, String::new(), action, None, fingerprint, encoding));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_from_2026_07_28_are_stateless() {
        for (v, stateless) in [("2026-07-28", true), ("2027-01-15", true), ("2025-11-25", false), ("2025-03-26", false), ("2026-07-2", false), ("draft", false), ("", false), ("2026-07-28x", false)] {
            assert_eq!(is_stateless_version(v), stateless, "{v}");
        }
    }

    #[test]
    fn legacy_endpoints_lead_back_through_the_route_or_nowhere() {
        let m = |data, up_path, prefix| map_endpoint(data, "10.0.0.5:8000", up_path, prefix);
        assert_eq!(m("/messages/?session_id=ab12", "", "/legacy").as_deref(), Some("/legacy/messages/?session_id=ab12"));
        assert_eq!(m("http://10.0.0.5:8000/messages?sessionId=x", "", "").as_deref(), Some("/messages?sessionId=x"));
        assert_eq!(m("HTTPS://10.0.0.5:8000/srv/m?x", "/srv", "/g").as_deref(), Some("/g/m?x"));
        assert_eq!(m("/srv?x", "/srv", "").as_deref(), Some("/?x"));
        assert_eq!(m("/srv?x", "/srv", "/g").as_deref(), Some("/g?x"));
        // Around the gateway, or outside the route's upstream path: withheld.
        for data in ["http://evil.example/messages", "//evil.example/m", "http://10.0.0.5:8001/m", "/srvx/m", "/other/m", "messages?x", "ftp://10.0.0.5:8000/m"] {
            assert_eq!(m(data, "/srv", "/g"), None, "{data}");
        }
        assert_eq!(legacy_session_id("/g/messages/?a=1&session_id=ab12"), Some("ab12"));
        assert_eq!(legacy_session_id("/m?sessionId=X9"), Some("X9"));
        assert_eq!(legacy_session_id("/m?session_id=&x=1"), None);
        assert_eq!(legacy_session_id("/m/session_id=1"), None);
    }

    #[test]
    fn media_types_by_their_essence() {
        let m = |c: &str| media(Some(c.as_bytes()));
        assert_eq!(m("application/json"), Media::Json);
        assert_eq!(m(" Application/Vnd.Api+JSON ; charset=utf-8"), Media::Json);
        assert_eq!(m("application/json-seq"), Media::Other);
        assert_eq!(m("application/x-www-form-urlencoded; charset=UTF-8"), Media::Form);
        assert_eq!(m("text/plain"), Media::Text);
        assert_eq!(m("application/atom+xml"), Media::Text);
        assert_eq!(m("Multipart/Form-Data; boundary=x"), Media::Multipart);
        assert_eq!(m("multipart/mixed; boundary=x"), Media::Other);
        assert_eq!(media(None), Media::Other);
    }
}
