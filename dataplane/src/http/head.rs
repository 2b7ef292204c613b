//! Request and response heads. A [`Head`] owns one byte buffer that is reused from message to
//! message on a connection; method, target, reason and headers are spans into it, so parsing
//! a head allocates nothing once the buffer has grown to the connection's usual size.

use std::ops::Range;

/// Most headers one message may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 96;

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest head (request line + headers) in bytes.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 32 * 1024 }
    }
}

/// Why a head could not be parsed. Each maps to one HTTP status in `crate::error`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("the request head is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the message has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed HTTP head: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
}

fn malformed(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => HeadError::Version,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status line"),
        httparse::Error::Token => HeadError::Malformed("invalid token in request line"),
    }
}

/// A parsed request or response head.
#[derive(Debug, Default, Clone)]
pub struct Head {
    raw: Vec<u8>,
    /// Request method (empty for responses).
    method: Range<usize>,
    /// Request target (empty for responses).
    target: Range<usize>,
    /// Response reason phrase (empty for requests).
    reason: Range<usize>,
    /// Response status code (0 for requests).
    pub status: u16,
    /// Minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

/// Where `part` lies inside `base`. httparse hands back slices of its input, except for
/// defaults it substitutes (an empty reason when the reason phrase is not UTF-8, say), which
/// point elsewhere: those become an empty span instead of an out-of-range one.
fn span(base: &[u8], part: &[u8]) -> Range<usize> {
    let (b, p) = (base.as_ptr() as usize, part.as_ptr() as usize);
    if part.is_empty() || p < b || p + part.len() > b + base.len() {
        return 0..0;
    }
    p - b..p - b + part.len()
}

impl Head {
    /// Parse a request head from the start of `input`. `Ok(None)`: need more bytes.
    /// `Ok(Some(n))`: the head is the first `n` bytes of `input`.
    pub fn parse_request(&mut self, input: &[u8], limits: Limits) -> Result<Option<usize>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(input).map_err(malformed)? {
            httparse::Status::Partial => return check_partial(input, limits),
            httparse::Status::Complete(n) => n,
        };
        if n > limits.max_head_bytes {
            return Err(HeadError::TooLarge { limit: limits.max_head_bytes });
        }
        self.reset(&input[..n]);
        let base = input;
        self.method = span(base, req.method.unwrap_or_default().as_bytes());
        self.target = span(base, req.path.unwrap_or_default().as_bytes());
        self.minor_version = req.version.unwrap_or(1);
        self.record_headers(base, req.headers);
        Ok(Some(n))
    }

    /// Parse a response head from the start of `input`; like [`Head::parse_request`].
    pub fn parse_response(&mut self, input: &[u8], limits: Limits) -> Result<Option<usize>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let n = match res.parse(input).map_err(malformed)? {
            httparse::Status::Partial => return check_partial(input, limits),
            httparse::Status::Complete(n) => n,
        };
        if n > limits.max_head_bytes {
            return Err(HeadError::TooLarge { limit: limits.max_head_bytes });
        }
        self.reset(&input[..n]);
        self.status = res.code.unwrap_or(0);
        self.reason = span(input, res.reason.unwrap_or_default().as_bytes());
        self.minor_version = res.version.unwrap_or(1);
        self.record_headers(input, res.headers);
        Ok(Some(n))
    }

    fn reset(&mut self, bytes: &[u8]) {
        self.raw.clear();
        self.raw.extend_from_slice(bytes);
        self.headers.clear();
        self.method = 0..0;
        self.target = 0..0;
        self.reason = 0..0;
        self.status = 0;
    }

    fn record_headers(&mut self, base: &[u8], headers: &[httparse::Header<'_>]) {
        for h in headers.iter().take_while(|h| !h.name.is_empty()) {
            self.headers.push((span(base, h.name.as_bytes()), span(base, h.value)));
        }
    }

    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or("")
    }

    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.raw[self.target.clone()]).unwrap_or("")
    }

    /// Replace the request target (with its canonical form: `path::canonical`).
    pub fn set_target(&mut self, target: &str) {
        let start = self.raw.len();
        self.raw.extend_from_slice(target.as_bytes());
        self.target = start..self.raw.len();
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    pub fn reason(&self) -> &[u8] {
        &self.raw[self.reason.clone()]
    }

    /// Every header, in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| {
            (std::str::from_utf8(&self.raw[n.clone()]).unwrap_or(""), &self.raw[v.clone()])
        })
    }

    /// Every header whose name is `name` (case-insensitive), compared as bytes: a request's
    /// path looks up some thirty headers, and converting every name to `str` on each look was
    /// the gateway's costliest function of its own (3 % of a worker at peak, `perf`).
    pub(crate) fn named<'s, 'n>(&'s self, name: &'n str) -> impl Iterator<Item = &'s [u8]> + use<'s, 'n> {
        self.headers.iter().filter(move |(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| &self.raw[v.clone()])
    }

    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.named(name).next()
    }

    /// First header named `name`, as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// How many headers named `name` the message has.
    pub fn header_count(&self, name: &str) -> usize {
        self.named(name).count()
    }

    /// Does the `Connection` header (or the version default) keep the connection open?
    pub fn keep_alive(&self) -> bool {
        match self.header("connection") {
            Some(v) if super::has_token(v, "close") => false,
            Some(v) if super::has_token(v, "keep-alive") => true,
            _ => self.minor_version >= 1,
        }
    }
}

fn check_partial(input: &[u8], limits: Limits) -> Result<Option<usize>, HeadError> {
    if input.len() > limits.max_head_bytes {
        Err(HeadError::TooLarge { limit: limits.max_head_bytes })
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"POST /mcp?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\nMcp-Session-Id: s1\r\n\r\n{}";

    #[test]
    fn parses_request_at_every_split() {
        for split in 0..REQ.len() {
            let mut h = Head::default();
            let first = h.parse_request(&REQ[..split], Limits::default()).unwrap();
            if split < REQ.len() - 2 {
                assert_eq!(first, None, "split {split}");
            }
            let n = h.parse_request(REQ, Limits::default()).unwrap().unwrap();
            assert_eq!(n, REQ.len() - 2);
            assert_eq!(h.method(), "POST");
            assert_eq!(h.target(), "/mcp?x=1");
            assert_eq!(h.path(), "/mcp");
            assert_eq!(h.header_str("mcp-session-id"), Some("s1"));
            assert_eq!(h.header_count("host"), 1);
            assert!(h.keep_alive());
        }
    }

    #[test]
    fn oversized_head_is_rejected_before_completion() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 100));
        let mut h = Head::default();
        assert_eq!(
            h.parse_request(&big, Limits { max_head_bytes: 64 }),
            Err(HeadError::TooLarge { limit: 64 })
        );
    }

    #[test]
    fn too_many_headers() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            req.extend(format!("h{i}: v\r\n").as_bytes());
        }
        req.extend(b"\r\n");
        let mut h = Head::default();
        assert_eq!(
            h.parse_request(&req, Limits { max_head_bytes: 1 << 20 }),
            Err(HeadError::TooManyHeaders)
        );
    }

    #[test]
    fn malformed_request_line() {
        let mut h = Head::default();
        assert!(matches!(
            h.parse_request(b"GET /\x01 HTTP/1.1\r\n\r\n", Limits::default()),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(h.parse_request(b"GET / HTTP/2.0\r\n\r\n", Limits::default()), Err(HeadError::Version));
    }

    /// Found by the `http_head` fuzz target: a reason phrase that is not UTF-8 made httparse
    /// return a slice outside the input, and the span arithmetic overflowed.
    #[test]
    fn non_utf8_reason_phrase() {
        let raw = include_bytes!("../../tests/regressions/http_head-non-utf8-reason.bin");
        for cut in 0..=raw.len() {
            let mut h = Head::default();
            if let Ok(Some(_)) = h.parse_response(&raw[..cut], Limits::default()) {
                assert!(h.reason().len() <= cut);
                let _ = h.headers().count();
            }
        }
    }

    #[test]
    fn response_head_and_keep_alive() {
        let mut h = Head::default();
        let raw = b"HTTP/1.0 202 Accepted\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(h.parse_response(raw, Limits::default()).unwrap(), Some(raw.len()));
        assert_eq!(h.status, 202);
        assert_eq!(h.reason(), b"Accepted");
        assert!(h.keep_alive());
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        h.parse_response(raw, Limits::default()).unwrap();
        assert!(!h.keep_alive());
    }
}
