//! The upstream side: per-worker connection pools, connecting (with TLS origination), sending a
//! request and reading the response head. A request that fails on a pooled connection before
//! any response byte arrived is retried once on a fresh connection (the pooled one had been
//! closed by the upstream while idle).

use super::io::{deadline, ReadBuf, Stream};
use super::Worker;
use crate::config::Upstream;
use crate::error::ProxyError;
use crate::http::{self, Head};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A connection to an upstream with its read buffer and last response head.
pub struct UpConn {
    pub stream: Stream,
    pub rbuf: ReadBuf,
    pub head: Head,
}

/// Idle upstream connections of one worker, by upstream pool key.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<String, Vec<UpConn>>>,
}

impl Pool {
    fn take(&self, key: &str) -> Option<UpConn> {
        self.idle.borrow_mut().get_mut(key).and_then(Vec::pop)
    }

    /// Return a connection whose last exchange ended cleanly.
    pub fn put(&self, key: &str, conn: UpConn, max_idle: usize) {
        if !conn.rbuf.is_empty() {
            return; // the upstream sent bytes nobody asked for: not reusable
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key.to_owned()).or_default();
        if list.len() < max_idle {
            list.push(conn);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

async fn resolve(up: &Upstream) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = up.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, up.port)]);
    }
    let target = (up.host.clone(), up.port);
    // getaddrinfo blocks: run it off the executor's thread.
    glommio::executor()
        .spawn_blocking(move || target.to_socket_addrs().map(Iterator::collect::<Vec<_>>))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", up.host))
}

async fn connect(w: &Worker, up: &Upstream, timeout: Duration) -> Result<UpConn, ProxyError> {
    let fail = |reason: String| {
        w.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
        ProxyError::UpstreamConnect { upstream: up.name.clone(), reason }
    };
    let addrs = resolve(up).await.map_err(fail)?;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                w.metrics.upstream_connects.fetch_add(1, Ordering::Relaxed);
                let stream = match &up.tls {
                    None => Stream::Plain(tcp),
                    Some((cfg, name)) => {
                        let conn = futures_rustls::TlsConnector::from(cfg.clone());
                        match deadline(timeout, conn.connect(name.clone(), tcp)).await {
                            Some(Ok(s)) => Stream::ClientTls(Box::new(s)),
                            Some(Err(e)) => return Err(fail(format!("TLS handshake with {addr} failed: {e}"))),
                            None => return Err(fail(format!("TLS handshake with {addr} timed out"))),
                        }
                    }
                };
                return Ok(UpConn { stream, rbuf: ReadBuf::default(), head: Head::default() });
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(fail(last))
}

/// Send `request` (head and body, already encoded) and read the response head, skipping
/// interim 1xx responses. The returned connection's `head` holds the response head and its
/// `rbuf` the first body bytes.
pub async fn send(w: &Worker, up: &Upstream, request: &[u8], connect_timeout: Duration, first_byte: Duration, max_head: usize) -> Result<UpConn, ProxyError> {
    for attempt in 0..2 {
        let (mut c, reused) = match w.pool.take(&up.pool_key) {
            Some(c) if attempt == 0 => {
                w.metrics.upstream_reused.fetch_add(1, Ordering::Relaxed);
                (c, true)
            }
            _ => (connect(w, up, connect_timeout).await?, false),
        };
        if let Err(e) = async { c.stream.write_all(request).await?; c.stream.flush().await }.await {
            if reused {
                continue;
            }
            w.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::UpstreamConnect { upstream: up.name.clone(), reason: format!("sending the request failed: {e}") });
        }
        let limits = http::Limits { max_head_bytes: max_head };
        let got = deadline(first_byte, async {
            let mut received = 0usize;
            loop {
                match c.head.parse_response(c.rbuf.data(), limits) {
                    Ok(Some(n)) => {
                        c.rbuf.consume(n);
                        if (100..200).contains(&c.head.status) && c.head.status != 101 {
                            continue;
                        }
                        return Ok(true);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("invalid response head: {e}")),
                }
                match c.rbuf.fill(&mut c.stream, max_head + super::io::READ_BUF).await {
                    Ok(0) | Err(_) if received == 0 && reused => return Ok(false),
                    Ok(0) => return Err("connection closed before a complete response head".to_string()),
                    Err(e) => return Err(format!("reading the response failed: {e}")),
                    Ok(n) => received += n,
                }
            }
        })
        .await;
        match got {
            Some(Ok(true)) => return Ok(c),
            Some(Ok(false)) => continue,
            Some(Err(reason)) => {
                w.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                return Err(ProxyError::UpstreamProtocol { upstream: up.name.clone(), reason });
            }
            None => {
                w.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(ProxyError::UpstreamTimeout { upstream: up.name.clone(), phase: "waiting for the response head", secs: first_byte.as_secs_f64() });
            }
        }
    }
    Err(ProxyError::UpstreamConnect { upstream: up.name.clone(), reason: "the connection closed twice before answering".into() })
}
