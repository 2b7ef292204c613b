//! What a body's `Content-Type` makes it for inspection, and whether the gateway can frame and
//! inspect an upstream's answer at all.

use super::forward::bearer;
use super::request::encoding;
use super::starts_with_ci;
use crate::config::schema::RouteKind;
use crate::config::{Route, Upstream};
use crate::error::ProxyError;
use crate::http::body::{response_body_kind, BodyKind};
use crate::http::Head;

/// What a body's `Content-Type` makes it for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Media {
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

/// The answer's body framing, if the gateway can frame and inspect the answer. An answer it
/// cannot (framing it cannot read, a compressed body it would inspect, a type that would let it
/// past inspection) is answered (by id) and recorded in its place. So is an upstream refusing
/// the gateway's own credential: the agent can do nothing about it (and must not be sent after
/// the upstream's authorization server); a token is renewed at once.
pub(super) fn usable_answer(route: &Route, up: &Upstream, head: &Head, answer: &Head, method: &str) -> Result<BodyKind, ProxyError> {
    let refused_credential = up.credential.as_ref().filter(|_| answer.status == 401).map(|cred| {
        // A caller's exchanged token is asked for again on its next call.
        if let (Some(x), Some(b)) = (cred.exchanger(), bearer(head)) {
            x.forget(b);
        }
        ProxyError::UpstreamRefusedCredential { upstream: up.name.clone(), renewing: cred.token().inspect(|t| t.request_refresh()).is_some() || cred.exchanger().is_some() }
    });
    let protocol = |reason: String| ProxyError::UpstreamProtocol { upstream: up.name.clone(), reason };
    match (refused_credential, response_body_kind(answer, method)) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(protocol(e.to_string())),
        // The gateway asks for identity; a compressed answer it would inspect is not forwarded.
        (None, Ok(kind)) => match encoding(answer).filter(|_| kind != BodyKind::None && (route.kind == RouteKind::Mcp || media(answer.header("content-type")) != Media::Other)) {
            Some(e) => Err(protocol(format!("answered with Content-Encoding: {e} although the gateway asked for identity; the gateway does not forward what it cannot inspect"))),
            None => answer_type_problem(answer, kind, route.kind).map_or(Ok(kind), |r| Err(protocol(r))),
        },
    }
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

/// What a `Content-Type` value makes a body for inspection (no type: not inspected).
pub(super) fn media(ctype: Option<&[u8]>) -> Media {
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

#[cfg(test)]
mod tests {
    use super::*;

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
