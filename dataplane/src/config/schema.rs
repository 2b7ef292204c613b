//! The user-facing configuration file: a strict TOML schema. Unknown keys are errors.
//! [`super::compile`] lowers it into the validated form the workers use.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub gateway: Gateway,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub sessions: Sessions,
    #[serde(default)]
    pub detect: Detect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Name of this gateway instance in logs, metrics and events (default: the host name).
    pub instance: Option<String>,
    /// Worker executors, one per core; 0 means one per available core.
    #[serde(default)]
    pub workers: usize,
    /// Pin each worker to a core.
    #[serde(default = "yes")]
    pub pin_workers: bool,
    /// How long in-flight requests and open streams may run on after SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace: String,
    /// io_uring registered buffer memory per worker, in KiB. It counts against
    /// RLIMIT_MEMLOCK on older kernels.
    #[serde(default = "default_io_memory")]
    pub io_memory_kib: usize,
    /// io_uring submission queue depth per worker.
    #[serde(default = "default_ring_depth")]
    pub ring_depth: usize,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            instance: None,
            workers: 0,
            pin_workers: true,
            shutdown_grace: default_grace(),
            io_memory_kib: default_io_memory(),
            ring_depth: default_ring_depth(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_grace() -> String {
    "10s".into()
}
fn default_io_memory() -> usize {
    512
}
fn default_ring_depth() -> usize {
    128
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Option<String>,
    pub address: String,
    pub tls: Option<ServerTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_head")]
    pub max_head_bytes: usize,
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_body")]
    pub max_sse_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: default_head(), max_body_bytes: default_body(), max_sse_event_bytes: default_body() }
    }
}

fn default_head() -> usize {
    32 * 1024
}
fn default_body() -> usize {
    8 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Whole request head (and a buffered body) must arrive within this.
    #[serde(default = "t10")]
    pub client_header: String,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(default = "t60")]
    pub idle_keepalive: String,
    #[serde(default = "t5")]
    pub upstream_connect: String,
    /// From the request sent to the first byte of the upstream's response.
    #[serde(default = "t60")]
    pub upstream_first_byte: String,
    /// Longest silence inside a streamed (SSE or chunked) response.
    #[serde(default = "t300")]
    pub stream_idle: String,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: t10(),
            idle_keepalive: t60(),
            upstream_connect: t5(),
            upstream_first_byte: t60(),
            stream_idle: t300(),
        }
    }
}

fn t5() -> String {
    "5s".into()
}
fn t10() -> String {
    "10s".into()
}
fn t60() -> String {
    "60s".into()
}
fn t300() -> String {
    "300s".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    /// `http://host:port[/base]` or `https://…`.
    pub url: String,
    pub tls: Option<ClientTls>,
    /// Idle connections kept per worker.
    #[serde(default = "default_pool")]
    pub pool_max_idle: usize,
}

fn default_pool() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA bundle to verify the upstream with (default: the Mozilla roots).
    pub ca: Option<String>,
    /// Name to verify and send as SNI (default: the URL's host).
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// MCP Streamable HTTP: every body is JSON-RPC and every SSE event is parsed.
    #[default]
    Mcp,
    /// A plain HTTP API: JSON bodies pass the message hooks as one document.
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    #[serde(default)]
    pub kind: RouteKind,
    /// Path prefix this route matches (segment-wise: `/mcp` matches `/mcp` and `/mcp/x`).
    #[serde(default = "root")]
    pub path: String,
    /// Host header this route matches (without port); any host when absent.
    pub host: Option<String>,
    pub upstream: String,
    /// Replace the matched prefix with this path on the upstream (default: the upstream URL's path).
    pub upstream_path: Option<String>,
    /// Send the upstream's own authority as Host instead of the agent's.
    #[serde(default)]
    pub rewrite_host: bool,
}

fn root() -> String {
    "/".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    /// A session with no traffic for this long is released.
    #[serde(default = "default_session_idle")]
    pub idle_timeout: String,
    /// Most sessions tracked at once; the least recently used beyond that are released.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { idle_timeout: default_session_idle(), max_sessions: default_max_sessions() }
    }
}

fn default_session_idle() -> String {
    "30m".into()
}
fn default_max_sessions() -> usize {
    100_000
}

/// `[detect]`: content inspection of every message (PII, secrets, prompt injection, tool
/// poisoning). Until the policy stage exists, an action per direction and category decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Rule pack directory (default: the packs shipped with sluice).
    pub rules: Option<String>,
    /// Key material for fingerprint masking (any length; keep it secret and the same on every
    /// gateway of a deployment, so fingerprints match). Without it, fingerprints are stable
    /// only until restart.
    pub fingerprint_key_file: Option<String>,
    /// Text of the `placeholder` mask strategy.
    #[serde(default = "default_placeholder")]
    pub placeholder: String,
    /// Agent → upstream (tool arguments, request params). Defaults: secret = "mask", others "log".
    #[serde(default)]
    pub request: DetectActions,
    /// Upstream → agent (results, errors, tool metadata). Defaults: "mask" for every category.
    #[serde(default)]
    pub response: DetectActions,
    /// Mask strategy per category, overriding each rule's default.
    #[serde(default)]
    pub strategy: DetectStrategies,
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            enabled: true,
            rules: None,
            fingerprint_key_file: None,
            placeholder: default_placeholder(),
            request: DetectActions::default(),
            response: DetectActions::default(),
            strategy: DetectStrategies::default(),
        }
    }
}

/// `mask`, `block`, `log` or `off` per category.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectActions {
    pub pii: Option<String>,
    pub secret: Option<String>,
    pub injection: Option<String>,
    pub poisoning: Option<String>,
}

/// `redact`, `partial`, `fingerprint`, `placeholder` or `remove` per category.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectStrategies {
    pub pii: Option<String>,
    pub secret: Option<String>,
    pub injection: Option<String>,
    pub poisoning: Option<String>,
}

fn default_placeholder() -> String {
    "[MASKED]".into()
}
