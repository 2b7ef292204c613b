//! Both directions of the pipes: whole lines read from one side, each message through the
//! chain (the same as on an HTTP route) and on to the other side, or answered back to its sender
//! when the gateway refuses it.

use crate::config::{Config, Route};
use crate::error::ProxyError;
use crate::hooks::{self, Direction, Outcome, RequestCtx};
use crate::identity::Identity;
use crate::jsonrpc::{self, Kind};
use crate::policy::hook::SessionsHandle;
use crate::proxy::exchange::{observe, reused_request_id, with_scratch};
use crate::proxy::Worker;
use crate::runtime::Shared;
use simd_json::prelude::*;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The client's address in records: the client is a local process.
const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// One side's output: whole lines, written by whichever thread has something for it.
pub(super) struct Pipe {
    out: std::sync::Mutex<Option<Box<dyn Write + Send>>>,
}

impl Pipe {
    pub(super) fn new(w: impl Write + Send + 'static) -> Self {
        Pipe { out: std::sync::Mutex::new(Some(Box::new(w))) }
    }

    /// Write one message and its newline; `Err` once the reader is gone or the pipe closed.
    pub(super) fn send(&self, line: &[u8]) -> io::Result<()> {
        let mut g = self.out.lock().map_err(|_| io::Error::other("a writer panicked"))?;
        let w = g.as_mut().ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "closed"))?;
        w.write_all(line)?;
        w.write_all(b"\n")?;
        w.flush()
    }

    /// Close it (the reader sees end of input).
    pub(super) fn close(&self) {
        if let Ok(mut g) = self.out.lock() {
            g.take();
        }
    }
}

/// What both directions share.
pub(super) struct Link {
    pub(super) shared: Arc<Shared>,
    pub(super) route: Route,
    pub(super) identity: Identity,
    /// The session's id (the gateway's; stdio has no MCP session id, so it keys the store too).
    pub(super) session: String,
    /// The server's program name (not its arguments: they may hold secrets).
    pub(super) upstream: String,
    /// The secrets given to the server in its environment: scrubbed from what it sends back.
    pub(super) scrub: Option<Arc<crate::config::credential::Injected>>,
}

impl Link {
    pub(super) fn ctx(&self, worker: usize, cfg: &Config) -> RequestCtx {
        RequestCtx {
            worker,
            upstream: self.upstream.clone(),
            client: LOCAL,
            mcp_session_id: Some(self.session.clone()),
            gateway_session_id: Some(self.session.clone()),
            detect: cfg.detect.clone(),
            identity: Some(self.identity.clone()),
            credential: self.scrub.clone(),
            policy: cfg.policy.clone(),
            ..RequestCtx::blank(self.route.label.clone(), std::time::Instant::now())
        }
    }
}

/// How a line read from a pipe ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// A whole line is in the buffer (without its `\n` or `\r\n`).
    Line,
    /// A line of this many bytes, longer than allowed: skipped to its end, not kept.
    TooLong(usize),
    /// End of input.
    End,
}

/// Read the next line into `buf`, keeping at most `max` bytes of it; a longer line is read to
/// its end and reported, so the next line starts clean. A last line without `\n` counts.
pub(super) fn next_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Next> {
    buf.clear();
    let mut total = 0usize;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(match total {
                0 => Next::End,
                n if n > max => Next::TooLong(n),
                _ => Next::Line,
            });
        }
        let newline = memchr::memchr(b'\n', avail);
        let chunk = &avail[..newline.unwrap_or(avail.len())];
        total += chunk.len();
        if total <= max {
            buf.extend_from_slice(chunk);
        } else if !buf.is_empty() {
            buf.clear();
        }
        let used = newline.map_or(avail.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            if total > max {
                return Ok(Next::TooLong(total));
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Next::Line);
        }
    }
}

/// What became of one message.
pub(super) struct Step<'a> {
    /// To the other side: `None` when nothing goes on, else the bytes (the line as read when
    /// unchanged).
    forward: Option<std::borrow::Cow<'a, [u8]>>,
    /// Back to the sender: the gateway's answers (refusals), one line.
    back: Option<Vec<u8>>,
}

/// A message the gateway does not pass on: the error, the id to answer, and who gets the
/// answer — a request's sender, or the asker of a refused answer (a client waiting for its
/// call's result, a server waiting for its sampling result).
pub(super) struct Unpassed {
    error: ProxyError,
    id: Option<String>,
    to: Option<Direction>,
}

/// One message through the chain. `line` is what the sender wrote.
pub(super) fn message<'a>(w: &Worker, link: &Link, cfg: &Config, dir: Direction, line: &'a [u8]) -> Step<'a> {
    let mut ctx = link.ctx(w.id, cfg);
    let done = with_scratch(w, line, |buf| {
        let mut parsed = match jsonrpc::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                // An unreadable line from the client is answered (id null). One from the
                // server is dropped — unless a lenient reading finds it answering a call the
                // client still waits for: the client then gets an error for that call.
                return Err(match dir {
                    Direction::Request => Unpassed { error: ProxyError::JsonRpc(e), id: None, to: Some(dir) },
                    Direction::Response => {
                        let error = ProxyError::UpstreamProtocol { upstream: link.upstream.clone(), reason: format!("the server wrote a line that is not JSON-RPC ({})", body_problem(&e)) };
                        let id = awaited_id(link, line);
                        Unpassed { error, to: id.as_ref().map(|_| Direction::Request), id }
                    }
                });
            }
        };
        let unpassed = |error: ProxyError| {
            let single = (!parsed.batch).then(|| &parsed.infos[0]);
            let (id, to) = match single.map(|i| i.kind) {
                Some(Kind::Request) => (single.and_then(|i| i.id.clone()), Some(dir)),
                Some(Kind::Response | Kind::Error) => (single.and_then(|i| i.id.clone()), Some(other(dir))),
                Some(Kind::Notification | Kind::Document) => (None, None),
                None => (None, Some(dir)),
            };
            Unpassed { error, id, to }
        };
        // Fail closed: a message the gateway cannot record is not forwarded.
        if w.emitter.as_ref().is_some_and(|e| !e.accepting()) {
            return Err(unpassed(ProxyError::RecordingUnavailable));
        }
        if dir == Direction::Request {
            reused_request_id(w, &ctx, &parsed).map_err(unpassed)?;
            remember_initialize(link, &parsed);
        }
        observe(w, &ctx, &link.route, dir, &mut parsed, None);
        let batch = parsed.batch;
        Ok((hooks::process_body(&w.chain, &mut ctx, dir, &mut parsed), batch))
    });
    if let Some(em) = &w.emitter {
        drain_overflow(em);
    }
    match done {
        Ok((Outcome::Unchanged, _)) => Step { forward: Some(line.into()), back: None },
        Ok((Outcome::Rewritten { body, answers }, batch)) => Step { forward: Some(body.into()), back: (!answers.is_empty()).then(|| hooks::join_answers(batch, answers)) },
        Ok((Outcome::Answer(b), _)) => Step { forward: None, back: (!b.is_empty()).then_some(b) },
        Err(Unpassed { error, id, to }) => {
            let side = if dir == Direction::Request { "client" } else { "server" };
            tracing::warn!(route = %link.route.name, from = side, error = %error, "message not forwarded");
            w.record_refusal(Some(&ctx), Some(&link.route.label), LOCAL, &error);
            let answer = || jsonrpc::error_body(id.as_deref(), error.code(), error.title(), &error.to_string());
            match to {
                Some(d) if d == dir => Step { forward: None, back: Some(answer()) },
                Some(_) => Step { forward: Some(answer().into()), back: None },
                None => Step { forward: None, back: None },
            }
        }
    }
}

/// The id of a call the client still waits for, when `line` (which the gateway refused to
/// read) still reads as an answer to it with a lenient parser; that call is no longer pending.
pub(super) fn awaited_id(link: &Link, line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    if v.get("method").is_some() {
        return None;
    }
    let id = v.get("id").filter(|id| id.is_string() || id.is_number())?.to_string();
    link.shared.sessions.with(&link.session, |s| s.pending_client.remove(&id)).flatten().map(|_| id)
}

/// What is wrong with an unreadable line, without quoting any of it.
pub(super) fn body_problem(e: &jsonrpc::BodyError) -> &'static str {
    match e {
        jsonrpc::BodyError::Parse(_) => "not JSON",
        jsonrpc::BodyError::TooDeep => "nested too deep",
        jsonrpc::BodyError::DuplicateMember { .. } => "an object names a member twice",
        jsonrpc::BodyError::Invalid { reason, .. } => reason,
    }
}

pub(super) fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Request => Direction::Response,
        Direction::Response => Direction::Request,
    }
}

/// Over stdio the session opens with the process; `initialize` tells it who the client is.
pub(super) fn remember_initialize(link: &Link, body: &jsonrpc::Body<'_>) {
    for (info, v) in body.infos.iter().zip(&body.values) {
        if info.kind != Kind::Request || info.method.as_deref() != Some("initialize") {
            continue;
        }
        let params = v.get("params");
        let json = |k: &str| params.and_then(|p| p.get(k)).and_then(|x| serde_json::to_value(x).ok());
        link.shared.sessions.with(&link.session, |s| {
            s.client_info = json("clientInfo");
            s.client_capabilities = json("capabilities");
            s.protocol_version = params.and_then(|p| p.get("protocolVersion")).and_then(|x| x.as_str()).map(str::to_owned);
        });
    }
}

/// Events that waited in the emitter's overflow list go on before the next read, which may
/// block for a long time (an idle client): the spool writer holds later events behind them.
pub(super) fn drain_overflow(em: &crate::events::Emitter) {
    for _ in 0..5000 {
        if em.overflow_len() == 0 {
            return;
        }
        em.flush_overflow();
        if em.overflow_len() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One direction: read messages from `from`, pass each through the chain, forward to `to`,
/// answer the sender on `back`. Returns when `from` ends or `to` is gone.
pub(super) fn pump(id: usize, link: &Link, dir: Direction, from: impl Read, to: &Pipe, back: &Pipe) {
    let shared = &link.shared;
    let emitter = match &shared.recorder {
        Some(r) => match r.emitter(id) {
            Some(e) => Some(Rc::new(e)),
            None => {
                tracing::error!(worker = id, "no event queue for this direction; nothing is forwarded");
                return;
            }
        },
        None => None,
    };
    let w = Worker::new(id, shared, emitter, SessionsHandle::Stdio(shared.clone()));
    let cfg = shared.config.load_full();
    let max = cfg.limits.max_body_bytes;
    let mut reader = BufReader::with_capacity(64 * 1024, from);
    let mut line = Vec::with_capacity(64 * 1024);
    let side = if dir == Direction::Request { "client" } else { "server" };
    loop {
        let step = match next_line(&mut reader, &mut line, max) {
            Ok(Next::End) => return,
            Err(e) => {
                tracing::warn!(from = side, error = %e, "reading failed");
                return;
            }
            Ok(Next::TooLong(n)) => {
                let e = ProxyError::BodyTooLarge { limit: max };
                tracing::warn!(route = %link.route.name, from = side, bytes = n, limit = max, "message longer than limits.max_body_bytes; not forwarded");
                let ctx = link.ctx(w.id, &cfg);
                w.record_refusal(Some(&ctx), Some(&link.route.label), LOCAL, &e);
                Step { forward: None, back: (dir == Direction::Request).then(|| jsonrpc::error_body(None, e.code(), e.title(), &e.to_string())) }
            }
            Ok(Next::Line) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Next::Line) => message(&w, link, &cfg, dir, &line),
        };
        if let Some(b) = step.back {
            if back.send(&b).is_err() && dir == Direction::Response {
                // The server is gone; its output still drains to the client.
                tracing::debug!("an answer to the server was not delivered: its input is closed");
            }
        }
        if let Some(f) = step.forward {
            if let Err(e) = to.send(&f) {
                tracing::info!(to = if dir == Direction::Request { "server" } else { "client" }, error = %e, "the other side stopped reading");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes `step` at a time, as a pipe might.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn lines(data: &[u8], step: usize, max: usize) -> Vec<Result<String, usize>> {
        let mut r = BufReader::with_capacity(step.max(1), Trickle { data, step });
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match next_line(&mut r, &mut buf, max).unwrap() {
                Next::End => return out,
                Next::Line => out.push(Ok(String::from_utf8(buf.clone()).unwrap())),
                Next::TooLong(n) => out.push(Err(n)),
            }
        }
    }

    #[test]
    fn lines_are_the_same_however_the_pipe_splits_them() {
        let data = b"{\"a\":1}\r\n\n{\"b\":\"0123456789abcdef\"}\n{\"c\":[1,2]}\nlast";
        let expected = lines(data, data.len(), 20);
        assert_eq!(
            expected,
            vec![Ok("{\"a\":1}".into()), Ok(String::new()), Err(24), Ok("{\"c\":[1,2]}".into()), Ok("last".into())],
            "CRLF trimmed, an empty line kept for the caller, the long line skipped whole, the last line without a newline kept"
        );
        for step in 1..=data.len() {
            assert_eq!(lines(data, step, 20), expected, "read {step} bytes at a time");
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_and_one_more_byte_does_not() {
        assert_eq!(lines(b"12345\n123456\n", 3, 5), vec![Ok("12345".into()), Err(6)]);
        assert_eq!(lines(b"123456", 1, 5), vec![Err(6)], "an oversized last line without a newline");
    }
}
