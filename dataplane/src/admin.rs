//! The admin listener, on its own address and thread (off the workers' cores' hot path; over
//! TLS with `admin.tls`, client certificates required with its `client_ca`):
//! `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/sessions` (JSON), and the reviewers'
//! `/approvals` API and page ([`crate::approvals::admin`]).

use crate::http::{write, Head, Limits};
use crate::runtime::Shared;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once (a thread each); more are answered 503 and closed, so a flood
/// of connections cannot grow the process by a thread each.
const MAX_CONNS: usize = 64;

pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    // TLS or not is decided at start (a reload changes the certificate, not whether there is one).
    let mut tls = shared.config.load().admin_tls.clone();
    tracing::info!(%addr, tls = tls.is_some(), "admin listening");
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new().name("sluice-admin".into()).spawn(move || {
        for mut conn in listener.incoming().flatten() {
            if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS {
                open.fetch_sub(1, Ordering::AcqRel);
                // Over TLS there is no handshake to answer in: closed.
                if tls.is_none() {
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                    reply(&mut conn, 503, "application/json", br#"{"error":"the admin listener is serving as many connections as it takes; retry shortly"}"#);
                }
                continue;
            }
            // A renewed certificate (a reload read it) serves the next connection.
            if let (Some(held), Some(now)) = (tls.as_mut(), shared.config.load().admin_tls.as_ref()) {
                if !Arc::ptr_eq(held, now) {
                    *held = now.clone();
                }
            }
            let (sh, held, tls) = (shared.clone(), Slot(open.clone()), tls.clone());
            // The slot is given back when the thread ends, however it ends (or is not started).
            let _ = std::thread::Builder::new().name("sluice-admin-conn".into()).spawn(move || {
                let _held = held;
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                // A reader that never reads its answer does not hold the thread either.
                let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
                match tls {
                    // The handshake runs within the first read (under the same timeouts).
                    Some(cfg) => match rustls::ServerConnection::new(cfg) {
                        Ok(server) => serve(rustls::StreamOwned::new(server, conn), &sh),
                        Err(e) => tracing::warn!(error = %e, "admin TLS session could not be set up"),
                    },
                    None => serve(conn, &sh),
                }
            });
        }
    })?;
    Ok(())
}

/// One of the [`MAX_CONNS`] connections being served.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve(mut conn: impl Read + Write, sh: &Shared) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let mut head = Head::default();
    let head_len = loop {
        match conn.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        match head.parse_request(&buf[..len], Limits { max_head_bytes: 8192 }) {
            Ok(Some(n)) => break n,
            Ok(None) if len < buf.len() => continue,
            _ => return reply(&mut conn, 400, "text/plain", b"bad request\n"),
        }
    };
    // The admin listener is as reachable by a rebinding page as the agents' one (and usually on
    // loopback, the classic target): the same names only. `/sessions` lists session ids.
    if let Err(refusal) = sh.config.load().hosts.check(&head) {
        let e = crate::error::ProxyError::from(refusal);
        return reply(&mut conn, e.status(), "application/json", serde_json::json!({ "error": e.to_string() }).to_string().as_bytes());
    }
    if head.path().starts_with("/approvals") || head.path().starts_with("/pins") {
        // Reviewers' decisions carry a small JSON body (a reason).
        let want = head.header_str("content-length").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
        if want > MAX_BODY {
            return reply(&mut conn, 413, "application/json", br#"{"error":"the body is larger than 64 KiB"}"#);
        }
        let mut body = buf[head_len..len].to_vec();
        while body.len() < want {
            let mut more = [0u8; 4096];
            match conn.read(&mut more) {
                Ok(0) | Err(_) => return reply(&mut conn, 400, "application/json", br#"{"error":"the body ended early"}"#),
                Ok(n) => body.extend_from_slice(&more[..n]),
            }
        }
        body.truncate(want);
        let (status, ctype, out) = if head.path().starts_with("/pins") { crate::pins::admin::handle(&head, &body, sh) } else { crate::approvals::admin::handle(&head, &body, sh) };
        return reply(&mut conn, status, ctype, &out);
    }
    let (status, ctype, body) = route(head.method(), head.path(), sh);
    reply(&mut conn, status, ctype, &body);
}

const MAX_BODY: usize = 64 * 1024;

fn route(method: &str, path: &str, sh: &Shared) -> (u16, &'static str, Vec<u8>) {
    if method != "GET" {
        return (405, "text/plain", b"only GET\n".to_vec());
    }
    match path {
        "/healthz" => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
        "/readyz" => {
            let ready = sh.ready();
            let body = serde_json::json!({
                "ready": ready,
                "workers": sh.workers,
                "workers_ready": sh.ready_workers.load(Ordering::SeqCst),
                "draining": sh.draining.load(Ordering::SeqCst),
                "recording": sh.recorder.as_ref().map(|r| if r.accepting() { "accepting" } else { "refusing: the spool cannot take events" }),
            });
            (if ready { 200 } else { 503 }, "application/json", body.to_string().into_bytes())
        }
        "/metrics" => {
            let mut s = String::with_capacity(16 * 1024);
            crate::metrics::render(&sh.metrics, sh.sessions.len(), &mut s);
            sh.pins.render(&mut s);
            sh.notifier.render(&mut s);
            render_tokens(&sh.config.load(), &mut s);
            crate::logging::render(&mut s);
            if let Some(r) = &sh.recorder {
                r.counters.render(&mut s);
                s.push_str(&format!("# HELP sluice_recording_accepting 1 while the spool takes events (0: requests are refused).\n# TYPE sluice_recording_accepting gauge\nsluice_recording_accepting {}\n", u8::from(r.accepting())));
            }
            s.push_str(&format!(
                "# HELP sluice_config_reloads_total Configuration reloads applied.\n# TYPE sluice_config_reloads_total counter\nsluice_config_reloads_total {}\n\
                 # HELP sluice_config_reload_failures_total Reloads rejected as invalid.\n# TYPE sluice_config_reload_failures_total counter\nsluice_config_reload_failures_total {}\n",
                sh.reloads.load(Ordering::Relaxed),
                sh.reload_failures.load(Ordering::Relaxed)
            ));
            (200, "text/plain; version=0.0.4", s.into_bytes())
        }
        "/sessions" => {
            let mut sessions = sh.sessions.snapshot();
            // A stateless session's key is the gateway's (route and caller), no session id.
            for s in sessions.iter_mut().filter(|s| s.stateless) {
                s.mcp_session_id.clear();
            }
            (200, "application/json", serde_json::to_vec(&serde_json::json!({ "count": sessions.len(), "sessions": sessions })).unwrap_or_default())
        }
        "/identity/jwks" => match sh.config.load().jwks() {
            Some(set) => (200, "application/json", set.to_string().into_bytes()),
            None => (404, "text/plain", b"the gateway signs nothing (no forward_identity = \"token\", no client_auth = \"private_key_jwt\")\n".to_vec()),
        },
        _ => (404, "text/plain", b"not found: try /healthz /readyz /metrics /sessions /approvals /approvals/ui /pins /identity/jwks\n".to_vec()),
    }
}

fn reply(conn: &mut impl Write, status: u16, ctype: &str, body: &[u8]) {
    let mut out = Vec::with_capacity(body.len() + 256);
    write::status_line(&mut out, status, b"");
    write::header(&mut out, "content-type", ctype.as_bytes());
    // The reviewers' page may not be framed by another site (a click on Approve there would be
    // the reviewer's), nor any answer sniffed as another type or cached.
    write::header(&mut out, "x-content-type-options", b"nosniff");
    write::header(&mut out, "cache-control", b"no-store");
    if ctype.starts_with("text/html") {
        write::header(&mut out, "content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
        write::header(&mut out, "x-frame-options", b"DENY");
        write::header(&mut out, "referrer-policy", b"no-referrer");
    }
    write::content_length(&mut out, body.len());
    write::header(&mut out, "connection", b"close");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    let _ = conn.write_all(&out).and_then(|()| conn.flush());
}

/// Upstream tokens (`kind = "oauth_client_credentials"`): held or not, and the token
/// endpoint's answers by outcome.
fn render_tokens(cfg: &crate::config::Config, s: &mut String) {
    use std::fmt::Write;
    // Label values escaped as the text format wants (upstream names are free text).
    let label = |u: &crate::config::Upstream| u.name.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    if let Some(i) = cfg.identity.as_ref().and_then(|a| a.introspection.as_ref()) {
        let (active, not) = i.counts();
        s.push_str("# HELP sluice_identity_introspections_total Opaque tokens the issuer's introspection endpoint was asked about, by outcome (refused: not active or not for this gateway; or unanswered).\n# TYPE sluice_identity_introspections_total counter\n");
        let _ = writeln!(s, "sluice_identity_introspections_total{{outcome=\"active\"}} {active}");
        let _ = writeln!(s, "sluice_identity_introspections_total{{outcome=\"refused_or_failed\"}} {not}");
    }
    let exchangers: Vec<_> = cfg.upstreams.iter().filter_map(|u| Some((label(u), u.credential.as_ref()?.exchanger()?))).collect();
    if !exchangers.is_empty() {
        s.push_str("# HELP sluice_upstream_exchanged_tokens Tokens held for the upstream, each exchanged for one caller's token (RFC 8693).\n# TYPE sluice_upstream_exchanged_tokens gauge\n");
        for (name, x) in &exchangers {
            let _ = writeln!(s, "sluice_upstream_exchanged_tokens{{upstream=\"{name}\"}} {}", x.held_count());
        }
        s.push_str("# HELP sluice_upstream_token_exchanges_total Token exchanges asked of the identity provider for the upstream, by outcome.\n# TYPE sluice_upstream_token_exchanges_total counter\n");
        for (name, x) in &exchangers {
            let (issued, failed) = x.counts();
            let _ = writeln!(s, "sluice_upstream_token_exchanges_total{{upstream=\"{name}\",outcome=\"issued\"}} {issued}");
            let _ = writeln!(s, "sluice_upstream_token_exchanges_total{{upstream=\"{name}\",outcome=\"failed\"}} {failed}");
        }
    }
    let tokens: Vec<_> = cfg.upstreams.iter().filter_map(|u| Some((label(u), u.credential.as_ref()?.token()?))).collect();
    if tokens.is_empty() {
        return;
    }
    s.push_str("# HELP sluice_upstream_token_held 1 while the gateway holds an unexpired token for the upstream (0: its calls are answered 503).\n# TYPE sluice_upstream_token_held gauge\n");
    for (name, t) in &tokens {
        let _ = writeln!(s, "sluice_upstream_token_held{{upstream=\"{}\"}} {}", name, u8::from(t.live().value.is_some()));
    }
    s.push_str("# HELP sluice_upstream_token_requests_total Token requests to the upstream's token endpoint, by outcome.\n# TYPE sluice_upstream_token_requests_total counter\n");
    for (name, t) in &tokens {
        let _ = writeln!(s, "sluice_upstream_token_requests_total{{upstream=\"{name}\",outcome=\"issued\"}} {}", t.fetched.load(Ordering::Relaxed));
        let _ = writeln!(s, "sluice_upstream_token_requests_total{{upstream=\"{name}\",outcome=\"failed\"}} {}", t.failed.load(Ordering::Relaxed));
    }
}
