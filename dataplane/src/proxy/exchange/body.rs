//! The upstream body's framing, decoded from the connection's read buffer.

use crate::proxy::io::ReadBuf;
use crate::http::body::{BodyKind, ChunkedDecoder, Decoded};

/// Decodes the upstream body framing from the connection's read buffer.
pub(super) struct BodyReader {
    pub(super) kind: BodyKind,
    chunked: ChunkedDecoder,
    left: u64,
    pub(super) done: bool,
}

impl BodyReader {
    pub(super) fn new(kind: BodyKind) -> Self {
        let left = if let BodyKind::Length(n) = kind { n } else { 0 };
        BodyReader { kind, chunked: ChunkedDecoder::default(), left, done: kind == BodyKind::None }
    }

    /// Hand every decoded body byte now in `rbuf` to `f`.
    pub(super) fn drain(&mut self, rbuf: &mut ReadBuf, mut f: impl FnMut(&[u8])) -> Result<(), String> {
        while !self.done && !rbuf.is_empty() {
            match self.kind {
                BodyKind::Length(_) => {
                    let take = (self.left as usize).min(rbuf.data().len());
                    f(&rbuf.data()[..take]);
                    rbuf.consume(take);
                    self.left -= take as u64;
                    self.done = self.left == 0;
                }
                BodyKind::CloseDelimited => {
                    f(rbuf.data());
                    let n = rbuf.data().len();
                    rbuf.consume(n);
                }
                BodyKind::Chunked => {
                    let (used, d) = self.chunked.decode(rbuf.data()).map_err(|e| e.to_string())?;
                    if let Decoded::Data(r) = &d {
                        f(&rbuf.data()[r.clone()]);
                    }
                    rbuf.consume(used);
                    self.done = d == Decoded::Done;
                }
                BodyKind::None => self.done = true,
            }
        }
        Ok(())
    }

    /// The upstream closed: fine only for a close-delimited body.
    pub(super) fn eof(&mut self) -> Result<(), String> {
        if self.kind == BodyKind::CloseDelimited {
            self.done = true;
            Ok(())
        } else {
            Err("the upstream closed the connection in the middle of the body".into())
        }
    }
}
