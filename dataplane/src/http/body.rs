//! Body framing: which of Content-Length, chunked or close-delimited a message uses, and a
//! chunked decoder that works on whatever bytes have arrived so far.

use super::head::Head;
use std::ops::Range;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes the connection (responses only).
    CloseDelimited,
}

/// Why the framing headers of a message cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("Content-Length is not a valid number")]
    BadLength,
    #[error("conflicting Content-Length headers")]
    ConflictingLength,
    #[error("both Transfer-Encoding and Content-Length are present")]
    LengthAndChunked,
    #[error("a request's Transfer-Encoding must end in chunked")]
    UnsupportedCoding,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

fn content_length(head: &Head) -> Result<Option<u64>, FramingError> {
    let mut found: Option<u64> = None;
    for value in head.named("content-length") {
        for part in value.split(|b| *b == b',') {
            let part = super::trim_ascii(part);
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(FramingError::BadLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FramingError::BadLength)?;
            match found {
                Some(prev) if prev != n => return Err(FramingError::ConflictingLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn transfer_encoding_is_chunked(head: &Head) -> Option<bool> {
    let mut last: Option<&[u8]> = None;
    for (name, value) in head.headers() {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if let Some(tok) = value.rsplit(|b| *b == b',').next() {
                last = Some(super::trim_ascii(tok));
            }
        }
    }
    last.map(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Framing of a request body. Ambiguous framing (the request-smuggling shapes) is refused.
pub fn request_body_kind(head: &Head) -> Result<BodyKind, FramingError> {
    let cl = content_length(head)?;
    match transfer_encoding_is_chunked(head) {
        Some(_) if cl.is_some() => Err(FramingError::LengthAndChunked),
        Some(true) => Ok(BodyKind::Chunked),
        Some(false) => Err(FramingError::UnsupportedCoding),
        None => Ok(match cl {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }),
    }
}

/// Framing of a response body, given the request method it answers.
pub fn response_body_kind(head: &Head, request_method: &str) -> Result<BodyKind, FramingError> {
    if request_method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
    {
        return Ok(BodyKind::None);
    }
    match transfer_encoding_is_chunked(head) {
        Some(true) => return Ok(BodyKind::Chunked),
        Some(false) => return Ok(BodyKind::CloseDelimited),
        None => {}
    }
    Ok(match content_length(head)? {
        Some(0) => BodyKind::None,
        Some(n) => BodyKind::Length(n),
        None => BodyKind::CloseDelimited,
    })
}

/// One step of the chunked decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes at this range of the input given to [`ChunkedDecoder::decode`].
    Data(Range<usize>),
    /// The input ended inside framing; give more bytes.
    NeedMore,
    /// The last chunk and the trailers are read.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    SizeLf,
    Ext,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Longest chunk-size line accepted (hex digits plus extensions).
const MAX_SIZE_LINE: usize = 1024;

/// Incremental decoder for `Transfer-Encoding: chunked`.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: usize,
    line_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size, size: 0, digits: 0, line_len: 0 }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input`. Returns how many bytes of `input` were consumed and what was found.
    /// Call again with the unconsumed rest until it answers `NeedMore` or `Done`.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Decoded), FramingError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(FramingError::BadChunk("chunk size too large"));
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size * 16 + d;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = State::Ext,
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err(FramingError::BadChunk("invalid chunk size")),
                },
                State::Ext => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(FramingError::BadChunk("chunk extension too long"));
                    }
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("expected LF after chunk size"));
                    }
                    self.state = if self.size == 0 { State::TrailerStart } else { State::Data(self.size) };
                }
                State::Data(left) => {
                    let take = (left as usize).min(input.len() - i);
                    let rest = left - take as u64;
                    self.state = if rest == 0 { State::DataCr } else { State::Data(rest) };
                    return Ok((i + take, Decoded::Data(i..i + take)));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(FramingError::BadChunk("expected CRLF after chunk data"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("expected CRLF after chunk data"));
                    }
                    self.state = State::Size;
                    self.size = 0;
                    self.digits = 0;
                    self.line_len = 0;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' { State::EndLf } else { State::TrailerLine };
                    self.line_len = 1;
                }
                State::TrailerLine => {
                    self.line_len += 1;
                    if self.line_len > 8 * MAX_SIZE_LINE {
                        return Err(FramingError::BadChunk("trailer too long"));
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("expected LF in trailer"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("expected LF after last chunk"));
                    }
                    self.state = State::Done;
                    return Ok((i + 1, Decoded::Done));
                }
                State::Done => return Ok((i, Decoded::Done)),
            }
            i += 1;
        }
        if let State::Data(_) = self.state {
            return Ok((i, Decoded::NeedMore));
        }
        Ok((i, if self.state == State::Done { Decoded::Done } else { Decoded::NeedMore }))
    }
}

/// Decode a whole chunked body held in memory (tests and fuzzing); `None` if it is incomplete.
pub fn decode_all(input: &[u8]) -> Result<Option<Vec<u8>>, FramingError> {
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let (n, d) = dec.decode(&input[pos..])?;
        match d {
            Decoded::Data(r) => out.extend_from_slice(&input[pos + r.start..pos + r.end]),
            Decoded::Done => return Ok(Some(out)),
            Decoded::NeedMore if pos + n >= input.len() => return Ok(None),
            Decoded::NeedMore => {}
        }
        pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::Limits;
    use proptest::prelude::*;

    fn head(raw: &str) -> Head {
        let mut h = Head::default();
        h.parse_request(raw.as_bytes(), Limits::default()).unwrap().unwrap();
        h
    }

    #[test]
    fn request_framing() {
        assert_eq!(request_body_kind(&head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")), Ok(BodyKind::Length(5)));
        assert_eq!(request_body_kind(&head("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")), Ok(BodyKind::Length(5)));
        assert_eq!(request_body_kind(&head("GET / HTTP/1.1\r\n\r\n")), Ok(BodyKind::None));
        assert_eq!(request_body_kind(&head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")), Ok(BodyKind::Chunked));
        assert_eq!(
            request_body_kind(&head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")),
            Err(FramingError::ConflictingLength)
        );
        assert_eq!(
            request_body_kind(&head("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")),
            Err(FramingError::LengthAndChunked)
        );
        assert_eq!(request_body_kind(&head("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")), Err(FramingError::BadLength));
        assert_eq!(request_body_kind(&head("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n")), Err(FramingError::BadLength));
        assert_eq!(
            request_body_kind(&head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")),
            Err(FramingError::UnsupportedCoding)
        );
    }

    #[test]
    fn response_framing() {
        let mut h = Head::default();
        h.parse_response(b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n", Limits::default()).unwrap();
        assert_eq!(response_body_kind(&h, "POST"), Ok(BodyKind::None));
        h.parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", Limits::default()).unwrap();
        assert_eq!(response_body_kind(&h, "GET"), Ok(BodyKind::CloseDelimited));
        assert_eq!(response_body_kind(&h, "HEAD"), Ok(BodyKind::None));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(decode_all(raw).unwrap().unwrap(), b"Wikipedia");
        assert_eq!(decode_all(&raw[..raw.len() - 1]).unwrap(), None);
    }

    #[test]
    fn chunked_errors() {
        assert!(decode_all(b"zz\r\n").is_err());
        assert!(decode_all(b"4\r\nWikiXX").is_err());
        assert!(decode_all(b"ffffffffffffffff\r\n").is_err());
        assert!(decode_all(b"\r\n").is_err());
    }

    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend(c);
            out.extend(b"\r\n");
        }
        out.extend(b"0\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn chunked_round_trip_at_every_split(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6), split in 0usize..400) {
            let wire = encode(&chunks);
            let expected: Vec<u8> = chunks.concat();
            let split = split.min(wire.len());
            let mut dec = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut done = false;
            for part in [&wire[..split], &wire[split..]] {
                let mut pos = 0;
                while pos < part.len() && !done {
                    let (n, d) = dec.decode(&part[pos..]).unwrap();
                    match d {
                        Decoded::Data(r) => out.extend_from_slice(&part[pos + r.start..pos + r.end]),
                        Decoded::Done => done = true,
                        Decoded::NeedMore => {}
                    }
                    pos += n;
                }
            }
            prop_assert!(done);
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn chunked_decoder_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_all(&input);
        }
    }
}
