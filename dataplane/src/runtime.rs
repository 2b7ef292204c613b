//! Process runtime: one glommio executor per worker (pinned, io_uring), the shared read-only
//! state they all see, signal handling (SIGTERM/SIGINT drain, SIGHUP reload), session
//! housekeeping, and the io_uring memlock checks that make a failed start loud.

use crate::config::{self, schema, Config};
use crate::metrics::WorkerMetrics;
use crate::events::Recorder;
use crate::{admin, proxy, session};
use sluice_schema::event::{Event, GatewayInfo, Kind};
use std::borrow::Cow;
use anyhow::{anyhow, Context as _};
use arc_swap::ArcSwap;
use glommio::{LocalExecutorBuilder, Placement};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// State every worker and the admin listener share. The config is swapped whole on reload;
/// a request keeps the `Arc<Config>` it started with.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub sessions: session::Store,
    pub metrics: Vec<Arc<WorkerMetrics>>,
    pub workers: usize,
    pub ready_workers: AtomicUsize,
    pub draining: AtomicBool,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Session recording (`None` when `[recording] enabled = false`).
    pub recorder: Option<Arc<Recorder>>,
    /// Calls held for a human's approval.
    pub approvals: Arc<crate::approvals::Store>,
    /// Tool definitions pinned per upstream.
    pub pins: Arc<crate::pins::Store>,
    /// Webhooks told of approval steps (a thread of its own, started with the gateway).
    pub notifier: crate::approvals::notify::Notifier,
}

impl Shared {
    pub fn new(cfg: Config, recorder: Option<Arc<Recorder>>, pins: crate::pins::Store, approvals: crate::approvals::Store) -> Arc<Self> {
        let workers = cfg.workers;
        pins.configure(cfg.pins.as_ref());
        Arc::new(Shared {
            pins: Arc::new(pins),
            config: ArcSwap::from_pointee(cfg),
            sessions: session::Store::default(),
            approvals: Arc::new(approvals),
            metrics: (0..workers).map(|_| Arc::new(WorkerMetrics::default())).collect(),
            workers,
            ready_workers: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            recorder,
            notifier: Default::default(),
        })
    }

    pub fn ready(&self) -> bool {
        self.ready_workers.load(Ordering::SeqCst) == self.workers
            && !self.draining.load(Ordering::SeqCst)
            && self.recorder.as_ref().is_none_or(|r| r.accepting())
    }
}

/// Where the configuration comes from: a file (reloadable) or the command line.
pub enum Source {
    File(PathBuf),
    Quick(Box<schema::File>),
}

impl Source {
    fn load(&self) -> Result<Config, config::ConfigError> {
        match self {
            Source::File(p) => config::load(p),
            Source::Quick(f) => config::from_schema(f),
        }
    }

    /// blake3 (hex) of the configuration text, for lifecycle events.
    fn digest(&self) -> String {
        match self {
            Source::File(p) => std::fs::read(p).map(|b| blake3::hash(&b).to_hex().to_string()).unwrap_or_default(),
            Source::Quick(f) => blake3::hash(format!("{f:?}").as_bytes()).to_hex().to_string(),
        }
    }
}

/// A gateway lifecycle event from outside the workers.
pub(crate) fn lifecycle(rec: &Option<Arc<Recorder>>, kind: Kind, digest: Option<&str>, detail: &str) {
    let Some(rec) = rec else { return };
    let mut e = Event::new(crate::ids::new_id(), crate::events::now_us(), kind, &*rec.instance);
    e.gateway = Some(GatewayInfo { version: Some(Cow::Borrowed(env!("CARGO_PKG_VERSION"))), config_digest: digest.map(Cow::Borrowed), detail: Some(Cow::Borrowed(detail)) });
    rec.process_emitter().emit(&e);
}

/// Run the gateway until SIGTERM/SIGINT and the drain that follows.
pub fn run(source: Source) -> anyhow::Result<()> {
    let cfg = source.load().map_err(|e| anyhow!("{e}"))?;
    check_memlock(&cfg);
    if !cfg.background_cpus.is_empty() {
        // Before the recorder, the Kafka client and the other threads start: they inherit it.
        crate::cpus::move_all_threads(&cfg.background_cpus)
            .map_err(|e| anyhow!("gateway.background_cpus: cannot move the gateway's threads to CPUs {}: {e}", crate::cpus::ranges(&cfg.background_cpus)))?;
        tracing::info!(background_cpus = %crate::cpus::ranges(&cfg.background_cpus), worker_cpus = %crate::cpus::ranges(&cfg.worker_cpus), "threads that are not workers run on the background CPUs");
    }
    let recorder = match &cfg.recording {
        Some(r) => Some(Recorder::start(r.clone(), &cfg.instance, cfg.workers).map_err(|e| anyhow!("{e:#}"))?),
        None => {
            tracing::warn!("recording is off ([recording] enabled = false): no session events are kept");
            None
        }
    };
    for j in cfg.identity.iter().flat_map(|a| a.all_jwks()) {
        // Start with the issuer's keys when it answers; if not, calls are refused (401) until it does.
        if !j.wait_loaded(Duration::from_secs(3)) {
            tracing::error!(issuer = %j.issuer, "the issuer's keys could not be fetched yet; its bearer tokens are refused until they are");
        }
    }
    // Upstream tokens: start with them when the token endpoints answer; calls to an upstream
    // without one are answered 503 (with the endpoint's error) until it arrives.
    if let Some(i) = cfg.identity.as_ref().and_then(|a| a.introspection.as_ref()) {
        i.run();
    }
    for up in &cfg.upstreams {
        if let Some(x) = up.credential.as_ref().and_then(|c| c.exchanger()) {
            x.run();
        }
        if let Some(t) = up.credential.as_ref().and_then(|c| c.token()) {
            t.run();
            if !t.wait_first(Duration::from_secs(5)) {
                tracing::error!(upstream = %up.name, token_url = %t.grant.token_url, "no token for the upstream yet; its calls are answered 503 until one arrives");
            }
        }
    }
    // Pins kept across restarts: a file that cannot be read stops the start (without it every
    // server would be trusted afresh).
    let pins = match cfg.pins.as_ref().and_then(|p| p.file.as_deref()) {
        Some(f) => crate::pins::Store::load(f)?,
        None => {
            if cfg.pins.is_some() {
                tracing::warn!("pins.file is not set: tool pins are kept in memory only, and every server is trusted afresh after a restart");
            }
            crate::pins::Store::default()
        }
    };
    // Approvals kept across restarts: as with pins, a file that cannot be read stops the start.
    let approvals = match cfg.approvals.state_file.as_deref() {
        Some(f) => {
            let (store, found) = crate::approvals::Store::load(f)?;
            if !found.withdrawn.is_empty() {
                tracing::warn!(file = %f.display(), withdrawn = found.withdrawn.len(), "the gateway did not stop cleanly last time: approvals given but not yet used are withdrawn (one may have been used in the second before the stop); their callers ask again");
            }
            for a in &found.withdrawn {
                if let Some(rec) = &recorder {
                    rec.process_emitter().emit(&crate::approvals::event(a, Kind::ApprovalExpired, &rec.instance));
                }
            }
            // Written at once: from now on the file says the run is under way.
            store.save(f, false).with_context(|| format!("approvals.state_file {}: cannot be written", f.display()))?;
            tracing::info!(file = %f.display(), pending = found.pending, approved = found.approved, "approval requests carried over from the last run");
            store
        }
        None => crate::approvals::Store::default(),
    };
    lifecycle(&recorder, Kind::GatewayStart, Some(&source.digest()), "started");
    let shared = Shared::new(cfg.clone(), recorder, pins, approvals);

    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP])
        .context("installing signal handlers")?;
    {
        let sh = shared.clone();
        std::thread::Builder::new().name("sluice-signals".into()).spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    reload(&sh, &source);
                } else {
                    tracing::info!(signal = sig, grace_ms = sh.config.load().shutdown_grace.as_millis() as u64, "draining: no new connections; in-flight requests may finish");
                    sh.draining.store(true, Ordering::SeqCst);
                }
            }
        })?;
    }
    if let Some(addr) = cfg.admin {
        admin::start(addr, shared.clone()).with_context(|| format!("starting the admin listener on {addr}"))?;
    }
    shared.notifier.start().context("starting the approval-notification thread")?;
    {
        let sh = shared.clone();
        std::thread::Builder::new().name("sluice-housekeeping".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let idle = sh.config.load().sessions.idle_timeout;
            for s in sh.sessions.sweep(idle) {
                tracing::info!(mcp_session = if s.stateless { "" } else { s.mcp_session_id.as_str() }, gateway_session = %s.gateway_id, "session idled out");
                if let Some(rec) = &sh.recorder {
                    let mut e = Event::new(crate::ids::new_id(), crate::events::now_us(), Kind::SessionEnd, &*rec.instance);
                    e.session = Some(Cow::Borrowed(&s.gateway_id));
                    e.mcp_session = Some(Cow::Borrowed(s.mcp_session_id.as_str())).filter(|_| !s.stateless);
                    e.route = Some(Cow::Borrowed(&s.route));
                    e.gateway = Some(GatewayInfo { version: None, config_digest: None, detail: Some(Cow::Borrowed("idle timeout")) });
                    rec.process_emitter().emit(&e);
                }
            }
            if let Some(f) = sh.config.load().pins.as_ref().and_then(|p| p.file.clone()) {
                if let Err(e) = sh.pins.save_if_dirty(&f) {
                    tracing::error!(file = %f.display(), error = %e, "cannot write the pins file; retrying every second (pins stay in force in memory)");
                }
            }
            if let Some(f) = sh.config.load().approvals.state_file.as_deref() {
                if let Err(e) = sh.approvals.save(f, false) {
                    tracing::error!(file = %f.display(), error = %e, "cannot write the approvals state file; retrying every second (approvals stay in force in memory, but a restart now would lose the changes)");
                }
            }
            for a in sh.approvals.expire_due() {
                tracing::info!(approval = %a.id, tool = %a.tool, subject = %a.subject, "approval request expired undecided");
                if let Some(rec) = &sh.recorder {
                    rec.process_emitter().emit(&crate::approvals::event(&a, Kind::ApprovalExpired, &rec.instance));
                }
                let cfg = sh.config.load();
                sh.notifier.tell(crate::approvals::notify::Step::Expired, &a, &cfg.approvals, &cfg.instance);
            }
        })?;
    }

    let (tx, rx) = mpsc::channel::<(usize, anyhow::Result<()>)>();
    for i in 0..cfg.workers {
        let placement = worker_placement(&cfg, i)?;
        let sh = shared.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("sluice-w{i}"))
            .io_memory(cfg.io_memory)
            .ring_depth(cfg.ring_depth)
            .spawn(move || async move {
                let r = proxy::run_worker(i, sh.clone()).await;
                if r.is_err() {
                    sh.draining.store(true, Ordering::SeqCst);
                }
                r
            })
            .map_err(|e| anyhow!("{}", executor_hint(i, &cfg, &e.to_string())))?;
        let tx = tx.clone();
        let sh = shared.clone();
        let cfg2 = cfg.clone();
        // join() blocks; one waiter thread per worker reports its end, so that any worker's
        // failure (including an executor that never started) is seen at once.
        std::thread::spawn(move || {
            let r = match handle.join() {
                Ok(r) => r,
                Err(e) => Err(anyhow!("{}", executor_hint(i, &cfg2, &e.to_string()))),
            };
            if r.is_err() {
                sh.draining.store(true, Ordering::SeqCst);
            }
            let _ = tx.send((i, r));
        });
    }
    drop(tx);
    let listeners: Vec<String> = cfg.listeners.iter().map(|l| format!("{}{}", if l.tls.is_some() { "https://" } else { "http://" }, l.address)).collect();
    tracing::info!(workers = cfg.workers, listeners = ?listeners, admin = ?cfg.admin, instance = %cfg.instance, "sluice starting");
    let mut errors = Vec::new();
    for (i, r) in rx {
        if let Err(e) = r {
            tracing::error!(worker = i, error = %e, "worker failed");
            errors.push(e);
        }
    }
    // The last pin changes (the housekeeping thread writes once a second).
    if let Some(f) = shared.config.load().pins.as_ref().and_then(|p| p.file.clone()) {
        if let Err(e) = shared.pins.save_if_dirty(&f) {
            tracing::error!(file = %f.display(), error = %e, "cannot write the pins file at stop: pin changes since the last write are lost");
        }
    }
    // Every held call has been answered: the file can say nothing happened after it.
    if let Some(f) = shared.config.load().approvals.state_file.as_deref() {
        if let Err(e) = shared.approvals.save(f, true) {
            tracing::error!(file = %f.display(), error = %e, "cannot write the approvals state file at stop: the next start withdraws approvals given but not used");
        }
    }
    lifecycle(&shared.recorder, Kind::GatewayStop, None, if errors.is_empty() { "stopped" } else { "a worker failed" });
    if let Some(rec) = &shared.recorder {
        rec.stop(cfg.shutdown_grace);
    }
    if errors.is_empty() {
        tracing::info!("sluice stopped");
        Ok(())
    } else {
        Err(anyhow!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))
    }
}

/// Worker `i`'s CPU: with `pin_workers`, one of the workers' CPUs each in turn (those the
/// process may use, `gateway.background_cpus` left out); otherwise any of them.
fn worker_placement(cfg: &Config, i: usize) -> anyhow::Result<Placement> {
    let cpus = &cfg.worker_cpus;
    Ok(match cpus.get(i % cpus.len().max(1)) {
        Some(&cpu) if cfg.pin_workers => Placement::Fixed(cpu),
        _ if cfg.background_cpus.is_empty() => Placement::Unbound,
        // Unbound would inherit the background CPUs from the thread that starts the workers.
        _ => Placement::Fenced(glommio::CpuSet::online().map_err(|e| anyhow!("reading the online CPUs: {e}"))?.filter(|l| cpus.contains(&l.cpu))),
    })
}

fn reload(sh: &Shared, source: &Source) {
    if let Source::Quick(_) = source {
        tracing::warn!("SIGHUP ignored: sluice was started without --config, there is no file to reload");
        return;
    }
    match source.load() {
        Ok(new) => {
            let old = sh.config.load();
            let moved = old.listeners.iter().map(|l| l.address).ne(new.listeners.iter().map(|l| l.address));
            if moved || old.workers != new.workers || old.admin != new.admin || old.background_cpus != new.background_cpus || old.pin_workers != new.pin_workers {
                tracing::warn!("listener, worker, CPU placement and admin changes take effect on restart; the rest of the new config is live");
            }
            // A listener's certificate and key are read again (renewals need no restart); TLS
            // turned on or off is a listener change.
            let tls_of = |c: &crate::config::Config| (c.listeners.iter().map(|l| (l.address, l.tls.is_some())).collect::<Vec<_>>(), c.admin_tls.is_some());
            if !moved && tls_of(&old) != tls_of(&new) {
                tracing::warn!("a listener's tls turned on or off: that takes effect on restart (certificate and key renewals take effect now)");
            }
            if old.approvals.state_file != new.approvals.state_file {
                tracing::warn!("approvals.state_file changes take effect on restart (approvals are loaded at start)");
            }
            if format!("{:?}", old.recording) != format!("{:?}", new.recording) {
                tracing::warn!("[recording] changes take effect on restart");
            }
            // Same issuer: the new config starts with the keys already fetched.
            for n in new.identity.iter().flat_map(|a| a.all_jwks()) {
                if let Some(o) = old.identity.iter().flat_map(|a| a.all_jwks()).find(|o| o.issuer == n.issuer) {
                    n.adopt(o);
                }
            }
            // Opaque tokens are introspected again (a caller's next call).
            if let Some(i) = new.identity.as_ref().and_then(|a| a.introspection.as_ref()) {
                i.run();
            }
            // Same token endpoint and client: the new config starts with the token held.
            for n in &new.upstreams {
                // Tokens exchanged per caller are asked for again (a caller's next call).
                if let Some(x) = n.credential.as_ref().and_then(|c| c.exchanger()) {
                    x.run();
                }
                let held = old.upstreams.iter().find(|o| o.name == n.name).and_then(|o| o.credential.as_ref()?.token());
                if let Some(t) = n.credential.as_ref().and_then(|c| c.token()) {
                    if let Some(o) = held {
                        t.adopt(o);
                    }
                    t.run();
                }
            }
            if old.pins.as_ref().map(|p| &p.file) != new.pins.as_ref().map(|p| &p.file) {
                tracing::warn!("pins.file changes take effect on restart (pins are loaded at start)");
            }
            sh.pins.configure(new.pins.as_ref());
            sh.config.store(Arc::new(new));
            sh.reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!("configuration reloaded");
            lifecycle(&sh.recorder, Kind::GatewayReload, Some(&source.digest()), "configuration reloaded");
        }
        Err(e) => {
            sh.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(errors = %e, "reload rejected; the running configuration stays in force");
            lifecycle(&sh.recorder, Kind::GatewayReload, None, "reload rejected: the configuration is invalid");
        }
    }
}

fn memlock() -> Option<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    (unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0).then_some((r.rlim_cur, r.rlim_max))
}

/// Raise the soft RLIMIT_MEMLOCK to the hard limit when the workers' rings may need more.
fn check_memlock(cfg: &Config) {
    let need = (cfg.workers * (cfg.io_memory + cfg.ring_depth * 1024 + 256 * 1024)) as u64;
    let Some((soft, hard)) = memlock() else { return };
    if soft >= need || soft == libc::RLIM_INFINITY {
        return;
    }
    let want = if hard == libc::RLIM_INFINITY { need } else { need.min(hard) };
    let r = libc::rlimit { rlim_cur: want, rlim_max: hard };
    // SAFETY: setrlimit only reads the struct; raising the soft limit up to the hard one is allowed.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } == 0;
    tracing::info!(soft_before = soft, soft_now = if ok { want } else { soft }, hard, estimated_need = need, "RLIMIT_MEMLOCK checked for io_uring");
}

fn executor_hint(worker: usize, cfg: &Config, err: &str) -> String {
    let (soft, _) = memlock().unwrap_or((0, 0));
    format!(
        "worker {worker}: the io_uring executor could not start: {err}. On kernels that charge ring memory to \
         RLIMIT_MEMLOCK (before 5.12) the limit is {soft} bytes here and {} workers × ({} KiB io_memory + rings) need more: \
         set LimitMEMLOCK=infinity in the systemd unit (or `ulimit -l unlimited`), or lower gateway.io_memory_kib / gateway.ring_depth.",
        cfg.workers,
        cfg.io_memory / 1024
    )
}
