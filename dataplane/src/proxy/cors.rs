//! CORS for the web clients the gateway serves. A page from an allowed origin
//! (`gateway.allowed_origins`, or a loopback one — see `http::origin`) calling the gateway
//! cross-origin needs its browser's permission to send JSON and the MCP headers (a preflight)
//! and to read the answer and its `Mcp-Session-Id`. The gateway decides which origins may call
//! it, so it alone answers for CORS: preflights from allowed origins are answered here and never
//! reach the upstream, the upstream's `Access-Control-*` answer headers are dropped, and every
//! answer to an allowed origin — the upstream's and the gateway's own errors and challenges —
//! carries the gateway's. A page from any other origin was refused (403) before this.

use crate::http::{write, Head};

/// Answer headers a page may read besides the CORS-safelisted ones: on MCP routes the session
/// and protocol headers, the authentication challenge and `Retry-After`; on plain HTTP routes
/// all of them (`*`: no answer allows credentials, so the wildcard holds).
const EXPOSE_MCP: &[u8] = b"mcp-session-id, mcp-protocol-version, www-authenticate, retry-after";
const EXPOSE_PLAIN: &[u8] = b"*";
/// The methods of the Streamable HTTP transport.
const MCP_METHODS: &[u8] = b"GET, POST, DELETE";
/// How long a browser may reuse a preflight's answer (seconds).
const MAX_AGE: &[u8] = b"600";
/// Longest `Access-Control-Request-Headers` echoed back.
const MAX_REQUEST_HEADERS: usize = 2048;

/// A page that reads an answer: its origin (one the gateway serves) and the answer headers it
/// may read.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'h> {
    origin: &'h [u8],
    expose: &'static [u8],
}

/// The page reading this request's answer, when it comes from an origin the gateway serves
/// (the caller refused any other before); `mcp`: on an MCP route (or before routing).
pub fn reader<'h>(cfg: &crate::config::Config, head: &'h Head, mcp: bool) -> Option<Reader<'h>> {
    head.header("origin").filter(|o| cfg.origins.allows(o)).map(|origin| Reader { origin, expose: if mcp { EXPOSE_MCP } else { EXPOSE_PLAIN } })
}

/// Is this answer header the upstream's say on CORS (which is the gateway's)?
pub fn is_cors_header(name: &str) -> bool {
    name.len() > 15 && name.as_bytes()[..15].eq_ignore_ascii_case(b"access-control-")
}

/// Append the CORS headers of an answer to `reader` (none without one).
pub fn write_answer_headers(out: &mut Vec<u8>, reader: Option<Reader<'_>>) {
    if let Some(r) = reader {
        write::header(out, "access-control-allow-origin", r.origin);
        write::header(out, "access-control-expose-headers", r.expose);
        write::header(out, "vary", b"origin");
    }
}

/// Is this request a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`, Fetch standard §3.2.2)?
pub fn is_preflight(head: &Head) -> bool {
    head.method() == "OPTIONS" && head.header("origin").is_some() && head.header("access-control-request-method").is_some()
}

/// A comma-separated list of header-name tokens, as `Access-Control-Request-Headers` holds.
fn is_token_list(v: &[u8]) -> bool {
    v.len() <= MAX_REQUEST_HEADERS && v.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~, \t".contains(&b))
}

/// The answer to a preflight from `origin` (allowed): 204 granting the transport's methods
/// (MCP routes) or the method asked for (plain routes), and the headers asked for.
pub fn preflight_answer(head: &Head, reader: Reader<'_>, keep_alive: bool) -> Vec<u8> {
    let mcp = reader.expose == EXPOSE_MCP;
    let mut out = Vec::with_capacity(512);
    write::status_line(&mut out, 204, b"No Content");
    write::header(&mut out, "access-control-allow-origin", reader.origin);
    let asked = head.header("access-control-request-method").filter(|m| !m.is_empty() && is_token_list(m) && !m.contains(&b','));
    let methods = if mcp { Some(MCP_METHODS) } else { asked };
    if let Some(m) = methods {
        write::header(&mut out, "access-control-allow-methods", m);
    }
    if let Some(h) = head.header("access-control-request-headers").filter(|h| is_token_list(h)) {
        write::header(&mut out, "access-control-allow-headers", h);
    }
    // Private Network Access: a public page may call a gateway on the visitor's network only
    // if the gateway says so; it does for the origins it serves.
    if head.header("access-control-request-private-network").is_some_and(|v| v.eq_ignore_ascii_case(b"true")) {
        write::header(&mut out, "access-control-allow-private-network", b"true");
    }
    write::header(&mut out, "access-control-max-age", MAX_AGE);
    write::header(&mut out, "vary", b"origin, access-control-request-method, access-control-request-headers");
    write::content_length(&mut out, 0);
    write::header(&mut out, "connection", if keep_alive { b"keep-alive" } else { b"close" });
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_headers_are_recognised_whatever_their_case() {
        assert!(is_cors_header("Access-Control-Allow-Origin") && is_cors_header("access-control-expose-headers"));
        assert!(!is_cors_header("access-control-") && !is_cors_header("x-access-control-allow-origin") && !is_cors_header("vary"));
    }

    #[test]
    fn request_header_lists_are_echoed_only_when_they_are_header_names() {
        assert!(is_token_list(b"content-type, mcp-session-id,authorization"));
        assert!(!is_token_list(b"content-type\r\nx-injected: 1"));
        assert!(!is_token_list(b"a:b"));
        assert!(!is_token_list(&vec![b'a'; MAX_REQUEST_HEADERS + 1]));
    }
}
