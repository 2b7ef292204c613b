//! Lowering the user schema into the compiled [`Config`]: addresses resolved, durations parsed,
//! routes linked to upstreams by index, TLS material loaded. Every problem is collected.

use super::{duration, schema, Issue};
use crate::tls;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The validated configuration shared read-only by all workers; replaced whole on reload.
#[derive(Debug, Clone)]
pub struct Config {
    pub instance: String,
    pub workers: usize,
    pub pin_workers: bool,
    /// The CPUs the workers run on (`gateway.background_cpus` left out), in order.
    pub worker_cpus: Vec<usize>,
    /// `gateway.background_cpus`: where every other thread runs (empty: anywhere).
    pub background_cpus: Vec<usize>,
    pub shutdown_grace: Duration,
    pub io_memory: usize,
    pub ring_depth: usize,
    /// `gateway.access_log`: one `sluice::access` line per exchange.
    pub access_log: bool,
    /// Who may call from a web page (`Origin`), besides loopback pages.
    pub origins: crate::http::origin::Origins,
    pub hosts: crate::http::origin::Hosts,
    pub listeners: Vec<ListenerCfg>,
    pub admin: Option<SocketAddr>,
    /// The admin listener's TLS (`admin.tls`; read again on reload).
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    pub sessions: SessionsCfg,
    /// Tool pinning (`None`: off).
    pub pins: Option<PinsCfg>,
    /// Content inspection; `None` when `[detect] enabled = false`.
    pub detect: Option<std::sync::Arc<super::detect::DetectCfg>>,
    /// Session recording; `None` when `[recording] enabled = false`. Read at start (the sink
    /// does not change on reload).
    pub recording: Option<super::recording::RecordingCfg>,
    /// Authentication; `None`: every caller is anonymous.
    pub identity: Option<Arc<crate::identity::Authenticator>>,
    /// `None`: no policy file; every call that passes identity and detection is allowed.
    pub policy: Option<Arc<crate::policy::Policy>>,
    /// What `sluice stdio --name NAME` gives the servers it runs.
    pub stdio_servers: Vec<super::credential::StdioServer>,
    /// Webhooks told of approval steps, and the reviewers' page they link to.
    pub approvals: Arc<super::approvals::ApprovalsCfg>,
    /// Roots for the HTTPS requests the gateway makes itself (`gateway.outbound_ca`).
    pub outbound: crate::tls::Outbound,
}

#[derive(Debug, Clone)]
pub struct ListenerCfg {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_sse_event_bytes: usize,
    /// Open agent connections per worker (its share of `limits.max_connections`).
    pub worker_connections: usize,
    /// Request-body bytes held at once per worker (its share of `limits.max_buffered_bytes`).
    pub worker_buffered_bytes: usize,
    /// The configured totals, for messages.
    pub max_connections: usize,
    pub max_buffered_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub client_header: Duration,
    pub idle_keepalive: Duration,
    pub upstream_connect: Duration,
    pub upstream_first_byte: Duration,
    pub stream_idle: Duration,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `host:port` as sent in Host when a route rewrites it.
    pub authority: String,
    pub base_path: String,
    pub tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    pub pool_max_idle: usize,
    /// Identifies the pool of connections to this upstream; stable across reloads when the
    /// upstream's address and TLS settings are unchanged.
    pub pool_key: String,
    /// Injected on every request to this upstream.
    pub credential: Option<Arc<super::credential::Injected>>,
    /// How the upstream hears who the caller is (`forward_identity`).
    pub forward_identity: Option<crate::identity::forward::Forwarding>,
    /// Its timeouts (`upstream.timeouts`, else `[timeouts]`).
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub stream_idle: Duration,
    /// The HTTP forward proxy this upstream is reached through (`upstream.proxy`).
    pub proxy: Option<Proxy>,
}

/// An HTTP forward proxy to one upstream: each connection is a CONNECT tunnel.
#[derive(Clone)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// `host:port` of the proxy, for messages.
    pub authority: String,
    /// The CONNECT request, written once (it may carry `Proxy-Authorization`).
    pub connect: Arc<[u8]>,
    /// It does (`auth_env`/`auth_file`).
    pub authenticated: bool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("authority", &self.authority).finish_non_exhaustive()
    }
}

/// A listener's `tls` (proxy or admin) at path `p`: certificate, key, and the CAs of client
/// certificates (`client_auth` required by default).
fn server_tls(t: &schema::ServerTls, p: &str, file: Option<&Path>, add: &mut dyn FnMut(String, String)) -> Option<Arc<rustls::ServerConfig>> {
    let required = match t.client_auth.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            add(format!("{p}.client_auth"), format!("\"{other}\" is not a mode; use \"required\" or \"optional\""));
            true
        }
    };
    if t.client_auth.is_some() && t.client_ca.is_none() {
        add(format!("{p}.client_auth"), "client_auth needs client_ca (the CAs that sign clients' certificates)".into());
    }
    let ca = t.client_ca.as_ref().map(|c| resolve(file, c));
    tls::server_config(&resolve(file, &t.cert), &resolve(file, &t.key), ca.as_deref().map(|c| (c, required))).map_err(|m| add(p.to_owned(), m)).ok()
}

/// The CONNECT tunnel to `host:port` through `upstream.proxy`; problems go to `add` under `p`.
fn compile_proxy(pr: &schema::UpstreamProxy, host: &str, port: u16, file: Option<&Path>, p: &str, add: &mut dyn FnMut(String, String)) -> Option<Proxy> {
    let (https, proxy_host, proxy_port, path) = match parse_url(&pr.url) {
        Ok(parts) => parts,
        // Not quoted: what precedes the `@` is likely a password.
        Err(_) if pr.url.contains('@') => {
            add(format!("{p}.url"), "holds user info: write the proxy as http://host:port and its user:password in auth_env or auth_file (secrets are never written in this file)".into());
            return None;
        }
        Err(m) => {
            add(format!("{p}.url"), format!("{m}; write the proxy as http://host:port (its password, if any, in auth_env or auth_file)"));
            return None;
        }
    };
    if https || !path.is_empty() {
        add(format!("{p}.url"), format!("\"{}\": write the proxy as http://host:port (the gateway speaks to it in plain HTTP; TLS to the upstream runs inside the tunnel)", pr.url));
        return None;
    }
    let auth = match (&pr.auth_env, &pr.auth_file) {
        (None, None) => None,
        (env, f) => {
            let secret = super::credential::read_secret_as(["auth_env", "auth_file"], env.as_deref(), f.as_deref(), file, p, add)?;
            if !secret.contains(':') || secret.bytes().any(|b| b < 0x20 || b == 0x7f) {
                add(p.to_owned(), "the proxy credential must be user:password on one line".into());
                return None;
            }
            Some(secret)
        }
    };
    let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    let authenticated = auth.is_some();
    if let Some(a) = auth {
        connect.push_str(&format!("Proxy-Authorization: Basic {}\r\n", super::credential::base64(a.as_bytes())));
    }
    connect.push_str("\r\n");
    let authority = if proxy_host.contains(':') { format!("[{proxy_host}]:{proxy_port}") } else { format!("{proxy_host}:{proxy_port}") };
    Some(Proxy { host: proxy_host, port: proxy_port, authority, connect: connect.into_bytes().into(), authenticated })
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// The name as a shared label for metrics (cloned per request without allocating).
    pub label: Arc<str>,
    pub kind: schema::RouteKind,
    pub path: String,
    pub host: Option<String>,
    pub upstream: usize,
    pub upstream_path: String,
    pub rewrite_host: bool,
    pub allow_encoded_slashes: bool,
}

#[derive(Debug, Clone)]
pub struct PinsCfg {
    pub file: Option<std::path::PathBuf>,
    pub on_change: crate::pins::OnChange,
    pub approvers: Vec<String>,
    /// `pins.baseline`: its path and the reviewed definitions read from it at load.
    pub baseline: Option<(std::path::PathBuf, Arc<crate::pins::Baseline>)>,
    /// `pins.first_sight = "hold"`.
    pub hold_new: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct SessionsCfg {
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    /// `sessions.max_per_caller` (0: no limit).
    pub max_per_caller: usize,
    /// Mints and opens the session ids agents hold (`sessions.key_file`).
    pub ids: crate::session::Ids,
}

impl Config {
    /// The gateway's public keys as a JWK set: the identity assertions' (`forward_identity =
    /// "token"`) and the client assertions' (`client_auth = "private_key_jwt"`), once each;
    /// `None` when it signs nothing.
    pub fn jwks(&self) -> Option<serde_json::Value> {
        let mut keys: Vec<serde_json::Value> = Vec::new();
        for u in &self.upstreams {
            let identity = match &u.forward_identity {
                Some(crate::identity::forward::Forwarding::Token { signer, .. }) => Some(signer),
                _ => None,
            };
            let client = u.credential.as_ref().and_then(|c| c.token()).and_then(|t| match &t.grant.auth {
                crate::oauth::ClientAuth::PrivateKeyJwt { signer, .. } => Some(signer),
                _ => None,
            });
            for s in identity.into_iter().chain(client) {
                if let Some(k) = s.jwks()["keys"].get(0).cloned().filter(|k| !keys.iter().any(|o| o["kid"] == k["kid"])) {
                    keys.push(k);
                }
            }
        }
        (!keys.is_empty()).then(|| serde_json::json!({ "keys": keys }))
    }
}

struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue { path: path.into(), message: message.into() });
    }

    fn duration(&mut self, path: &str, value: &str) -> Duration {
        duration::parse(value).unwrap_or_else(|m| {
            self.add(path, m);
            Duration::ZERO
        })
    }

    fn addr(&mut self, path: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.add(path, format!("\"{value}\" is not an IP:port address; write e.g. \"127.0.0.1:8080\" or \"[::]:8443\""));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }
}

/// Resolve a relative file path against the config file's folder.
pub(super) fn resolve(base: Option<&Path>, p: &str) -> std::path::PathBuf {
    let p = Path::new(p);
    match base.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_owned(),
    }
}

/// What the configuration is for: the HTTP gateway needs listeners and routes; the stdio
/// transport (`sluice stdio`) reads only the sections that apply to one local server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Gateway,
    Stdio,
}

pub(super) fn compile(f: &schema::File, file: Option<&Path>, purpose: Purpose) -> Result<Config, Vec<Issue>> {
    let mut is = Issues(Vec::new());
    let g = &f.gateway;
    let shutdown_grace = is.duration("gateway.shutdown_grace", &g.shutdown_grace);
    let outbound = match g.outbound_ca.as_deref() {
        None => crate::tls::Outbound::default(),
        Some(p) => crate::tls::Outbound::from_pem(&resolve(file, p)).unwrap_or_else(|e| {
            is.add("gateway.outbound_ca", format!("{e}; name a PEM bundle of the roots to trust (the host's: /etc/ssl/certs/ca-certificates.crt)"));
            Default::default()
        }),
    };
    if g.io_memory_kib < 64 {
        is.add("gateway.io_memory_kib", "must be at least 64 (KiB)");
    }
    if !(8..=32768).contains(&g.ring_depth) || !g.ring_depth.is_power_of_two() {
        is.add("gateway.ring_depth", "must be a power of two between 8 and 32768");
    }
    let origins = crate::http::origin::Origins {
        allowed: g.allowed_origins.iter().enumerate().filter_map(|(i, o)| crate::http::origin::Origin::parse(o).map_err(|e| is.add(format!("gateway.allowed_origins[{i}]"), e)).ok()).collect(),
    };
    let mut hosts = crate::http::origin::Hosts {
        allowed: g.allowed_hosts.iter().enumerate().filter_map(|(i, h)| crate::http::origin::HostPattern::parse(h).map_err(|e| is.add(format!("gateway.allowed_hosts[{i}]"), e)).ok()).collect(),
    };
    let worker_cpus = crate::cpus::workers_cpus(crate::cpus::allowed(), &g.background_cpus).unwrap_or_else(|e| {
        is.add("gateway.background_cpus", format!("{e}; list the CPUs (ids as taskset shows them) for recording, logging and the other threads that are not workers"));
        crate::cpus::allowed().to_vec()
    });
    let workers = if g.workers == 0 { worker_cpus.len().max(1) } else { g.workers };

    if f.listeners.is_empty() && purpose == Purpose::Gateway {
        is.add("listener", "at least one [[listener]] is needed, e.g. address = \"127.0.0.1:8080\"");
    }
    let mut listeners = Vec::new();
    for (i, l) in f.listeners.iter().enumerate() {
        let p = format!("listener[{i}]");
        let address = is.addr(&format!("{p}.address"), &l.address);
        let tls = l.tls.as_ref().and_then(|t| server_tls(t, &format!("{p}.tls"), file, &mut |path, msg| is.add(path, msg)));
        if address.port() != 0 && listeners.iter().any(|o: &ListenerCfg| o.address == address) {
            is.add(format!("{p}.address"), format!("{address} is used by another listener"));
        }
        listeners.push(ListenerCfg { name: l.name.clone().unwrap_or_else(|| format!("listener{i}")), address, tls });
    }
    let admin = f.admin.as_ref().map(|a| is.addr("admin.address", &a.address));
    let admin_tls = f.admin.as_ref().and_then(|a| a.tls.as_ref()).and_then(|t| server_tls(t, "admin.tls", file, &mut |path, msg| is.add(path, msg)));
    // Reviewers' tokens, `/sessions` and `/metrics` travel on it.
    if let Some(a) = admin.filter(|a| !a.ip().is_loopback() && purpose == Purpose::Gateway && f.admin.as_ref().is_some_and(|x| x.tls.is_none())) {
        tracing::warn!(admin = %a, "the admin listener is reachable off this host over plain HTTP: reviewers' bearer tokens, session ids and metrics cross the network in clear; set admin.tls (and client_ca to admit only your operators' certificates)");
    }
    if let Some(a) = admin {
        if a.port() != 0 && listeners.iter().any(|l| l.address == a) {
            is.add("admin.address", "the admin listener must not share an address with a proxy listener");
        }
    }

    let l = &f.limits;
    if l.max_head_bytes < 1024 {
        is.add("limits.max_head_bytes", "must be at least 1024");
    }
    if l.max_body_bytes < 1024 {
        is.add("limits.max_body_bytes", "must be at least 1024");
    }
    if l.max_connections == 0 {
        is.add("limits.max_connections", "must be at least 1");
    }
    if l.max_buffered_bytes < l.max_body_bytes {
        is.add("limits.max_buffered_bytes", format!("must be at least limits.max_body_bytes ({}), or no body of the largest allowed size could be read", l.max_body_bytes));
    }
    let limits = Limits {
        max_head_bytes: l.max_head_bytes,
        max_body_bytes: l.max_body_bytes,
        max_sse_event_bytes: l.max_sse_event_bytes,
        worker_connections: l.max_connections.div_ceil(workers.max(1)),
        // A worker's share always fits one body of the largest allowed size.
        worker_buffered_bytes: (l.max_buffered_bytes / workers.max(1)).max(l.max_body_bytes),
        max_connections: l.max_connections,
        max_buffered_bytes: l.max_buffered_bytes,
    };
    let t = &f.timeouts;
    let timeouts = Timeouts {
        client_header: is.duration("timeouts.client_header", &t.client_header),
        idle_keepalive: is.duration("timeouts.idle_keepalive", &t.idle_keepalive),
        upstream_connect: is.duration("timeouts.upstream_connect", &t.upstream_connect),
        upstream_first_byte: is.duration("timeouts.upstream_first_byte", &t.upstream_first_byte),
        stream_idle: is.duration("timeouts.stream_idle", &t.stream_idle),
    };

    // The key identity assertions to upstreams are signed with.
    let identity_on = f.identity.as_ref().is_some_and(|i| i.mode != "off");
    let signer = f.identity.as_ref().and_then(|i| i.assertion.as_ref()).and_then(|a| {
        let lifetime = is.duration("identity.assertion.lifetime", &a.lifetime);
        let path = resolve(file, &a.key_file);
        let pem = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()));
        match pem.and_then(|pem| crate::identity::forward::Signer::from_pem(&pem, a.issuer.clone(), lifetime).map_err(|e| format!("{}: {e}", path.display()))) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                is.add("identity.assertion.key_file", e);
                None
            }
        }
    });
    let mut upstreams: Vec<Upstream> = Vec::new();
    for (i, u) in f.upstreams.iter().enumerate() {
        let p = format!("upstream[{i}]");
        let own = |v: Option<&String>, key: &str, global: Duration, is: &mut Issues| v.map_or(global, |v| is.duration(&format!("{p}.timeouts.{key}"), v));
        let ut = u.timeouts.as_ref();
        let connect_timeout = own(ut.and_then(|t| t.upstream_connect.as_ref()), "upstream_connect", timeouts.upstream_connect, &mut is);
        let first_byte_timeout = own(ut.and_then(|t| t.upstream_first_byte.as_ref()), "upstream_first_byte", timeouts.upstream_first_byte, &mut is);
        let stream_idle = own(ut.and_then(|t| t.stream_idle.as_ref()), "stream_idle", timeouts.stream_idle, &mut is);
        use crate::identity::forward::Forwarding;
        let forward_identity = match u.forward_identity.as_deref() {
            None => {
                if u.identity_audience.is_some() {
                    is.add(format!("{p}.identity_audience"), "is only for forward_identity = \"token\"");
                }
                None
            }
            Some(_) if !identity_on => {
                is.add(format!("{p}.forward_identity"), "there is no caller identity to forward: configure [identity] (an issuer, API keys or client certificates)");
                None
            }
            Some("headers") => {
                if u.identity_audience.is_some() {
                    is.add(format!("{p}.identity_audience"), "is only for forward_identity = \"token\"");
                }
                Some(Forwarding::Headers)
            }
            Some("token") => match &signer {
                Some(s) => Some(Forwarding::Token { signer: s.clone(), audience: u.identity_audience.clone().unwrap_or_else(|| u.url.clone()) }),
                None => {
                    if f.identity.as_ref().is_some_and(|i| i.assertion.is_none()) {
                        is.add(format!("{p}.forward_identity"), "\"token\" needs the gateway's signing key: [identity.assertion] key_file = \"…\" (an Ed25519 key: openssl genpkey -algorithm ed25519 -out FILE)");
                    }
                    None
                }
            },
            Some(other) => {
                is.add(format!("{p}.forward_identity"), format!("\"{other}\" is not a way to forward the identity; write \"headers\" or \"token\""));
                None
            }
        };
        if f.upstreams[..i].iter().any(|o| o.name == u.name) {
            is.add(format!("{p}.name"), format!("\"{}\" names another upstream too; names must be unique", u.name));
        }
        match parse_url(&u.url) {
            Err(m) => is.add(format!("{p}.url"), m),
            Ok((https, host, port, base_path)) => {
                let tls = if https {
                    let name = u.tls.as_ref().and_then(|t| t.server_name.clone()).unwrap_or_else(|| host.clone());
                    let ca = u.tls.as_ref().and_then(|t| t.ca.as_deref()).map(|c| resolve(file, c));
                    let pair = u.tls.as_ref().map(|t| (t.client_cert.as_deref().map(|c| resolve(file, c)), t.client_key.as_deref().map(|k| resolve(file, k))));
                    let client_auth = match &pair {
                        Some((Some(c), Some(k))) => Some((c.as_path(), k.as_path())),
                        Some((None, None)) | None => None,
                        Some(_) => {
                            is.add(format!("{p}.tls"), "client_cert and client_key go together; set both or neither");
                            None
                        }
                    };
                    match tls::client_config(ca.as_deref(), &name, client_auth) {
                        Ok(c) => Some(c),
                        Err(m) => {
                            is.add(format!("{p}.tls"), m);
                            None
                        }
                    }
                } else {
                    if u.tls.is_some() {
                        is.add(format!("{p}.tls"), "tls settings need an https:// url");
                    }
                    None
                };
                let authority = if (https && port == 443) || (!https && port == 80) { host.clone() } else { format!("{host}:{port}") };
                let pool_key = format!(
                    "{}://{host}:{port}/{:?}",
                    if https { "https" } else { "http" },
                    u.tls.as_ref().map(|t| (&t.ca, &t.server_name, &t.client_cert, &t.client_key))
                );
                // A token exchanged for the caller's own needs callers with bearer tokens.
                let bearer_callers = f.identity.as_ref().is_some_and(|i| i.mode != "off" && i.issuer.is_some());
                if u.credential.as_ref().is_some_and(|c| c.kind == super::credential::EXCHANGE) && !bearer_callers {
                    is.add(format!("{p}.credential.kind"), format!("\"{}\" exchanges each caller's own access token: [identity] must authenticate callers by bearer tokens (issuer = \"https://…\")", super::credential::EXCHANGE));
                }
                let credential = u.credential.as_ref().and_then(|c| super::credential::compile(c, &u.name, file, &p, &outbound, &mut |path, msg| is.add(path, msg)));
                let proxy = u.proxy.as_ref().and_then(|pr| compile_proxy(pr, &host, port, file, &format!("{p}.proxy"), &mut |path, msg| is.add(path, msg)));
                // Tunnels through another proxy, or opened with other proxy credentials, are
                // other connections (an upstream without the credential must not ride on a
                // tunnel another one's credential opened).
                let pool_key = match &proxy {
                    Some(x) => format!("{pool_key} via {} {}", x.authority, &blake3::hash(&x.connect).to_hex()[..16]),
                    None => pool_key,
                };
                upstreams.push(Upstream { name: u.name.clone(), host, port, authority, base_path, tls, pool_max_idle: u.pool_max_idle, pool_key, credential, forward_identity, connect_timeout, first_byte_timeout, stream_idle, proxy });
            }
        }
    }

    if f.routes.is_empty() && purpose == Purpose::Gateway {
        is.add("route", "at least one [[route]] is needed, e.g. path = \"/mcp\", upstream = \"…\"");
    }
    let mut routes = Vec::new();
    for (i, r) in f.routes.iter().enumerate() {
        let p = format!("route[{i}]");
        if !r.path.starts_with('/') {
            is.add(format!("{p}.path"), format!("\"{}\" must start with \"/\"", r.path));
        } else if r.path.contains('?') {
            is.add(format!("{p}.path"), format!("\"{}\" is a path prefix and cannot hold a query", r.path));
        } else {
            // Requests are routed on their canonical path; a prefix in another form matches none.
            match crate::http::path::canonical(&r.path) {
                Ok(None) => {}
                Ok(Some(c)) => is.add(format!("{p}.path"), format!("\"{}\" is read as \"{c}\" (dot segments, escapes and repeated slashes are resolved before routing); write that", r.path)),
                Err(e) => is.add(format!("{p}.path"), format!("\"{}\": {}", r.path, e.reason())),
            }
        }
        // The names routes match by are names of the gateway (an address needs no entry).
        if let Some(h) = r.host.as_deref().filter(|h| h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('[')) {
            match crate::http::origin::HostPattern::parse(h) {
                Ok(pattern) if !h.contains([':', '*']) => hosts.allowed.push(pattern),
                _ => is.add(format!("{p}.host"), format!("\"{h}\" is not a host name; a route matches a Host header's name without its port, e.g. \"tools.example\"")),
            }
        }
        let Some(up) = f.upstreams.iter().position(|u| u.name == r.upstream) else {
            let known: Vec<_> = f.upstreams.iter().map(|u| u.name.as_str()).collect();
            is.add(format!("{p}.upstream"), format!("no upstream is named \"{}\" (known: {known:?})", r.upstream));
            continue;
        };
        let upstream_path = match &r.upstream_path {
            Some(u) if !u.starts_with('/') => {
                is.add(format!("{p}.upstream_path"), "must start with \"/\"");
                u.clone()
            }
            Some(u) => u.clone(),
            None => upstreams.get(up).map(|u| u.base_path.clone()).unwrap_or_default(),
        };
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        routes.push(Route {
            label: Arc::from(name.as_str()),
            name,
            kind: r.kind,
            path: r.path.trim_end_matches('/').to_string(),
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            upstream: up,
            upstream_path: upstream_path.trim_end_matches('/').to_string(),
            rewrite_host: r.rewrite_host,
            allow_encoded_slashes: r.allow_encoded_slashes,
        });
    }

    // Key material of at least 16 bytes from a file of the deployment, every problem named.
    let mut key_material = |key: &str, p: &str| -> Option<Vec<u8>> {
        let path = resolve(file, p);
        match std::fs::read(&path) {
            Ok(k) if k.len() >= 16 => Some(k),
            Ok(_) => {
                is.add(format!("sessions.{key}"), format!("{} holds fewer than 16 bytes; write at least 32 random bytes (e.g. `head -c 32 /dev/urandom > {}`) and copy the file to every gateway", path.display(), path.display()));
                None
            }
            Err(e) => {
                is.add(format!("sessions.{key}"), format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    };
    let current = f.sessions.key_file.as_deref().and_then(|p| key_material("key_file", p));
    let previous = f.sessions.previous_key_file.as_deref().and_then(|p| key_material("previous_key_file", p));
    if f.sessions.key_file.is_none() {
        if f.sessions.previous_key_file.is_some() {
            is.add("sessions.previous_key_file", "is the key before a rotation, read only with sessions.key_file (the new key): set that too");
        } else if purpose == Purpose::Gateway && f.routes.iter().any(|r| r.kind == schema::RouteKind::Mcp) {
            tracing::warn!("sessions.key_file is not set: the MCP session ids this gateway hands out are valid on it until it restarts (then agents start new sessions); set it, the same file on every gateway, to continue sessions across gateways and restarts");
        }
    }
    let ids = match (current, previous) {
        (Some(k), Some(p)) => crate::session::Ids::from_material(&k).with_previous(&p),
        (Some(k), None) => crate::session::Ids::from_material(&k),
        (None, _) => crate::session::Ids::for_process(),
    };
    let baseline = f.pins.baseline.as_deref().filter(|_| f.pins.enabled).and_then(|p| {
        let path = resolve(file, p);
        crate::pins::Baseline::read(&path).map(|b| (path, Arc::new(b))).map_err(|e| is.add("pins.baseline", e)).ok()
    });
    let pins = f.pins.enabled.then(|| PinsCfg {
        file: f.pins.file.as_deref().map(|p| resolve(file, p)),
        on_change: f.pins.on_change,
        approvers: f.pins.approvers.clone(),
        baseline,
        hold_new: f.pins.first_sight == schema::FirstSight::Hold,
    });
    let sessions = SessionsCfg { idle_timeout: is.duration("sessions.idle_timeout", &f.sessions.idle_timeout), max_sessions: f.sessions.max_sessions, max_per_caller: f.sessions.max_per_caller, ids };

    let detect = super::detect::compile(&f.detect, file, &mut |path, msg| is.add(path, msg));
    let recording = super::recording::compile(&f.recording, file, &mut |path, msg| is.add(path, msg));
    let policy = super::policy::compile(f.policy.as_ref(), file, &mut |path, msg| is.add(path, msg));
    let approvals = Arc::new(super::approvals::compile(&f.approvals, admin.map(|a| (a, admin_tls.is_some())), file, &outbound, &mut |path, msg| is.add(path, msg)));

    if !is.0.is_empty() {
        return Err(is.0);
    }
    let identity = super::identity::compile(f.identity.as_ref(), file, &outbound, &mut |path, msg| is.add(path, msg));
    let stdio_servers = super::credential::compile_stdio(&f.stdio_servers, file, &mut |path, msg| is.add(path, msg));
    if let (Some(p), None) = (&policy, &identity) {
        if let Some(r) = p.rules.iter().find(|r| matches!(r.action, crate::policy::Action::RequireApproval { .. })) {
            is.add(
                format!("policy.file → {}: rule \"{}\"", p.source.display(), r.id),
                "require_approval needs [identity]: the caller and the reviewers must be authenticated (an agent may never approve its own call)",
            );
        }
    }
    if !is.0.is_empty() {
        return Err(is.0);
    }
    Ok(Config {
        instance: g.instance.clone().unwrap_or_else(hostname),
        workers,
        pin_workers: g.pin_workers,
        worker_cpus,
        background_cpus: g.background_cpus.clone(),
        shutdown_grace,
        io_memory: g.io_memory_kib * 1024,
        ring_depth: g.ring_depth,
        access_log: g.access_log,
        origins,
        hosts,
        listeners,
        admin,
        admin_tls,
        limits,
        timeouts,
        upstreams,
        routes,
        sessions,
        pins,
        detect,
        recording,
        identity,
        policy,
        stdio_servers,
        approvals,
        outbound,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "sluice".into())
}

/// `http[s]://host[:port][/path]` → (https, host, port, path without trailing slash).
pub fn parse_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("\"{url}\" must start with http:// or https://"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("\"{url}\" needs a host (and no user info)"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(port) => (h.to_string(), port),
            Err(_) if authority.starts_with('[') && authority.ends_with(']') => (authority.to_string(), if https { 443 } else { 80 }),
            Err(_) => return Err(format!("\"{url}\" has an invalid port")),
        },
        _ => (authority.to_string(), if https { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((https, host, port, path.trim_end_matches('/').to_string()))
}

impl Config {
    /// The route for a request: the longest matching path prefix among routes whose host
    /// matches (or that match any host).
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<(usize, &Route)> {
        let host = host.map(|h| h.rsplit_once(':').map_or(h, |(a, p)| if p.bytes().all(|b| b.is_ascii_digit()) { a } else { h }));
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.host.as_deref().is_none_or(|rh| host.is_some_and(|h| h.eq_ignore_ascii_case(rh))))
            .filter(|(_, r)| path_matches(&r.path, path))
            .max_by_key(|(_, r)| (r.host.is_some(), r.path.len()))
    }
}

fn path_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty() || path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://127.0.0.1:3000/mcp/").unwrap(), (false, "127.0.0.1".into(), 3000, "/mcp".into()));
        assert_eq!(parse_url("https://api.example").unwrap(), (true, "api.example".into(), 443, "".into()));
        assert_eq!(parse_url("http://[::1]:9/x").unwrap(), (false, "::1".into(), 9, "/x".into()));
        assert!(parse_url("http://a:99999").is_err());
        assert!(parse_url("http://u:p@a").is_err());
        assert!(parse_url("tcp://a").is_err());
    }

    #[test]
    fn routing_prefers_host_then_longest_prefix() {
        let f: schema::File = toml::from_str(
            r#"
[[listener]]
address = "127.0.0.1:0"
[[upstream]]
name = "a"
url = "http://127.0.0.1:1"
[[route]]
path = "/"
upstream = "a"
kind = "http"
[[route]]
path = "/mcp"
upstream = "a"
[[route]]
path = "/mcp"
host = "tools.example"
upstream = "a"
"#,
        )
        .unwrap();
        let c = compile(&f, None, Purpose::Gateway).unwrap();
        assert_eq!(c.route_for(Some("x"), "/mcp").unwrap().0, 1);
        assert_eq!(c.route_for(Some("x"), "/mcp/sub").unwrap().0, 1);
        assert_eq!(c.route_for(Some("x"), "/mcpx").unwrap().0, 0);
        assert_eq!(c.route_for(Some("TOOLS.example:8080"), "/mcp").unwrap().0, 2);
        assert_eq!(c.route_for(None, "/other").unwrap().0, 0);
    }

    #[test]
    fn an_upstream_through_an_egress_proxy_gets_its_connect_request_and_a_pool_of_its_own() {
        let text = |proxy: &str| format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\nurl = \"https://[2001:db8::5]:8443/mcp\"\n{proxy}\n[[route]]\npath = \"/mcp\"\nupstream = \"a\"\n[detect]\nenabled = false\n");
        let build = |proxy: &str| compile(&toml::from_str(&text(proxy)).unwrap(), None, Purpose::Gateway);
        let direct = build("").unwrap();
        std::env::set_var("SLUICE_TEST_PROXY_AUTH", "gw:s3cret!");
        let c = build("proxy = { url = \"http://proxy.corp:3128\", auth_env = \"SLUICE_TEST_PROXY_AUTH\" }").unwrap();
        let p = c.upstreams[0].proxy.as_ref().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.authority.as_str()), ("proxy.corp", 3128, "proxy.corp:3128"));
        assert_eq!(
            std::str::from_utf8(&p.connect).unwrap(),
            "CONNECT [2001:db8::5]:8443 HTTP/1.1\r\nHost: [2001:db8::5]:8443\r\nProxy-Authorization: Basic Z3c6czNjcmV0IQ==\r\n\r\n"
        );
        assert!(!format!("{:?}", c.upstreams[0]).contains("Z3c6"), "the credential is not in debug output");
        assert_ne!(c.upstreams[0].pool_key, direct.upstreams[0].pool_key, "tunnels are not direct connections");
        assert!(!c.upstreams[0].pool_key.contains("Z3c6"), "{}", c.upstreams[0].pool_key);
        let plain = build("proxy = { url = \"http://10.0.0.9:8080/\" }").unwrap();
        let anonymous = build("proxy = { url = \"http://proxy.corp:3128\" }").unwrap();
        assert_ne!(anonymous.upstreams[0].pool_key, c.upstreams[0].pool_key, "no ride on a tunnel another credential opened");
        assert_eq!(std::str::from_utf8(&plain.upstreams[0].proxy.as_ref().unwrap().connect).unwrap(), "CONNECT [2001:db8::5]:8443 HTTP/1.1\r\nHost: [2001:db8::5]:8443\r\n\r\n");
        // Every problem at once, each under its path.
        for (proxy, path, says) in [
            ("proxy = { url = \"https://proxy.corp:3128\" }", "upstream[0].proxy.url", "http://host:port"),
            ("proxy = { url = \"http://gw:pw@proxy.corp:3128\" }", "upstream[0].proxy.url", "auth_env or auth_file"),
            ("proxy = { url = \"http://proxy.corp:3128/x\" }", "upstream[0].proxy.url", "http://host:port"),
            ("proxy = { url = \"http://proxy.corp:3128\", auth_env = \"SLUICE_TEST_PROXY_UNSET\" }", "upstream[0].proxy.auth_env", "is not set"),
            ("proxy = { url = \"http://proxy.corp:3128\", auth_env = \"SLUICE_TEST_PROXY_AUTH\", auth_file = \"/x\" }", "upstream[0].proxy", "exactly one"),
        ] {
            let issues = build(proxy).unwrap_err();
            assert!(issues.iter().any(|i| i.path == path && i.message.contains(says)), "{proxy}: {issues:?}");
            assert!(!format!("{issues:?}").contains("gw:pw"), "a password in the URL is not repeated: {issues:?}");
        }
        std::env::set_var("SLUICE_TEST_PROXY_NOCOLON", "justatoken");
        let issues = build("proxy = { url = \"http://proxy.corp:3128\", auth_env = \"SLUICE_TEST_PROXY_NOCOLON\" }").unwrap_err();
        assert!(issues.iter().any(|i| i.path == "upstream[0].proxy" && i.message.contains("user:password")), "{issues:?}");
    }

    #[test]
    fn keys_made_without_a_key_file_hold_across_reloads_and_key_files_are_checked() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\npath = \"/mcp\"\nupstream = \"a\"\n";
        let f: schema::File = toml::from_str(text).unwrap();
        let (one, two) = (compile(&f, None, Purpose::Gateway).unwrap(), compile(&f, None, Purpose::Gateway).unwrap());
        let fp = |c: &Config| c.detect.as_ref().unwrap().masker.fingerprint("alice@example.com");
        assert_eq!(fp(&one), fp(&two), "fingerprints stay comparable after a reload");
        let held = one.sessions.ids.mint("route0", None, &crate::ids::new_id(), "u");
        assert!(two.sessions.ids.open("route0", None, &held).is_ok(), "a reload ends no session");

        let dir = std::env::temp_dir().join(format!("sluice-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("short.key"), b"too short").unwrap();
        std::fs::write(dir.join("good.key"), [7u8; 32]).unwrap();
        let with = |key: &str| toml::from_str::<schema::File>(&format!("{text}[sessions]\nkey_file = \"{key}\"\n[detect]\nenabled = false\n")).unwrap();
        let file = dir.join("sluice.toml");
        for (key, problem) in [("short.key", "fewer than 16 bytes"), ("missing.key", "cannot read")] {
            let issues = compile(&with(key), Some(&file), Purpose::Gateway).unwrap_err();
            assert!(issues.iter().any(|i| i.path == "sessions.key_file" && i.message.contains(problem) && i.message.contains(key)), "{issues:?}");
            let issues = compile(&toml::from_str(&format!("{text}[sessions]\nkey_file = \"good.key\"\nprevious_key_file = \"{key}\"\n")).unwrap(), Some(&file), Purpose::Gateway).unwrap_err();
            assert!(issues.iter().any(|i| i.path == "sessions.previous_key_file" && i.message.contains(problem)), "{issues:?}");
        }
        let alone = compile(&toml::from_str(&format!("{text}[sessions]\nprevious_key_file = \"good.key\"\n")).unwrap(), Some(&file), Purpose::Gateway).unwrap_err();
        assert!(alone.iter().any(|i| i.path == "sessions.previous_key_file" && i.message.contains("set that too")), "{alone:?}");
        // Relative to the config file; every gateway reading the same key opens the others' ids.
        let (a, b) = (compile(&with("good.key"), Some(&file), Purpose::Gateway).unwrap(), compile(&with("good.key"), Some(&file), Purpose::Gateway).unwrap());
        let held = a.sessions.ids.mint("route0", Some("alice"), &crate::ids::new_id(), "u");
        assert!(b.sessions.ids.open("route0", Some("alice"), &held).is_ok());
        assert!(one.sessions.ids.open("route0", Some("alice"), &held).is_err(), "the key file's ids are not the process's");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_stdio_transport_needs_no_listener_or_route_but_the_gateway_does() {
        let f: schema::File = toml::from_str("[limits]\nmax_body_bytes = 4096\n").unwrap();
        let c = compile(&f, None, Purpose::Stdio).unwrap();
        assert_eq!(c.limits.max_body_bytes, 4096);
        let paths: Vec<String> = compile(&f, None, Purpose::Gateway).unwrap_err().into_iter().map(|i| i.path).collect();
        assert_eq!(paths, ["listener", "route"]);
        // Every other section is still checked.
        let f: schema::File = toml::from_str("[limits]\nmax_body_bytes = 0\n").unwrap();
        assert!(compile(&f, None, Purpose::Stdio).is_err());
    }
}
