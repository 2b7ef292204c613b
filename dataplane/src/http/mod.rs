//! HTTP/1.1 codec, sans-io: bytes in, values out. Nothing here touches a socket.
//!
//! - [`head`]: request and response heads (httparse), stored as spans into one reusable buffer.
//! - [`body`]: body framing (Content-Length, chunked, close-delimited) and the chunked decoder.
//! - [`write`]: encoding heads and chunks for the other side, with hop-by-hop headers removed.
//! - [`origin`]: the `Origin` and `Host` checks against DNS rebinding and cross-site calls.
//! - [`path`]: the request path in canonical form (dot segments, escapes), as the upstream reads it.

pub mod body;
pub mod head;
pub mod origin;
pub mod path;
pub mod write;

pub use body::{BodyKind, ChunkedDecoder, Decoded};
pub use head::{Head, HeadError, Limits};

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), plus the ones
/// this gateway always recomputes itself (`content-length`, `transfer-encoding`, `expect`).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// Is `name` a header that must not cross the proxy (ASCII case-insensitive)? Also true for any
/// header the `Connection` header of the message names (`connection_tokens`).
pub fn is_hop_by_hop(name: &str, connection_tokens: &[u8]) -> bool {
    if HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        return true;
    }
    connection_tokens
        .split(|b| *b == b',')
        .map(trim_ascii)
        .any(|tok| !tok.is_empty() && tok.eq_ignore_ascii_case(name.as_bytes()))
}

/// Strip ASCII whitespace from both ends of a byte slice.
pub fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .map(trim_ascii)
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_includes_connection_named_headers() {
        assert!(is_hop_by_hop("Keep-Alive", b""));
        assert!(is_hop_by_hop("x-trace", b"close, X-Trace"));
        assert!(!is_hop_by_hop("mcp-session-id", b"close"));
        assert!(!is_hop_by_hop("accept", b""));
    }

    #[test]
    fn tokens() {
        assert!(has_token(b"gzip, chunked", "chunked"));
        assert!(!has_token(b"gzip", "chunked"));
        assert_eq!(trim_ascii(b"  a b \t"), b"a b");
        assert_eq!(trim_ascii(b"   "), b"");
    }
}
