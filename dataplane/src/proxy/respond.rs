//! Responses the gateway writes itself: errors (HTTP status + JSON-RPC error body) and local
//! answers to refused messages.

use super::cors::Reader;
use super::io::Stream;
use crate::error::ProxyError;
use crate::http::write;
use crate::jsonrpc::error_body;
use futures_lite::AsyncWriteExt;

/// Write a complete response with a body; `cors`: the web page reading it, if any.
pub async fn send(stream: &mut Stream, status: u16, content_type: &str, body: &[u8], keep_alive: bool, extra: &[(&str, &[u8])], cors: Option<Reader<'_>>) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.len());
    write::status_line(&mut out, status, b"");
    write::header(&mut out, "content-type", content_type.as_bytes());
    for (n, v) in extra {
        write::header(&mut out, n, v);
    }
    super::cors::write_answer_headers(&mut out, cors);
    write::content_length(&mut out, body.len());
    write::header(&mut out, "connection", if keep_alive { b"keep-alive" } else { b"close" });
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Answer an error: its status, and a JSON-RPC error whose `data.reason` says what happened
/// (with `Retry-After` when the gateway is at a limit or awaits a token for the upstream).
pub async fn error(stream: &mut Stream, e: &ProxyError, id: Option<&str>, keep_alive: bool, cors: Option<Reader<'_>>) -> std::io::Result<()> {
    let body = error_body(id, e.code(), e.title(), &e.to_string());
    let extra: &[(&str, &[u8])] = match e {
        ProxyError::Overloaded(_) => &[("retry-after", b"1")],
        ProxyError::NoUpstreamCredential { .. } => &[("retry-after", b"2")],
        _ => &[],
    };
    send(stream, e.status(), "application/json", &body, keep_alive, extra, cors).await
}
