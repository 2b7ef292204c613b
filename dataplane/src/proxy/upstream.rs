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

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let target = (host.to_owned(), port);
    // getaddrinfo blocks: run it off the executor's thread.
    glommio::executor()
        .spawn_blocking(move || target.to_socket_addrs().map(Iterator::collect::<Vec<_>>))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))
}

async fn connect(w: &Worker, up: &Upstream, timeout: Duration) -> Result<UpConn, ProxyError> {
    let fail = |reason: String| {
        w.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
        ProxyError::UpstreamConnect { upstream: up.name.clone(), reason }
    };
    // Through an egress proxy the TCP connection is the proxy's, the tunnel the upstream's.
    let (host, port) = up.proxy.as_ref().map_or((up.host.as_str(), up.port), |p| (p.host.as_str(), p.port));
    let addrs = resolve(host, port).await.map_err(|e| fail(via(up, e)))?;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout).await {
            Ok(mut tcp) => {
                let _ = tcp.set_nodelay(true);
                w.metrics.upstream_connects.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &up.proxy {
                    match deadline(timeout, tunnel(&mut tcp, &p.connect)).await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => return Err(fail(format!("egress proxy {} ({addr}) {e}", p.authority))),
                        None => return Err(fail(format!("egress proxy {} ({addr}) opened no tunnel to {}:{} within {timeout:?}", p.authority, up.host, up.port))),
                    }
                }
                let stream = match &up.tls {
                    None => Stream::Plain(tcp),
                    Some((cfg, name)) => {
                        let conn = futures_rustls::TlsConnector::from(cfg.clone());
                        match deadline(timeout, conn.connect(name.clone(), tcp)).await {
                            Some(Ok(s)) => Stream::ClientTls(Box::new(s)),
                            Some(Err(e)) => return Err(fail(via(up, format!("TLS handshake with {addr} failed: {e}")))),
                            None => return Err(fail(via(up, format!("TLS handshake with {addr} timed out")))),
                        }
                    }
                };
                return Ok(UpConn { stream, rbuf: ReadBuf::default(), head: Head::default() });
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(fail(via(up, last)))
}

/// `reason`, saying the proxy it went through, if any.
fn via(up: &Upstream, reason: String) -> String {
    match &up.proxy {
        Some(p) => format!("{reason} (through egress proxy {} to {}:{})", p.authority, up.host, up.port),
        None => reason,
    }
}

/// The most a proxy's answer to CONNECT may take.
const TUNNEL_HEAD_MAX: usize = 8 * 1024;

/// Ask an HTTP forward proxy for a tunnel (`connect`: the CONNECT request) and read its answer
/// with the same head parser as any upstream answer: any 2xx opens it; anything else, or
/// bytes past the answer's head (the upstream has not been spoken to yet), is an error naming
/// what the proxy said.
async fn tunnel(tcp: &mut TcpStream, connect: &[u8]) -> Result<(), String> {
    use futures_lite::AsyncReadExt;
    tcp.write_all(connect).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; TUNNEL_HEAD_MAX];
    let (mut n, mut head) = (0, Head::default());
    let limits = http::Limits { max_head_bytes: TUNNEL_HEAD_MAX };
    loop {
        let got = tcp.read(&mut buf[n..]).await.map_err(|e| format!("read: {e}"))?;
        if got == 0 {
            return Err("closed the connection instead of answering CONNECT".into());
        }
        n += got;
        match head.parse_response(&buf[..n], limits) {
            Ok(Some(end)) => return tunnel_answer(head.status, &String::from_utf8_lossy(head.reason()), n - end),
            Ok(None) if n < buf.len() => {}
            Ok(None) | Err(http::HeadError::TooLarge { .. }) => return Err(format!("answered CONNECT with a head longer than {TUNNEL_HEAD_MAX} bytes")),
            Err(e) => return Err(format!("did not answer CONNECT in HTTP ({e})")),
        }
    }
}

/// Judge a proxy's answer to CONNECT (`status`, `reason`), with `extra` bytes after its head.
fn tunnel_answer(status: u16, reason: &str, extra: usize) -> Result<(), String> {
    match status {
        200..=299 if extra == 0 => Ok(()),
        200..=299 => Err(format!("sent {extra} bytes after opening the tunnel, before the upstream was spoken to")),
        407 => Err(format!("asks for credentials (\"{status} {reason}\"): set upstream.proxy.auth_env or auth_file to user:password")),
        _ => Err(format!("refused the tunnel: \"{status} {reason}\" (the proxy's rules may not allow this destination or port)")),
    }
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

#[cfg(test)]
mod tests {
    use super::tunnel_answer;

    #[test]
    fn a_proxys_answer_to_connect_opens_the_tunnel_only_when_it_is_a_bare_2xx() {
        assert_eq!(tunnel_answer(200, "Connection established", 0), Ok(()));
        assert_eq!(tunnel_answer(204, "", 0), Ok(()));
        let err = |status, reason, extra| tunnel_answer(status, reason, extra).unwrap_err();
        assert!(err(200, "OK", 5).contains("sent 5 bytes"));
        assert!(err(407, "Proxy Authentication Required", 0).contains("auth_env or auth_file"));
        let refused = err(403, "Forbidden", 0);
        assert!(refused.contains("403 Forbidden") && refused.contains("rules"), "{refused}");
        assert!(err(101, "Switching Protocols", 0).contains("refused the tunnel"));
    }
}
