//! The request phase: the body parsed (JSON-RPC on MCP routes; a JSON document, form, text or
//! upload on plain routes), observed and passed through the hooks before anything is forwarded;
//! the policy's say on a plain request without an inspected body.

use super::media::{Media, media};
use super::observe::observe;
use super::session::within_session_share;
use super::{Track, with_scratch};
use crate::proxy::Worker;
use crate::config::schema::RouteKind;
use crate::config::{Config, Route};
use crate::error::ProxyError;
use crate::hooks::{self, Direction, Outcome, RequestCtx};
use crate::http::Head;
use crate::jsonrpc::{self, Kind};
use simd_json::prelude::*;

/// A plain JSON document (plain HTTP routes) as a one-element body for the hooks.
pub(super) fn document(buf: &mut [u8]) -> Result<jsonrpc::Body<'_>, jsonrpc::BodyError> {
    let v = jsonrpc::read_value(buf)?;
    Ok(jsonrpc::Body { batch: false, values: vec![v], infos: vec![jsonrpc::MessageInfo::document()] })
}

/// Parse the request body (MCP: JSON-RPC; HTTP: a JSON document), observe it and run the hooks.
/// `Ok(None)`: nothing to inspect (no body, or not JSON on a plain route).
pub(super) fn request_phase(w: &Worker, cfg: &Config, ctx: &mut RequestCtx, route: &Route, head: &Head, body: &[u8], track: &mut Track<'_>) -> Result<Option<Outcome>, ProxyError> {
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
pub(super) fn encoding(head: &Head) -> Option<&str> {
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
pub(super) fn plain_decision(w: &Worker, ctx: &mut RequestCtx) -> Option<Vec<u8>> {
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
