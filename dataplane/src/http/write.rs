//! Encoding heads and chunks. Everything appends to a caller-owned buffer, so a connection
//! reuses one output buffer for its whole life.

use super::head::Head;
use std::io::Write as _;
use std::net::IpAddr;

/// `METHOD target HTTP/1.1\r\n`
pub fn request_line(out: &mut Vec<u8>, method: &str, target: &str) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// `HTTP/1.1 status reason\r\n`
pub fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(if reason.is_empty() { reason_phrase(status).as_bytes() } else { reason });
    out.extend_from_slice(b"\r\n");
}

pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn content_length(out: &mut Vec<u8>, n: usize) {
    let _ = write!(out, "content-length: {n}\r\n");
}

/// Copy every end-to-end header of `head` except those `skip` names; `replaced` gives new
/// values by the header's position in `head` (ascending).
pub fn end_to_end_headers(out: &mut Vec<u8>, head: &Head, skip: impl Fn(usize, &str) -> bool, replaced: &[(usize, String)]) {
    let conn = head.header("connection").unwrap_or(b"");
    let mut next = replaced.iter().peekable();
    for (i, (name, value)) in head.headers().enumerate() {
        let value = match next.next_if(|(at, _)| *at == i) {
            Some((_, v)) => v.as_bytes(),
            None => value,
        };
        if !super::is_hop_by_hop(name, conn) && !skip(i, name) {
            header(out, name, value);
        }
    }
}

/// Add `X-Forwarded-For` (appending to the agent's own), `X-Forwarded-Proto` and `Forwarded`.
pub fn forwarding_headers(out: &mut Vec<u8>, head: &Head, client: IpAddr, tls: bool) {
    let proto = if tls { "https" } else { "http" };
    let mut xff = Vec::with_capacity(64);
    if let Some(prev) = head.header("x-forwarded-for") {
        xff.extend_from_slice(prev);
        xff.extend_from_slice(b", ");
    }
    let _ = write!(xff, "{client}");
    header(out, "x-forwarded-for", &xff);
    header(out, "x-forwarded-proto", proto.as_bytes());
    let mut fwd = Vec::with_capacity(96);
    if let Some(prev) = head.header("forwarded") {
        fwd.extend_from_slice(prev);
        fwd.extend_from_slice(b", ");
    }
    match client {
        IpAddr::V4(ip) => {
            let _ = write!(fwd, "for={ip}");
        }
        IpAddr::V6(ip) => {
            let _ = write!(fwd, "for=\"[{ip}]\"");
        }
    }
    let _ = write!(fwd, ";proto={proto}");
    if let Some(host) = head.header("host").filter(|h| h.iter().all(|b| b.is_ascii_graphic())) {
        fwd.extend_from_slice(b";host=\"");
        fwd.extend_from_slice(host);
        fwd.push(b'"');
    }
    header(out, "forwarded", &fwd);
}

/// One chunk of a chunked body (empty data writes nothing: an empty chunk would end the body).
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::Limits;

    #[test]
    fn forwards_end_to_end_headers_only_and_adds_forwarding() {
        let mut h = Head::default();
        h.parse_request(
            b"POST /mcp HTTP/1.1\r\nHost: gw:8080\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nAccept: text/event-stream\r\nContent-Length: 2\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
            Limits::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        end_to_end_headers(&mut out, &h, |_, n| n.eq_ignore_ascii_case("x-forwarded-for"), &[]);
        forwarding_headers(&mut out, &h, "::1".parse().unwrap(), false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Host: gw:8080\r\n"));
        assert!(s.contains("Accept: text/event-stream\r\n"));
        assert!(!s.to_ascii_lowercase().contains("x-hop"));
        assert!(!s.contains("Keep-Alive"));
        assert!(!s.contains("Content-Length"));
        assert!(s.contains("x-forwarded-for: 10.0.0.1, ::1\r\n"));
        assert!(s.contains("forwarded: for=\"[::1]\";proto=http;host=\"gw:8080\"\r\n"));
    }

    #[test]
    fn rewritten_values_replace_their_header_by_position_and_nothing_else() {
        let mut h = Head::default();
        h.parse_request(b"GET / HTTP/1.1\r\nX-A: 1\r\nX-Note: secret\r\nX-Skip: 2\r\nX-Note: other\r\nX-B: 3\r\n\r\n", Limits::default()).unwrap();
        let mut out = Vec::new();
        let replaced = [(1, "[MASKED]".to_owned()), (2, "never written".to_owned()), (4, "b".to_owned())];
        end_to_end_headers(&mut out, &h, |_, n| n.eq_ignore_ascii_case("x-skip"), &replaced);
        assert_eq!(String::from_utf8(out).unwrap(), "X-A: 1\r\nX-Note: [MASKED]\r\nX-Note: other\r\nX-B: b\r\n");
    }

    #[test]
    fn chunk_encoding() {
        let mut out = Vec::new();
        chunk(&mut out, b"");
        chunk(&mut out, &[b'a'; 17]);
        assert_eq!(&out[..4], b"11\r\n");
        assert_eq!(out.len(), 4 + 17 + 2);
    }
}
