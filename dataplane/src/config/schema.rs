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
    pub pins: Pins,
    #[serde(default)]
    pub detect: Detect,
    #[serde(default)]
    pub recording: Recording,
    pub identity: Option<Identity>,
    /// `[policy] file = "policy.toml"`: the ordered rules that decide each call.
    pub policy: Option<super::policy::PolicyRef>,
    /// `[[stdio_server]]`: what `sluice stdio --name NAME` gives the local server it runs.
    #[serde(default, rename = "stdio_server")]
    pub stdio_servers: Vec<StdioServer>,
    /// `[approvals]`: how reviewers hear of calls waiting for them.
    #[serde(default)]
    pub approvals: Approvals,
}

/// `[approvals]`: reviewers are told of each approval step by webhooks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// The approvals page as reviewers reach it, linked from notifications (default:
    /// `http://ADMIN/approvals/ui` of the admin listener's address).
    #[serde(default)]
    pub page_url: Option<String>,
    /// `[[approvals.notify]]`: a webhook told of approval steps.
    #[serde(default)]
    pub notify: Vec<Notify>,
    /// The admin listeners of the deployment's other gateways (`https://host:port`): a
    /// reviewer here sees their held calls too and decides them here.
    #[serde(default)]
    pub peers: Vec<String>,
    /// The client certificate (and key) this gateway presents to peers whose admin listener
    /// asks for one (`admin.tls.client_ca`).
    pub peer_cert: Option<String>,
    pub peer_key: Option<String>,
    /// Where pending requests and decisions are kept across restarts (one file per gateway;
    /// written at most a second after a change and at stop). Default: in memory only.
    #[serde(default)]
    pub state_file: Option<String>,
}

/// One webhook. Its URL is a secret (whoever holds a Slack or Teams webhook URL can post to
/// the channel), so it comes from the environment or a file, as credentials do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Names the webhook in logs and metrics (default: `notify[N]`).
    #[serde(default)]
    pub name: Option<String>,
    /// The environment variable holding the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The file holding the URL.
    #[serde(default)]
    pub url_file: Option<String>,
    /// `json` (the step and the approval record) or `slack` (a message; Slack, Mattermost and
    /// Rocket.Chat incoming webhooks).
    #[serde(default)]
    pub format: crate::approvals::notify::Format,
    /// Which steps: `requested`, `decided`, `expired` of approvals, `pin_changed` (a tool
    /// definition changed, or a new one held for review) (default: all four).
    #[serde(default)]
    pub on: Option<Vec<String>>,
}

/// A local server run by `sluice stdio --name NAME`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioServer {
    pub name: String,
    /// Secrets handed to the server as environment variables (the agent's configuration never
    /// holds them), scrubbed from everything the server sends back.
    #[serde(default)]
    pub env: Vec<StdioEnv>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioEnv {
    /// The variable the server reads.
    pub name: String,
    /// Where the secret is: an environment variable of the sluice process, or a file.
    pub env: Option<String>,
    pub file: Option<String>,
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
    /// CPUs (ids as in `taskset`) for every thread that is not a worker: recording (spool
    /// writer, Kafka client), logging, housekeeping, admin, identity and token refreshes,
    /// webhooks. The workers run on the other CPUs. Empty: everything shares every CPU.
    #[serde(default)]
    pub background_cpus: Vec<usize>,
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
    /// Web origins (`https://chat.example.com`) whose pages may call the gateway, besides
    /// loopback ones; a request with any other `Origin` is refused 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Names the gateway is called by (`sluice.corp.example`, `name:port`, `*.domain`, or `*`
    /// for any), besides IP addresses, loopback names and the names routes match by; a request
    /// whose `Host` is any other name is refused 421 (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// One log line per HTTP exchange (target `sluice::access`, level info): client, route,
    /// method, path, status, duration, caller, session, JSON-RPC method and tool, decision.
    #[serde(default)]
    pub access_log: bool,
    /// PEM roots trusted for the HTTPS requests the gateway makes itself (OIDC discovery and
    /// JWKS, token endpoints, approval webhooks) instead of Mozilla's: the host's bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`) to include a corporate CA.
    #[serde(default)]
    pub outbound_ca: Option<String>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            instance: None,
            workers: 0,
            pin_workers: true,
            background_cpus: Vec::new(),
            shutdown_grace: default_grace(),
            io_memory_kib: default_io_memory(),
            ring_depth: default_ring_depth(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            access_log: false,
            outbound_ca: None,
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
    /// PEM CA certificates that sign agents' client certificates (mTLS). With it, a client
    /// certificate is verified and becomes the caller's identity (`[identity.mtls]`).
    pub client_ca: Option<String>,
    /// `required` (default with `client_ca`): no handshake without a valid client certificate.
    /// `optional`: a client may present none (and authenticate otherwise).
    pub client_auth: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
    /// Serve the admin listener over TLS (reviewers' tokens travel on it); with `client_ca`,
    /// only clients with a certificate it signed get in at all.
    pub tls: Option<ServerTls>,
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
    /// Open agent connections, all workers together (each worker takes its share); one more
    /// is answered 503 and closed.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Request-body bytes held at once, all workers together (each worker takes its share): a
    /// body that would pass it is answered 503 before it is read, so many large or slow bodies
    /// cannot exhaust the host's memory.
    #[serde(default = "default_buffered")]
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: default_head(),
            max_body_bytes: default_body(),
            max_sse_event_bytes: default_body(),
            max_connections: default_connections(),
            max_buffered_bytes: default_buffered(),
        }
    }
}

fn default_connections() -> usize {
    20_000
}
fn default_buffered() -> usize {
    1 << 30
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
        Timeouts { client_header: t10(), idle_keepalive: t60(), upstream_connect: t5(), upstream_first_byte: t60(), stream_idle: t300() }
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
    /// A credential the gateway adds to every request to this upstream (agents never hold it).
    pub credential: Option<Credential>,
    /// Tell the upstream who the caller is: `headers` (`X-Sluice-Subject`, …) or `token` (a
    /// JWT the gateway signs with `identity.assertion.key_file`, in `X-Sluice-Identity`).
    pub forward_identity: Option<String>,
    /// The `aud` of those tokens (default: the upstream's `url`).
    pub identity_audience: Option<String>,
    /// This upstream's own `upstream_connect`, `upstream_first_byte`, `stream_idle` (each
    /// defaults to `[timeouts]`): a server whose tools run for minutes without streaming.
    pub timeouts: Option<UpstreamTimeouts>,
    /// An HTTP forward proxy the gateway reaches this upstream through (a CONNECT tunnel per
    /// connection; TLS to the upstream runs inside it).
    pub proxy: Option<UpstreamProxy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamProxy {
    /// `http://host:port` of the proxy.
    pub url: String,
    /// `user:password` for `Proxy-Authorization: Basic`, from the environment or a file.
    pub auth_env: Option<String>,
    pub auth_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTimeouts {
    pub upstream_connect: Option<String>,
    pub upstream_first_byte: Option<String>,
    pub stream_idle: Option<String>,
}

/// `bearer`, `basic` (the secret is `user:password`) or `header` (with `header = "Name"`),
/// read from `env` or `file` (never inline in this file), re-read on reload; or
/// `oauth_client_credentials`: a bearer token the gateway asks `token_url` for as `client_id`
/// with the secret from `env`/`file` (`client_auth` `basic` or `post`), or a JWT signed with
/// `key_file` (`private_key_jwt`); optional `scope`,
/// `resource` (RFC 8707), `audience`), renewed in the background.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub kind: String,
    pub header: Option<String>,
    pub env: Option<String>,
    pub file: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_auth: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub audience: Option<String>,
    /// `client_auth = "private_key_jwt"`: the gateway's Ed25519 key (PKCS#8 PEM) and the
    /// assertion's `aud` (default: `token_url`).
    pub key_file: Option<String>,
    pub assertion_audience: Option<String>,
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
    /// Client certificate chain and key (PEM) presented to the upstream (mTLS).
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
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
    /// Let request paths hold escaped separators (`%2F`, `%5C`), for upstreams that take them
    /// inside a segment (GitLab project ids); refused 400 otherwise.
    #[serde(default)]
    pub allow_encoded_slashes: bool,
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
    /// Most sessions one authenticated caller may hold at once (0: no limit); past it its
    /// `initialize` is refused (429) instead of evicting other callers' sessions.
    #[serde(default = "default_max_per_caller")]
    pub max_per_caller: usize,
    /// Key material (≥ 16 bytes) for the session ids agents hold, the same file on every
    /// gateway of a deployment: a session then continues on any of them and across restarts.
    /// Without it, ids are valid on this gateway until it restarts.
    #[serde(default)]
    pub key_file: Option<String>,
    /// The key file before a rotation: ids minted with it still open until it is removed.
    #[serde(default)]
    pub previous_key_file: Option<String>,
}

/// Tool pinning (`crate::pins`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where pins are kept across restarts (default: memory only).
    #[serde(default)]
    pub file: Option<String>,
    /// What a tool whose definition changed does until accepted: `block` or `log`.
    #[serde(default)]
    pub on_change: crate::pins::OnChange,
    /// Groups whose members may accept a changed definition (admin API, `sluice pins accept`).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Reviewed definitions, the same file on every gateway (a pins file; read at start and
    /// on reload): they seed the pins a gateway lacks and override first-sight ones.
    #[serde(default)]
    pub baseline: Option<String>,
    /// A tool no pin knows: `pin` it on first sight (trust on first use), or `hold` it hidden
    /// and refused until accepted.
    #[serde(default)]
    pub first_sight: FirstSight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstSight {
    #[default]
    Pin,
    Hold,
}

impl Default for Pins {
    fn default() -> Self {
        Pins { enabled: true, file: None, on_change: Default::default(), approvers: Vec::new(), baseline: None, first_sight: FirstSight::Pin }
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { idle_timeout: default_session_idle(), max_sessions: default_max_sessions(), max_per_caller: default_max_per_caller(), key_file: None, previous_key_file: None }
    }
}

fn default_session_idle() -> String {
    "30m".into()
}
fn default_max_sessions() -> usize {
    100_000
}
fn default_max_per_caller() -> usize {
    10_000
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
    /// Request headers not inspected, besides credentials and framing (which never are).
    /// Default: the client-address headers a proxy in front of the gateway sets, whose public
    /// addresses would otherwise be findings ([`DEFAULT_SKIP_HEADERS`]).
    pub skip_headers: Option<Vec<String>>,
}

/// Headers that carry the client's address, set by load balancers and CDNs.
pub const DEFAULT_SKIP_HEADERS: &[&str] = &["x-forwarded-for", "forwarded", "x-real-ip", "x-client-ip", "true-client-ip", "cf-connecting-ip", "x-cluster-client-ip"];

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
            skip_headers: None,
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

/// `[recording]`: every session event, to the local spool and (when configured) on to Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// Turning recording off is an explicit choice: nothing is written anywhere.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A message payload (masked params/result) larger than this is recorded without its
    /// payload (`payload_truncated`).
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Events each worker may have in flight to the spool writer before it keeps them in its
    /// overflow buffer.
    #[serde(default = "default_queue_events")]
    pub queue_events: usize,
    /// Per worker, in MiB: overflow beyond which new requests are refused (fail closed) until
    /// the spool catches up.
    #[serde(default = "default_overflow_mib")]
    pub overflow_mib: usize,
    /// What to do when the spool cannot take more (disk full, `spool.max_mib` reached with
    /// undelivered events): `refuse` new requests (default, fail closed), or `drop_oldest`
    /// undelivered segments (counted and logged as lost).
    #[serde(default = "default_on_full")]
    pub on_full: String,
    #[serde(default)]
    pub spool: Spool,
    pub kafka: Option<Kafka>,
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            enabled: true,
            max_payload_bytes: default_max_payload(),
            queue_events: default_queue_events(),
            overflow_mib: default_overflow_mib(),
            on_full: default_on_full(),
            spool: Spool::default(),
            kafka: None,
        }
    }
}

fn default_max_payload() -> usize {
    64 * 1024
}
fn default_queue_events() -> usize {
    16 * 1024
}
fn default_overflow_mib() -> usize {
    64
}
fn default_on_full() -> String {
    "refuse".into()
}

/// `[recording.spool]`: append-only segment files with a CRC per record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    /// Directory (created if missing; one gateway per directory). Default:
    /// `$STATE_DIRECTORY/spool` under systemd, else `/var/lib/sluice/spool`.
    pub dir: Option<String>,
    /// Group commit: fsync at least this often while events arrive...
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval: String,
    /// ...or after this many records, whichever comes first.
    #[serde(default = "default_fsync_records")]
    pub fsync_records: usize,
    /// A segment is closed and a new one started at this size (MiB)...
    #[serde(default = "default_segment_mib")]
    pub segment_mib: u64,
    /// ...or this age.
    #[serde(default = "default_segment_age")]
    pub segment_age: String,
    /// Retention: the spool never holds more than this (MiB); see `recording.on_full`.
    #[serde(default = "default_spool_max_mib")]
    pub max_mib: u64,
    /// Retention: segments older than this are deleted (delivered ones at once when Kafka is
    /// configured).
    #[serde(default = "default_spool_max_age")]
    pub max_age: String,
}

impl Default for Spool {
    fn default() -> Self {
        Spool {
            dir: None,
            fsync_interval: default_fsync_interval(),
            fsync_records: default_fsync_records(),
            segment_mib: default_segment_mib(),
            segment_age: default_segment_age(),
            max_mib: default_spool_max_mib(),
            max_age: default_spool_max_age(),
        }
    }
}

fn default_fsync_interval() -> String {
    "10ms".into()
}
fn default_fsync_records() -> usize {
    4096
}
fn default_segment_mib() -> u64 {
    64
}
fn default_segment_age() -> String {
    "10m".into()
}
fn default_spool_max_mib() -> u64 {
    10 * 1024
}
fn default_spool_max_age() -> String {
    "168h".into()
}

/// `[recording.kafka]`: forward spooled events to Kafka (idempotent producer, acks=all).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kafka {
    /// `host:port,host:port`.
    pub brokers: String,
    #[serde(default = "default_events_topic")]
    pub events_topic: String,
    /// Approval steps also go here.
    #[serde(default = "default_approvals_topic")]
    pub approvals_topic: String,
    /// `zstd` or `lz4`.
    #[serde(default = "default_compression")]
    pub compression: String,
    #[serde(default = "default_linger")]
    pub linger: String,
    /// librdkafka properties passed through (TLS/SASL: `security.protocol`, `ssl.ca.location`,
    /// `sasl.mechanism`, `sasl.username`, ...). Secrets do not belong here: see `options_from_env`.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// librdkafka properties read from environment variables at start
    /// (`{ "sasl.password" = "KAFKA_PASSWORD" }`).
    #[serde(default)]
    pub options_from_env: std::collections::BTreeMap<String, String>,
}

fn default_events_topic() -> String {
    "sluice.events".into()
}
fn default_approvals_topic() -> String {
    "sluice.approvals".into()
}
/// lz4: about a third less gateway CPU per event than zstd (`recorder_throughput
/// --compression`); zstd for links where bytes cost more than the gateway's cores.
fn default_compression() -> String {
    "lz4".into()
}
/// Batches of 250 ms: few, large produce requests. Per-request work on the broker (and in
/// librdkafka) is what raised the proxy's p99 in `loadtest/recording_bench.sh` (at ⅛ and ¼ of
/// peak, three runs: 20 ms 1.10–1.58× recording off, 250 ms 0.94–1.23×; README); events are
/// durable in the spool long before, so nothing waits on this but the analyzer.
fn default_linger() -> String {
    "250ms".into()
}

/// `[identity]`: who is calling. Bearer JWTs checked against the issuer's JWKS (OIDC
/// discovery), API keys for service agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// `required` (default once `[identity]` is present): a call without a valid credential
    /// gets 401. `off`: every caller is anonymous.
    #[serde(default = "default_identity_mode")]
    pub mode: String,
    /// OIDC issuer URL; its `/.well-known/openid-configuration` names the JWKS.
    pub issuer: Option<String>,
    /// Accepted `aud` values (at least one must be in the token).
    #[serde(default)]
    pub audience: Vec<String>,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew: String,
    /// The JWKS is fetched again this often...
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: String,
    /// ...and on an unknown `kid`, at most this often.
    #[serde(default = "default_jwks_min_interval")]
    pub jwks_min_interval: String,
    /// Claim paths (dot-separated) for the subject, groups and agent type.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    pub agent_type_claim: Option<String>,
    /// This gateway's resource identifier in the protected-resource metadata (RFC 9728);
    /// default: `http(s)://<Host><route path>` of the request.
    pub resource: Option<String>,
    #[serde(default, rename = "api_key")]
    pub api_keys: Vec<ApiKey>,
    /// Client certificates (verified on a listener with `tls.client_ca`) as identities.
    pub mtls: Option<Mtls>,
    /// The key the gateway signs identity assertions to upstreams with (`forward_identity = "token"`).
    pub assertion: Option<Assertion>,
    /// Opaque access tokens read by the issuer's introspection endpoint (RFC 7662).
    pub introspection: Option<Introspection>,
    /// More issuers whose JWTs are accepted (an identity provider being migrated to, a
    /// partner's): each with its own audience; claim paths default to the ones above.
    #[serde(default, rename = "also_trust")]
    pub also_trust: Vec<TrustedIssuer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    pub issuer: String,
    #[serde(default)]
    pub audience: Vec<String>,
    pub subject_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub agent_type_claim: Option<String>,
}

/// `[identity.introspection]`: the endpoint, the gateway's client there (its secret from `env`
/// or `file`; `client_auth` basic or post), and how long an answer is trusted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    pub url: String,
    pub client_id: String,
    pub env: Option<String>,
    pub file: Option<String>,
    pub client_auth: Option<String>,
    #[serde(default = "default_introspection_cache")]
    pub cache: String,
}

fn default_introspection_cache() -> String {
    "60s".into()
}

/// `[identity.assertion]`: an Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm
/// ed25519`), the `iss` of the assertions, and how long each is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub key_file: String,
    #[serde(default = "default_assertion_issuer")]
    pub issuer: String,
    #[serde(default = "default_assertion_lifetime")]
    pub lifetime: String,
}

fn default_assertion_issuer() -> String {
    "sluice".into()
}
fn default_assertion_lifetime() -> String {
    "5m".into()
}

/// How a verified client certificate names the caller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    /// `cn` (default): the subject's common name; `san`: the first URI, DNS or e-mail
    /// subject alternative name (e.g. a SPIFFE ID).
    #[serde(default = "default_mtls_subject")]
    pub subject: String,
    /// Groups and agent type per certificate subject.
    #[serde(default, rename = "client")]
    pub clients: Vec<MtlsClient>,
}

fn default_mtls_subject() -> String {
    "cn".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsClient {
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub agent_type: Option<String>,
}

/// A service agent's API key, stored as its SHA-256 (`printf %s "$KEY" | sha256sum`). Sent
/// as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub agent_type: Option<String>,
    pub sha256: String,
}

fn default_identity_mode() -> String {
    "required".into()
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"].map(String::from).to_vec()
}
fn default_clock_skew() -> String {
    "60s".into()
}
fn default_jwks_refresh() -> String {
    "10m".into()
}
fn default_jwks_min_interval() -> String {
    "10s".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
