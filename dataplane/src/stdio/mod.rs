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
//!
//! Here: starting the server and the recorder, and ending both (`run`); `relay.rs`: the two
//! directions, line by line through the chain; `os.rs`: who the caller is.

mod os;
mod relay;

pub use self::os::os_identity;

use self::relay::{Link, Pipe, pump};
use crate::config::{self, schema, Config, Purpose, Route};
use crate::events::Recorder;
use crate::hooks::Direction;
use crate::runtime::Shared;
use crate::session::Session;
use anyhow::{anyhow, Context as _};
use simd_json::prelude::*;
use sluice_schema::event::Kind as EventKind;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How many spool directories concurrent stdio gateways may take: the configured one, then
/// `DIR-1` … `DIR-15` (each spool is locked by the process that writes it).
const SPOOL_SLOTS: usize = 16;

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

    #[test]
    fn spool_siblings_are_numbered_next_to_the_directory() {
        assert_eq!(sibling(Path::new("/var/lib/sluice/spool"), 3), PathBuf::from("/var/lib/sluice/spool-3"));
    }
}
