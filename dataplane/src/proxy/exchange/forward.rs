//! The request as it goes upstream: the head's rewrites (target, inspected headers, dropped and
//! replaced ones), the gateway's own headers (the upstream's credential, the caller's identity),
//! a token exchanged for the caller's, and the gateway's answers to a server's refused requests.

use super::Track;
use crate::proxy::Worker;
use crate::proxy::upstream;
use crate::config::schema::RouteKind;
use crate::config::{Config, Route, Upstream};
use crate::error::ProxyError;
use crate::hooks::{Direction, RequestCtx, Verdict};
use crate::http::{write, Head};
use crate::jsonrpc;
use std::net::SocketAddr;

/// What the hooks changed in the request head, and how its headers are passed on.
pub(super) struct Forward<'a> {
    /// The path below the route's prefix and the query, when the hooks rewrote them.
    pub(super) target: Option<&'a str>,
    /// Header values the hooks rewrote, by position in the head (ascending).
    pub(super) headers: &'a [(usize, String)],
    /// Headers left out, by position (a standard header whose argument masking renamed).
    pub(super) dropped: &'a [usize],
    /// The upstream's authority replaces the agent's `Host`.
    pub(super) rewrite_host: bool,
    /// The agent's credentials (meant for the gateway, or replaced by the upstream's own) are
    /// not passed through.
    pub(super) strip_credentials: bool,
    /// The agent's address and whether it came over TLS (the forwarding headers).
    pub(super) client: SocketAddr,
    pub(super) tls: bool,
    /// The upstream's credential as it stands for this request.
    pub(super) credential: Option<&'a [u8]>,
    /// The caller and the gateway session, told to an upstream with `forward_identity = "headers"`.
    pub(super) who: Option<(&'a crate::identity::Identity, Option<&'a str>)>,
    /// The signed assertion for one with `forward_identity = "token"`.
    pub(super) assertion: Option<&'a str>,
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

/// What the hooks made of the request head: the target below the route's prefix when they
/// rewrote it, header values to write instead (by position in the head, ascending, the
/// upstream's session id among them), and how the other headers pass on.
pub(super) struct HeadEdits {
    pub(super) target: Option<String>,
    pub(super) headers: Vec<(usize, String)>,
    pub(super) rewrite_host: bool,
    pub(super) strip_credentials: bool,
}

/// The request head through the hooks: the URL below the route's prefix (its segments and
/// query are arguments too), then the headers the upstream reads. `Err`: the refusal's body
/// (answered with 403).
/// `upstream_sid_at`: the session id header the gateway opened (it writes the upstream's id there).
pub(super) fn inspect_head(w: &Worker, cfg: &Config, route: &Route, head: &Head, ctx: &mut RequestCtx, upstream_sid_at: Option<usize>) -> Result<HeadEdits, Vec<u8>> {
    // The URL below the route's prefix carries arguments too: the hooks see it first.
    let mut target: Option<String> = None;
    let path = head.path();
    let up = &cfg.upstreams[route.upstream];
    let prefix = &path[..route.path.len().min(path.len())];
    let below = &head.target()[prefix.len()..];
    let plain = route.kind != RouteKind::Mcp;
    let mut refused = None;
    if !below.is_empty() {
        let mut t = below.to_owned();
        let from = ctx.findings.len();
        let verdict = w.chain.run_target(ctx, &mut t);
        // The record shows the URL as forwarded, and with every finding masked where
        // detection only logged or refused.
        if plain {
            ctx.http_target = Some(format!("{prefix}{}", ctx.record_target.take().as_deref().unwrap_or(if verdict == Verdict::Changed { &t } else { below })));
        }
        w.chain.observe_outside(ctx, Direction::Request, &verdict, from);
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
        match inspect_headers(w, ctx, head, up, !plain && head.method() == "POST", rewrite_host, strip_credentials, upstream_sid_at) {
            Ok(edits) => header_edits = edits,
            Err(refusal) => refused = Some(refusal),
        }
    }
    if let (Some(at), Some(usid)) = (upstream_sid_at, ctx.mcp_session_id.as_deref()) {
        header_edits.push((at, usid.to_owned()));
        header_edits.sort_by_key(|(i, _)| *i);
    }
    if let Some(Verdict::Refuse { code, message, reason }) = refused {
        return Err(jsonrpc::error_body(None, code, &message, &reason));
    }
    Ok(HeadEdits { target, headers: header_edits, rewrite_host, strip_credentials })
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

pub(super) fn caller_for<'a>(w: &Worker, up: &Upstream, ctx: &'a RequestCtx) -> Caller<'a> {
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
pub(super) async fn answer_server(w: &Worker, cfg: &Config, route: &Route, ctx: &RequestCtx, track: &mut Track<'_>) {
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
pub(super) fn encode_request(out: &mut Vec<u8>, head: &Head, route: &Route, up: &Upstream, fwd: &Forward<'_>, body: &[u8]) {
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

/// The caller's bearer token, as it authenticated (`Authorization: Bearer …`).
pub(super) fn bearer(head: &Head) -> Option<&str> {
    crate::identity::bearer(head.header_str("authorization")).filter(|t| !t.is_empty())
}

/// The token exchanged for this request's caller (`oauth_token_exchange`): held, or asked of
/// the identity provider, waiting at most `limit`.
pub(super) async fn exchanged(x: &crate::token_exchange::Exchanger, ctx: &RequestCtx, head: &Head, limit: std::time::Duration) -> Result<std::sync::Arc<crate::oauth::Live>, ProxyError> {
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
