//! The upstream's answer head as the agent gets it: credential scrubbed, headers inspected, the
//! gateway's session id and CORS headers in place of the upstream's.

use super::Track;
use crate::proxy::Worker;
use crate::hooks::{Direction, RequestCtx, Verdict};
use crate::http::{write, Head};
use simd_json::prelude::*;

/// The upstream's status line and end-to-end headers for the agent; a header value holding the
/// upstream's injected credential (an upstream that echoes what it was sent) has it replaced,
/// as `ScrubHook` does in bodies.
/// The gateway's say on session id (`track.session_token`, in place of the upstream's) and on
/// CORS (the upstream's `Access-Control-*` headers dropped, the gateway's for a web page added).
pub(super) fn response_head(w: &Worker, out: &mut Vec<u8>, up: &Head, ctx: &mut RequestCtx, track: &Track<'_>) {
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
    write::end_to_end_headers(out, up, |_, n| crate::proxy::cors::is_cors_header(n) || dropped.iter().any(|d| d.eq_ignore_ascii_case(n)), &replaced);
    crate::proxy::cors::write_answer_headers(out, track.cors);
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
