//! Server-Sent Events codec, sans-io (WHATWG HTML §9.2). Feeds on body bytes as they arrive
//! and yields whole events; an event keeps its exact wire bytes so that an event no hook
//! changed is forwarded byte for byte. Lines may end in CRLF, LF or CR, split anywhere.

/// One SSE event (or a block of comments only, such as a keep-alive `: ping`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The exact bytes of the event, blank line included.
    pub raw: Vec<u8>,
    /// `data:` lines joined with `\n`; `None` when the block had no data line.
    pub data: Option<String>,
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

impl Event {
    /// Encode with new data, keeping `event`, `id` and `retry`.
    pub fn encode_with_data(&self, data: &str, out: &mut Vec<u8>) {
        if let Some(e) = &self.event {
            line(out, "event", e);
        }
        if let Some(id) = &self.id {
            line(out, "id", id);
        }
        if let Some(r) = self.retry {
            line(out, "retry", &r.to_string());
        }
        for l in data.split('\n') {
            line(out, "data", l);
        }
        out.push(b'\n');
    }
}

fn line(out: &mut Vec<u8>, field: &str, value: &str) {
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("sent an SSE event larger than limits.max_sse_event_bytes ({0} bytes)")]
    TooLarge(usize),
}

/// Incremental SSE parser.
#[derive(Debug)]
pub struct Parser {
    max_event: usize,
    line: Vec<u8>,
    current: Event,
    after_cr: AfterCr,
    /// Bytes of a leading UTF-8 BOM matched so far; 3 (or `STARTED`) once past the start.
    bom: usize,
}

/// What a CR just seen means for an LF right after it (CRLF is one line ending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterCr {
    No,
    /// A CR ended a line inside the event: the LF belongs to the event's raw bytes.
    InEvent,
    /// A CR ended the event, whose raw bytes were given an LF already: drop the LF.
    Dispatched,
}

const BOM: &[u8] = b"\xef\xbb\xbf";
/// The line buffer a stream keeps between lines; a longer line's buffer is freed after it.
const KEEP_LINE: usize = 16 * 1024;
const STARTED: usize = usize::MAX;

impl Parser {
    pub fn new(max_event: usize) -> Self {
        Parser { max_event, line: Vec::new(), current: Event::default(), after_cr: AfterCr::No, bom: 0 }
    }

    /// Bytes of an event begun but not finished (what is held back from the client).
    pub fn pending(&self) -> usize {
        self.current.raw.len() + self.line.len()
    }

    /// Feed body bytes; each event completed by them is pushed onto `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        for &b in input {
            if self.bom != STARTED {
                if self.bom < BOM.len() && b == BOM[self.bom] {
                    self.bom += 1;
                    if self.bom == BOM.len() {
                        self.bom = STARTED;
                    }
                    continue;
                }
                self.bom = STARTED;
            }
            match std::mem::replace(&mut self.after_cr, AfterCr::No) {
                AfterCr::InEvent if b == b'\n' => {
                    self.current.raw.push(b);
                    continue;
                }
                AfterCr::Dispatched if b == b'\n' => continue,
                _ => {}
            }
            match b {
                b'\n' | b'\r' => {
                    self.current.raw.extend_from_slice(&self.line);
                    self.current.raw.push(b);
                    self.after_cr = match (b, self.line.is_empty()) {
                        // The blank line that ends the event: its raw bytes end with CRLF now
                        // (an LF after the CR is then dropped), so an agent's parser that
                        // waits to see whether an LF follows a CR is not left holding the event
                        // until the next one arrives.
                        (b'\r', true) => {
                            self.current.raw.push(b'\n');
                            AfterCr::Dispatched
                        }
                        (b'\r', false) => AfterCr::InEvent,
                        _ => AfterCr::No,
                    };
                    self.end_line(out);
                }
                _ => {
                    self.line.push(b);
                    if self.pending() > self.max_event {
                        return Err(SseError::TooLarge(self.max_event));
                    }
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        if self.line.is_empty() {
            let ev = std::mem::take(&mut self.current);
            out.push(ev);
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line[0] != b':' {
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(p) => {
                    let v = &line[p + 1..];
                    (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &b""[..]),
            };
            let value = String::from_utf8_lossy(value);
            match field {
                b"data" => match &mut self.current.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => self.current.data = Some(value.into_owned()),
                },
                b"event" => self.current.event = Some(value.into_owned()),
                b"id" if !value.contains('\0') => self.current.id = Some(value.into_owned()),
                b"retry" => {
                    if let Ok(ms) = value.parse() {
                        self.current.retry = Some(ms);
                    }
                }
                _ => {}
            }
        }
        // The line buffer is kept for the next line, unless one long line grew it.
        if line.capacity() <= KEEP_LINE {
            self.line = line;
            self.line.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_split(input: &[u8], splits: &[usize]) -> Vec<Event> {
        let mut p = Parser::new(1 << 20);
        let mut out = Vec::new();
        let mut last = 0;
        for &s in splits.iter().chain(std::iter::once(&input.len())) {
            let s = s.clamp(last, input.len());
            p.feed(&input[last..s], &mut out).unwrap();
            last = s;
        }
        out
    }

    const STREAM: &[u8] = b"\xef\xbb\xbf: ping\n\nevent: message\r\nid: 7\r\nretry: 1500\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\ndata:x\rdata\r\r";

    #[test]
    fn parses_fields_and_line_endings_at_every_split() {
        let whole = parse_split(STREAM, &[]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].data, None);
        assert_eq!(whole[0].raw, b": ping\n\n");
        assert_eq!(whole[1].data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(whole[1].event.as_deref(), Some("message"));
        assert_eq!(whole[1].id.as_deref(), Some("7"));
        assert_eq!(whole[1].retry, Some(1500));
        assert_eq!(whole[2].data.as_deref(), Some("x\n"));
        // Every event's raw bytes are whole (a CR that ends an event is followed by its LF, one
        // added after a bare CR); nothing of one event is left for the next.
        assert_eq!(whole[1].raw, b"event: message\r\nid: 7\r\nretry: 1500\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n");
        assert_eq!(whole[2].raw, b"data:x\rdata\r\r\n");
        let raw: Vec<u8> = whole.iter().flat_map(|e| e.raw.clone()).collect();
        assert_eq!(raw, [&STREAM[3..], b"\n"].concat());
        for split in 0..STREAM.len() {
            assert_eq!(parse_split(STREAM, &[split]), whole, "split {split}");
        }
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut p = Parser::new(16);
        let mut out = Vec::new();
        assert_eq!(p.feed(&[b'd'; 32], &mut out), Err(SseError::TooLarge(16)));
    }

    #[test]
    fn re_encoding_keeps_fields() {
        let ev = &parse_split(b"event: message\nid: 9\ndata: old\n\n", &[])[0];
        let mut out = Vec::new();
        ev.encode_with_data("new\nline", &mut out);
        let again = &parse_split(&out, &[])[0];
        assert_eq!(again.data.as_deref(), Some("new\nline"));
        assert_eq!(again.id.as_deref(), Some("9"));
        assert_eq!(again.event.as_deref(), Some("message"));
    }

    proptest! {
        #[test]
        fn any_split_gives_same_events(events in proptest::collection::vec("[a-z{}\":, ]{0,20}", 1..5), a in 0usize..200, b in 0usize..200) {
            let mut wire = Vec::new();
            for e in &events {
                Event::default().encode_with_data(e, &mut wire);
            }
            let whole = parse_split(&wire, &[]);
            prop_assert_eq!(whole.len(), events.len());
            for (ev, data) in whole.iter().zip(&events) {
                prop_assert_eq!(ev.data.as_deref(), Some(data.as_str()));
            }
            let (a, b) = (a.min(b), a.max(b));
            prop_assert_eq!(parse_split(&wire, &[a, b]), whole);
        }
    }
}
