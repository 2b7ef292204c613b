//! The stdio transport: `sluice stdio [--config FILE] -- COMMAND [ARGS…]`.
//!
//! An MCP client that launches its servers as local processes launches sluice in the server's
//! place; sluice starts the server as its child and sits between the two pipes. Every
//! newline-delimited JSON-RPC message passes the same chain as on an HTTP route — credential
//! scrub, policy masks, detection, policy (tools hidden from `tools/list`), recording — and
//! each direction runs on its own thread with its own worker state, so neither direction ever
//! waits on the other, exactly as with two plain pipes. The caller is the operating-system user
//! running the process (a process cannot pose as another user); the session is the process.
//!
//! What the gateway answers itself (a refused call, a line that is not JSON-RPC) goes back to
//! the side that sent the message: a client's refused request to the client, a server's refused
//! request (sampling, elicitation) to the server. Nothing that fails inspection is forwarded.

use crate::config::{self, schema, Config, Purpose, Route};
use crate::error::ProxyError;
use crate::events::Recorder;
use crate::hooks::{self, Direction, Outcome, RequestCtx};
use crate::identity::Identity;
use crate::jsonrpc::{self, Kind};
use crate::policy::hook::SessionsHandle;
use crate::proxy::exchange::{observe, reused_request_id, with_scratch};
use crate::proxy::Worker;
use crate::runtime::Shared;
use crate::session::Session;
use anyhow::{anyhow, Context as _};
use simd_json::prelude::*;
use sluice_schema::event::Kind as EventKind;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How many spool directories concurrent stdio gateways may take: the configured one, then
/// `DIR-1` … `DIR-15` (each spool is locked by the process that writes it).
const SPOOL_SLOTS: usize = 16;

/// The client's address in records: the client is a local process.
const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub struct Options {
    /// Configuration file (its `[detect]`, `[policy]`, `[recording]`, `[limits]`,
    /// `[sessions]`, `[gateway]` apply; listeners and routes are not needed).
    pub config: Option<PathBuf>,
    /// The name this server goes by in policy (`route`) and in the record.
    pub name: String,
    /// Without a file: the spool directory.
    pub spool: Option<PathBuf>,
    /// Without a file: Kafka brokers to send events to as well.
    pub kafka: Option<String>,
    /// The MCP server's command line.
    pub command: Vec<OsString>,
}

/// The configuration without a file: detection with the shipped rule packs and recording to
/// a spool in the user's state directory (the process runs as the user whose agent launched
/// it, not as a service).
fn quick(opts: &Options) -> anyhow::Result<Config> {
    let spool = match &opts.spool {
        Some(d) => d.clone(),
        // The gateway's default under systemd ($STATE_DIRECTORY/spool), else the user's.
        None => config::user_dir("STATE_DIRECTORY", "XDG_STATE_HOME", ".local/state").unwrap_or_else(|| PathBuf::from(".")).join("spool"),
    };
    let mut text = format!("[recording.spool]\ndir = {:?}\n", spool.to_string_lossy());
    if let Some(k) = &opts.kafka {
        text.push_str(&format!("[recording.kafka]\nbrokers = {k:?}\n"));
    }
    let file: schema::File = toml::from_str(&text)?;
    config::from_schema_for(&file, Purpose::Stdio).map_err(|e| anyhow!("{e}"))
}

/// Where this server's pins are kept: `pins.file` of the configuration, else one file per server
/// under the user's state directory — named by `--name`, or by the program and a digest of its
/// arguments (which may hold secrets, so they are not spelled out). `None`: nowhere to keep them.
fn pins_file(cfg: &Config, opts: &Options, program: &str) -> Option<PathBuf> {
    if let Some(f) = cfg.pins.as_ref().and_then(|p| p.file.clone()) {
        return Some(f);
    }
    let safe = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect::<String>();
    let key = if opts.name != DEFAULT_NAME {
        safe(&opts.name)
    } else {
        let mut h = blake3::Hasher::new();
        for a in &opts.command[1..] {
            h.update(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).update(&[0]);
        }
        format!("{}-{}", safe(program), &h.finalize().to_hex()[..12])
    };
    Some(config::user_dir("STATE_DIRECTORY", "XDG_STATE_HOME", ".local/state")?.join("pins").join(format!("{key}.json")))
}

/// `--name` when none is given.
pub const DEFAULT_NAME: &str = "stdio";

/// The caller: the operating-system user this process runs as, with its groups.
pub fn os_identity() -> Identity {
    // SAFETY: getuid cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    let subject = user_name(uid).unwrap_or_else(|| format!("uid:{uid}"));
    Identity { subject, groups: os_groups(), agent_type: None, via: "os_user", claims: None }
}

fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it sets point into `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buf`, which is still alive.
    Some(unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned())
}

fn os_groups() -> Vec<String> {
    // SAFETY: a zero count asks only for the number of groups.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut ids = vec![0 as libc::gid_t; n.max(0) as usize];
    // SAFETY: `ids` has room for `n` entries.
    let n = unsafe { libc::getgroups(ids.len() as libc::c_int, ids.as_mut_ptr()) };
    ids.truncate(n.max(0) as usize);
    // SAFETY: getgid cannot fail.
    let primary = unsafe { libc::getgid() };
    if !ids.contains(&primary) {
        ids.insert(0, primary);
    }
    let mut names: Vec<String> = ids.into_iter().map(|g| group_name(g).unwrap_or_else(|| format!("gid:{g}"))).collect();
    names.dedup();
    names
}

fn group_name(gid: libc::gid_t) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero group is a valid value for getgrgid_r to fill.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it sets point into `buf`.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || gr.gr_name.is_null() {
        return None;
    }
    // SAFETY: gr_name is a NUL-terminated string inside `buf`, which is still alive.
    Some(unsafe { std::ffi::CStr::from_ptr(gr.gr_name) }.to_string_lossy().into_owned())
}

/// Open the spool: the configured directory, or the first free sibling (`DIR-1`, …) when
/// other stdio gateways hold it.
fn start_recording(cfg: &Config) -> anyhow::Result<Option<Arc<Recorder>>> {
    let Some(r) = &cfg.recording else {
        tracing::warn!("recording is off ([recording] enabled = false): no session events are kept");
        return Ok(None);
    };
    for slot in 0..SPOOL_SLOTS {
        let mut rc = r.clone();
        if slot > 0 {
            rc.spool.dir = sibling(&r.spool.dir, slot);
        }
        match Recorder::start(rc, &cfg.instance, 2) {
            Ok(rec) => return Ok(Some(rec)),
            Err(e) if e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::WouldBlock)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(anyhow!(
        "recording.spool.dir {}: it and {} siblings ({}) are all held by other sluice processes; stop some, or give this server a spool of its own",
        r.spool.dir.display(),
        SPOOL_SLOTS - 1,
        sibling(&r.spool.dir, 1).display()
    ))
}

fn sibling(dir: &Path, slot: usize) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(format!("-{slot}"));
    PathBuf::from(s)
}

/// One side's output: whole lines, written by whichever thread has something for it.
struct Pipe {
    out: std::sync::Mutex<Option<Box<dyn Write + Send>>>,
}

impl Pipe {
    fn new(w: impl Write + Send + 'static) -> Self {
        Pipe { out: std::sync::Mutex::new(Some(Box::new(w))) }
    }

    /// Write one message and its newline; `Err` once the reader is gone or the pipe closed.
    fn send(&self, line: &[u8]) -> io::Result<()> {
        let mut g = self.out.lock().map_err(|_| io::Error::other("a writer panicked"))?;
        let w = g.as_mut().ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "closed"))?;
        w.write_all(line)?;
        w.write_all(b"\n")?;
        w.flush()
    }

    /// Close it (the reader sees end of input).
    fn close(&self) {
        if let Ok(mut g) = self.out.lock() {
            g.take();
        }
    }
}

/// What both directions share.
struct Link {
    shared: Arc<Shared>,
    route: Route,
    identity: Identity,
    /// The session's id (the gateway's; stdio has no MCP session id, so it keys the store too).
    session: String,
    /// The server's program name (not its arguments: they may hold secrets).
    upstream: String,
    /// The secrets given to the server in its environment: scrubbed from what it sends back.
    scrub: Option<Arc<crate::config::credential::Injected>>,
}

impl Link {
    fn ctx(&self, worker: usize, cfg: &Config) -> RequestCtx {
        let mut ctx = RequestCtx::offline(&self.route.name, cfg.detect.clone(), cfg.policy.clone(), Some(self.identity.clone()));
        ctx.worker = worker;
        ctx.route = self.route.label.clone();
        ctx.upstream = self.upstream.clone();
        ctx.client = LOCAL;
        ctx.http_method = String::new();
        ctx.mcp_session_id = Some(self.session.clone());
        ctx.gateway_session_id = Some(self.session.clone());
        ctx.credential = self.scrub.clone();
        ctx
    }
}

/// How a line read from a pipe ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole line is in the buffer (without its `\n` or `\r\n`).
    Line,
    /// A line of this many bytes, longer than allowed: skipped to its end, not kept.
    TooLong(usize),
    /// End of input.
    End,
}

/// Read the next line into `buf`, keeping at most `max` bytes of it; a longer line is read to
/// its end and reported, so the next line starts clean. A last line without `\n` counts.
pub fn next_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Next> {
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
struct Step<'a> {
    /// To the other side: `None` when nothing goes on, else the bytes (the line as read when
    /// unchanged).
    forward: Option<std::borrow::Cow<'a, [u8]>>,
    /// Back to the sender: the gateway's answers (refusals), one line.
    back: Option<Vec<u8>>,
}

/// A message the gateway does not pass on: the error, the id to answer, and who gets the
/// answer — a request's sender, or the asker of a refused answer (a client waiting for its
/// call's result, a server waiting for its sampling result).
struct Unpassed {
    error: ProxyError,
    id: Option<String>,
    to: Option<Direction>,
}

/// One message through the chain. `line` is what the sender wrote.
fn message<'a>(w: &Worker, link: &Link, cfg: &Config, dir: Direction, line: &'a [u8]) -> Step<'a> {
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
fn awaited_id(link: &Link, line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    if v.get("method").is_some() {
        return None;
    }
    let id = v.get("id").filter(|id| id.is_string() || id.is_number())?.to_string();
    link.shared.sessions.with(&link.session, |s| s.pending_client.remove(&id)).flatten().map(|_| id)
}

/// What is wrong with an unreadable line, without quoting any of it.
fn body_problem(e: &jsonrpc::BodyError) -> &'static str {
    match e {
        jsonrpc::BodyError::Parse(_) => "not JSON",
        jsonrpc::BodyError::TooDeep => "nested too deep",
        jsonrpc::BodyError::DuplicateMember { .. } => "an object names a member twice",
        jsonrpc::BodyError::Invalid { reason, .. } => reason,
    }
}

fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Request => Direction::Response,
        Direction::Response => Direction::Request,
    }
}

/// Over stdio the session opens with the process; `initialize` tells it who the client is.
fn remember_initialize(link: &Link, body: &jsonrpc::Body<'_>) {
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
fn drain_overflow(em: &crate::events::Emitter) {
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
fn pump(id: usize, link: &Link, dir: Direction, from: impl Read, to: &Pipe, back: &Pipe) {
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

/// Why the relay ended.
enum End {
    ClientClosed,
    ServerClosed,
    Signal(i32),
}

/// Run the server behind the gateway until one side ends; the server's exit status.
pub fn run(opts: Options) -> anyhow::Result<i32> {
    let Some(program) = opts.command.first() else {
        return Err(anyhow!("give the MCP server's command after `--`, e.g. `sluice stdio -- npx -y @modelcontextprotocol/server-everything`"));
    };
    let mut cfg = match &opts.config {
        Some(p) => config::load_for(p, Purpose::Stdio).map_err(|e| anyhow!("{e}"))?,
        None => quick(&opts)?,
    };
    // One worker per direction.
    cfg.workers = 2;
    if cfg.identity.is_some() {
        tracing::warn!("[identity] does not apply over stdio: the caller is the operating-system user running this process");
    }
    let recorder = start_recording(&cfg)?;
    let grace = cfg.shutdown_grace;
    let upstream = Path::new(program).file_name().map_or_else(|| program.to_string_lossy().into_owned(), |n| n.to_string_lossy().into_owned());
    // A local server's tools are pinned across launches: an update of its package that
    // changes a tool's description (the usual rug pull of a local server) is caught at the
    // next launch. One file per server, so servers started through the same program
    // (`npx`, `uvx`) do not share pins.
    let pins_file = cfg.pins.as_ref().and(pins_file(&cfg, &opts, &upstream));
    let pins = match &pins_file {
        Some(f) => {
            let store = crate::pins::Store::load(f)?;
            store.set_accept_hint(format!("sluice pins accept --file {}", f.display()));
            store
        }
        None => crate::pins::Store::default(),
    };
    let shared = Shared::new(cfg.clone(), recorder, pins, crate::approvals::Store::default());
    // A local server's changed tool is news for the same reviewers (`[[approvals.notify]]`).
    if !cfg.approvals.notify.is_empty() {
        shared.notifier.start().context("starting the notification thread")?;
    }
    if let Some(f) = pins_file.clone() {
        let sh = shared.clone();
        std::thread::Builder::new().name("sluice-pins".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = sh.pins.save_if_dirty(&f) {
                tracing::error!(file = %f.display(), error = %e, "cannot write the pins file; retrying every second");
            }
        })?;
    }
    let route = Route {
        name: opts.name.clone(),
        label: Arc::from(opts.name.as_str()),
        kind: schema::RouteKind::Mcp,
        path: String::new(),
        host: None,
        upstream: 0,
        upstream_path: String::new(),
        rewrite_host: false,
        allow_encoded_slashes: false,
    };
    let identity = os_identity();
    let server = cfg.stdio_servers.iter().find(|s| s.name == opts.name);
    if server.is_none() && !cfg.stdio_servers.is_empty() {
        let known: Vec<&str> = cfg.stdio_servers.iter().map(|s| s.name.as_str()).collect();
        tracing::warn!(name = %opts.name, known = ?known, "no [[stdio_server]] has this --name: the server gets no secrets from the configuration");
    }
    // Signals from here on are the relay's to handle (the server gets SIGTERM, the session
    // its end), not the default action's.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP]).context("installing signal handlers")?;
    let mut child = Command::new(program)
        .args(&opts.command[1..])
        .envs(server.iter().flat_map(|s| s.env.iter().map(|(k, v)| (k, v))))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting the MCP server {:?}", program))?;
    let (Some(server_in), Some(server_out)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(anyhow!("the MCP server's pipes could not be set up"));
    };
    let mut session = Session::new("", &route.name);
    session.mcp_session_id = session.gateway_id.clone();
    session.owner = Some(identity.subject.clone());
    let scrub = server.and_then(|s| s.scrub.clone());
    let link = Arc::new(Link { shared: shared.clone(), route, identity, session: session.gateway_id.clone(), upstream, scrub });
    shared.sessions.insert(session, cfg.sessions.max_sessions);
    crate::runtime::lifecycle(&shared.recorder, EventKind::GatewayStart, None, "started (stdio)");
    if let Some(rec) = &shared.recorder {
        crate::events::record::process_session_event(rec, &link.ctx(0, &cfg), EventKind::SessionStart, &link.session, None);
    }
    tracing::info!(server = %link.upstream, pid = child.id(), session = %link.session, subject = %link.identity.subject, "stdio gateway started");

    let to_server = Arc::new(Pipe::new(server_in));
    let to_client = Arc::new(Pipe::new(io::stdout()));
    let (tx, rx) = mpsc::channel::<End>();
    {
        let (link, to_server, to_client, tx) = (link.clone(), to_server.clone(), to_client.clone(), tx.clone());
        std::thread::Builder::new().name("sluice-stdio-in".into()).spawn(move || {
            pump(0, &link, Direction::Request, io::stdin(), &to_server, &to_client);
            let _ = tx.send(End::ClientClosed);
        })?;
    }
    let server_thread = {
        let (link, to_server, to_client, tx) = (link.clone(), to_server.clone(), to_client.clone(), tx.clone());
        std::thread::Builder::new().name("sluice-stdio-out".into()).spawn(move || {
            pump(1, &link, Direction::Response, server_out, &to_client, &to_server);
            let _ = tx.send(End::ServerClosed);
        })?
    };
    {
        let tx = tx.clone();
        std::thread::Builder::new().name("sluice-signals".into()).spawn(move || {
            for sig in signals.forever() {
                let _ = tx.send(End::Signal(sig));
            }
        })?;
    }
    drop(tx);

    // How far into the shutdown sequence (wait, SIGTERM, SIGKILL) the server already is.
    let (why, from) = match rx.recv() {
        Ok(End::ClientClosed) => {
            // The client is done: the server's input closes, as if the client had closed it
            // (MCP stdio shutdown), and its last answers still go out. A server still running
            // after the grace gets SIGTERM next.
            to_server.close();
            let until = Instant::now() + grace;
            while !server_thread.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            ("the client closed its input", 1)
        }
        Ok(End::ServerClosed) => ("the server closed its output", 0),
        Ok(End::Signal(sig)) => {
            terminate(&child, libc::SIGTERM);
            (if sig == libc::SIGHUP { "hangup" } else { "terminated by a signal" }, 1)
        }
        Err(_) => ("the relay threads ended", 0),
    };
    to_server.close();
    let status = stop_child(&mut child, grace, from);
    let code = match status {
        Some(s) => s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
        None => 1,
    };
    tracing::info!(server = %link.upstream, why, exit = code, "stdio gateway stopping");
    if let Some(rec) = &shared.recorder {
        let detail = format!("{why}; the server exited with status {code}");
        crate::events::record::process_session_event(rec, &link.ctx(0, &cfg), EventKind::SessionEnd, &link.session, Some(&detail));
    }
    shared.sessions.remove(&link.session);
    if let Some(f) = &pins_file {
        if let Err(e) = shared.pins.save_if_dirty(f) {
            tracing::error!(file = %f.display(), error = %e, "cannot write the pins file at stop: pin changes of this run are lost");
        }
    }
    crate::runtime::lifecycle(&shared.recorder, EventKind::GatewayStop, None, "stopped (stdio)");
    if let Some(rec) = &shared.recorder {
        rec.stop(grace);
    }
    Ok(code)
}

/// Send `sig` to the server.
fn terminate(child: &Child, sig: libc::c_int) {
    // SAFETY: kill with our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Wait for the server to exit; after `grace`, SIGTERM; after another `grace`, SIGKILL (the
/// MCP stdio shutdown sequence), starting at step `from` (1: SIGTERM first, the grace before
/// it already spent).
fn stop_child(child: &mut Child, grace: Duration, from: usize) -> Option<std::process::ExitStatus> {
    for signal in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)].into_iter().skip(from) {
        if let Some(sig) = signal {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            tracing::warn!(pid = child.id(), signal = sig, "the MCP server did not exit in time");
            terminate(child, sig);
        }
        let until = Instant::now() + grace.max(Duration::from_millis(100));
        while Instant::now() < until {
            match child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return None,
            }
        }
    }
    child.wait().ok()
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

    #[test]
    fn the_caller_is_the_operating_system_user() {
        let id = os_identity();
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let expected = user_name(uid).unwrap_or_else(|| format!("uid:{uid}"));
        assert_eq!(id.subject, expected);
        assert!(!id.subject.is_empty());
        assert!(!id.groups.is_empty(), "the primary group at least");
        assert_eq!(id.via, "os_user");
    }

    #[test]
    fn spool_siblings_are_numbered_next_to_the_directory() {
        assert_eq!(sibling(Path::new("/var/lib/sluice/spool"), 3), PathBuf::from("/var/lib/sluice/spool-3"));
    }
}
