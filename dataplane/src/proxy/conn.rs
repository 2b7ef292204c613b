//! One downstream connection: TLS handshake, then a keep-alive loop of read head → read body
//! → exchange, with the client header and idle timeouts that defeat slow clients.

use super::io::{deadline, ReadBuf, Stream};
use super::{exchange, respond, Held, Worker, KEEP_BODY};
use crate::error::ProxyError;
use crate::http::body::{request_body_kind, BodyKind, ChunkedDecoder, Decoded};
use crate::http::{self, Head};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A connection counted against `limits.max_connections` from the moment it is accepted —
/// before its task first runs, so a burst of accepts cannot pass the limit — until it ends.
pub struct OpenGuard(Rc<Worker>);

impl OpenGuard {
    pub fn new(w: &Rc<Worker>) -> Self {
        w.open.set(w.open.get() + 1);
        w.metrics.active_connections.fetch_add(1, Ordering::Relaxed);
        w.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenGuard(w.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection over `limits.max_connections`: 503 with the reason (plain listeners), then close.
pub async fn refuse(w: Rc<Worker>, tcp: TcpStream, plain: bool) {
    if plain {
        let cfg = w.config();
        let e = ProxyError::Overloaded(format!("the gateway has as many connections open as it allows (limits.max_connections = {})", cfg.limits.max_connections));
        let mut stream = Stream::Plain(tcp);
        let _ = deadline(std::time::Duration::from_secs(1), respond::error(&mut stream, &e, None, false, None)).await;
        let _ = stream.close().await;
    }
}

pub async fn serve(w: Rc<Worker>, tcp: TcpStream, tls: Option<futures_rustls::TlsAcceptor>, _open: OpenGuard) {
    let _ = tcp.set_nodelay(true);
    let Ok(client) = tcp.peer_addr() else { return };
    let cfg = w.config();
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(acc) => match deadline(cfg.timeouts.client_header, acc.accept(tcp)).await {
            Some(Ok(s)) => Stream::ServerTls(Box::new(s)),
            Some(Err(e)) => {
                tracing::debug!(worker = w.id, %client, error = %e, "TLS handshake failed");
                return;
            }
            None => {
                w.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let is_tls = matches!(stream, Stream::ServerTls(_));
    // A client certificate rustls verified (mTLS listener): its names, for identity.
    let peer = match &stream {
        Stream::ServerTls(s) => s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| match crate::tls::peer_names(c) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(worker = w.id, %client, error = %e, "verified client certificate could not be read");
                None
            }
        }),
        _ => None,
    };
    let mut rbuf = ReadBuf::default();
    let mut head = Head::default();
    let mut body = Vec::new();
    let mut held = Held::new(&w);
    loop {
        let cfg = w.config();
        let limits = http::Limits { max_head_bytes: cfg.limits.max_head_bytes };
        // Idle keep-alive: wait for the first byte of the next request (or the drain signal).
        if rbuf.is_empty() {
            let first = futures_lite::future::or(
                async { deadline(cfg.timeouts.idle_keepalive, rbuf.fill(&mut stream, cfg.limits.max_head_bytes)).await },
                async {
                    super::wait_for_drain(&w).await;
                    None
                },
            )
            .await;
            match first {
                Some(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
        let started = Instant::now();
        // The whole head must arrive within the client header timeout (slow-loris defence).
        let parsed = deadline(cfg.timeouts.client_header, async {
            loop {
                match head.parse_request(rbuf.data(), limits) {
                    Ok(Some(n)) => return Ok(Some(n)),
                    Ok(None) => {}
                    Err(e) => return Err(ProxyError::from(e)),
                }
                match rbuf.fill(&mut stream, cfg.limits.max_head_bytes + super::io::READ_BUF).await {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                }
            }
        })
        .await;
        let n = match parsed {
            None => {
                w.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                w.record_refusal(None, None, client, &ProxyError::ClientTimeout);
                access_refused(&cfg, client, None, None, &ProxyError::ClientTimeout, started);
                let _ = respond::error(&mut stream, &ProxyError::ClientTimeout, None, false, None).await;
                return;
            }
            Some(Ok(Some(n))) => n,
            Some(Ok(None)) => return,
            Some(Err(e)) => {
                w.record_refusal(None, None, client, &e);
                access_refused(&cfg, client, None, None, &e, started);
                let _ = respond::error(&mut stream, &e, None, false, None).await;
                return;
            }
        };
        rbuf.consume(n);
        // Before the body is read: a name nobody gave the gateway is a rebinding page's, and
        // the path is decided on in the form the upstream will read.
        if let Err(e) = check_head(&cfg, &mut head) {
            let route = cfg.route_for(None, head.path()).map(|(_, r)| r.label.clone());
            if let ProxyError::MisdirectedHost(h) = &e {
                tracing::info!(worker = w.id, %client, host = %h, path = head.path(), "request for a host name gateway.allowed_hosts does not list refused");
            }
            w.record_refusal(None, route.as_deref(), client, &e);
            w.metrics.request_done(route.as_ref().unwrap_or(&std::sync::Arc::from("-")), crate::metrics::method_label(head.method()), e.status(), started.elapsed());
            access_refused(&cfg, client, route.as_deref(), Some(head.method()), &e, started);
            let _ = respond::error(&mut stream, &e, None, false, None).await;
            return;
        }
        let keep_alive = head.keep_alive() && !w.draining();
        match read_body(&w, &mut stream, &mut rbuf, &head, &mut body, &mut held).await {
            Ok(()) => {}
            Err(e) => {
                let route = cfg.route_for(head.header_str("host"), head.path()).map(|(_, r)| r.label.clone());
                w.record_refusal(None, route.as_deref(), client, &e);
                access_refused(&cfg, client, route.as_deref(), Some(head.method()), &e, started);
                let _ = respond::error(&mut stream, &e, None, false, None).await;
                return;
            }
        }
        // `handle` records what it refuses itself (with the exchange's fields where it has them).
        let outcome = exchange::handle(&w, &cfg, &mut stream, &head, &body, client, is_tls, peer.as_ref(), started).await;
        held.release();
        if body.capacity() > KEEP_BODY {
            body = Vec::new();
        }
        let keep = match outcome {
            Ok(k) => k && keep_alive,
            Err(e) => {
                let keep = keep_alive && e.keeps_connection();
                let route: std::sync::Arc<str> = std::sync::Arc::from("-");
                w.metrics.request_done(&route, crate::metrics::method_label(head.method()), e.status(), started.elapsed());
                if cfg.access_log {
                    // The route is looked up again only for the log line.
                    let named = cfg.route_for(head.header_str("host"), head.path()).map(|(_, r)| r.label.clone());
                    access_refused(&cfg, client, named.as_deref(), Some(head.method()), &e, started);
                }
                if respond::error(&mut stream, &e, None, keep, super::cors::reader(&cfg, &head, true)).await.is_err() {
                    return;
                }
                keep
            }
        };
        if !keep {
            let _ = stream.close().await;
            return;
        }
    }
}

/// The access-log line of a request refused before a route's stages ran.
fn access_refused(cfg: &crate::config::Config, client: std::net::SocketAddr, route: Option<&str>, method: Option<&str>, e: &ProxyError, started: Instant) {
    if cfg.access_log {
        super::access::early(client, route, method, e.status(), started.elapsed(), &e.recorded_reason());
    }
}

/// What is checked of a request head before its body is read: the `Host` check
/// (`http::origin`), headers that must come once, then the target replaced by its canonical
/// path (`http::path`; an absolute-form URL by its path first), escaped separators only on
/// routes that allow them.
fn check_head(cfg: &crate::config::Config, head: &mut Head) -> Result<(), ProxyError> {
    cfg.hosts.check(head)?;
    if let Some(name) = repeated_header(head) {
        return Err(ProxyError::BadHeader(name));
    }
    match http::path::origin_form(head.target(), head.header("host")) {
        Ok(None) => {}
        Ok(Some(t)) => head.set_target(&t),
        Err(e) => return Err(ProxyError::BadPath(e.reason())),
    }
    match http::path::canonical(head.target()) {
        Ok(None) => {}
        Ok(Some(t)) => head.set_target(&t),
        Err(e) => return Err(ProxyError::BadPath(e.reason())),
    }
    if http::path::has_encoded_separator(head.path()) && !cfg.route_for(head.header_str("host"), head.path()).is_some_and(|(_, r)| r.allow_encoded_slashes) {
        return Err(ProxyError::BadPath(
            "the request path holds an escaped '/' or '\\' (%2F, %5C), which an upstream may decode before splitting the path and so read another one; send the separator unescaped, or set allow_encoded_slashes = true on the route if its upstream needs them",
        ));
    }
    Ok(())
}

/// Headers the gateway decides on that a request may carry once: with two, the gateway would
/// read the first and an upstream maybe the last, or both joined.
const SINGLE: [&str; 8] = ["content-type", "content-encoding", "mcp-session-id", "mcp-protocol-version", "authorization", "x-api-key", "origin", "last-event-id"];

/// The first of [`SINGLE`] that the request repeats (one pass over its headers).
fn repeated_header(head: &Head) -> Option<&'static str> {
    let mut seen = 0u8;
    for (n, _) in head.headers() {
        if let Some(i) = SINGLE.iter().position(|s| s.eq_ignore_ascii_case(n)) {
            if seen & (1 << i) != 0 {
                return Some(SINGLE[i]);
            }
            seen |= 1 << i;
        }
    }
    None
}

/// Read the request body into `body` (reused across requests), enforcing the size limit and
/// answering `Expect: 100-continue`.
async fn read_body(w: &Worker, stream: &mut Stream, rbuf: &mut ReadBuf, head: &Head, body: &mut Vec<u8>, held: &mut Held<'_>) -> Result<(), ProxyError> {
    body.clear();
    let cfg = w.config();
    let max = cfg.limits.max_body_bytes;
    let kind = request_body_kind(head)?;
    if let BodyKind::Length(n) = kind {
        if n > max as u64 {
            return Err(ProxyError::BodyTooLarge { limit: max });
        }
        // Before a byte of it is read (or 100-continue sent).
        held.grow(n as usize, &cfg.limits)?;
    }
    if let Some(exp) = head.header("expect") {
        if !exp.eq_ignore_ascii_case(b"100-continue") {
            return Err(ProxyError::Expectation(String::from_utf8_lossy(exp).into_owned()));
        }
        if kind != BodyKind::None && rbuf.is_empty() && head.minor_version >= 1 {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| ProxyError::ClientTimeout)?;
        }
    }
    let read = async {
        match kind {
            BodyKind::None | BodyKind::CloseDelimited => Ok(()),
            BodyKind::Length(n) => {
                let n = n as usize;
                while body.len() < n {
                    if rbuf.is_empty() && rbuf.fill(stream, max).await.map_err(|_| ProxyError::ClientTimeout)? == 0 {
                        return Err(ProxyError::Framing(crate::http::body::FramingError::BadChunk("body ended early")));
                    }
                    let take = (n - body.len()).min(rbuf.data().len());
                    body.extend_from_slice(&rbuf.data()[..take]);
                    rbuf.consume(take);
                }
                Ok(())
            }
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::default();
                loop {
                    if rbuf.is_empty() && rbuf.fill(stream, max).await.map_err(|_| ProxyError::ClientTimeout)? == 0 {
                        return Err(ProxyError::Framing(crate::http::body::FramingError::BadChunk("body ended early")));
                    }
                    let (used, d) = dec.decode(rbuf.data())?;
                    if let Decoded::Data(r) = &d {
                        let to = body.len() + r.len();
                        if to > max {
                            return Err(ProxyError::BodyTooLarge { limit: max });
                        }
                        held.grow_to_fit(to, KEEP_BODY, max, &cfg.limits)?;
                        body.extend_from_slice(&rbuf.data()[r.clone()]);
                    }
                    rbuf.consume(used);
                    if d == Decoded::Done {
                        return Ok(());
                    }
                }
            }
        }
    };
    deadline(cfg.timeouts.client_header, read).await.unwrap_or(Err(ProxyError::ClientTimeout))
}
