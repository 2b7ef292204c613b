//! The proxy worker: one per core. It owns its listeners (SO_REUSEPORT, one socket per worker
//! per address), its upstream connection pools, its reusable buffers and its hook chain, and
//! runs every connection it accepts to completion on its own core.
//!
//! Phases of one exchange (see `exchange/`): accept → read head → route → read body →
//! parse JSON-RPC → request hooks → forward → read response head → response hooks
//! (buffered JSON, or SSE event by event) → answer → account.

mod access;
mod auth;
mod conn;
pub(crate) mod cors;
pub(crate) mod exchange;
pub mod io;
pub(crate) mod respond;
mod upstream;

use crate::config::Config;
use crate::error::ProxyError;
use crate::detect::engine::{Engine, Scanner};
use crate::hooks::Chain;
use crate::metrics::WorkerMetrics;
use crate::runtime::Shared;
use glommio::net::TcpListener;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The worker's drain signal: one watcher task per worker polls the process-wide flag and wakes
/// every waiting connection at once, so idle connections cost no timer wake-ups of their own.
#[derive(Default)]
pub struct Drain {
    fired: Cell<bool>,
    next: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Drain {
    fn fire(&self) {
        self.fired.set(true);
        for (_, w) in self.waiters.borrow_mut().drain() {
            w.wake();
        }
    }

    /// Resolves once the gateway starts draining.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait { drain: self, key: None }
    }
}

pub struct DrainWait<'a> {
    drain: &'a Drain,
    key: Option<u64>,
}

impl Future for DrainWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.fired.get() {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(k) => k,
            None => {
                let k = self.drain.next.get();
                self.drain.next.set(k + 1);
                self.key = Some(k);
                k
            }
        };
        self.drain.waiters.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.drain.waiters.borrow_mut().remove(&k);
        }
    }
}

/// Everything one worker owns.
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub metrics: Arc<WorkerMetrics>,
    pub pool: upstream::Pool,
    pub chain: Chain,
    /// Connections open on this worker.
    pub open: Cell<usize>,
    /// Body bytes its connections hold now (see [`Held`]).
    pub buffered: Cell<usize>,
    /// Scratch buffer that simd-json parses in (it parses in place, and the original bytes
    /// must stay intact for forwarding).
    /// Taken and put back around each use, never held across an await.
    pub scratch: Cell<Vec<u8>>,
    /// Reused buffer for the encoded upstream request, then for the response to the agent.
    pub reqbuf: Cell<Vec<u8>>,
    /// Reused buffer for a buffered (JSON) response body.
    pub respbuf: Cell<Vec<u8>>,
    pub drain: Drain,
    /// This worker's event emitter (`None` when recording is off).
    pub emitter: Option<Rc<crate::events::Emitter>>,
    /// Hyperscan scanners for streamed bodies, reused across responses (each is tied to the
    /// engine it was allocated for; those of a replaced engine are dropped).
    pub scanners: RefCell<Vec<(Arc<Engine>, Scanner)>>,
    /// Identity assertions signed for upstreams (`forward_identity = "token"`), reused.
    pub assertions: RefCell<crate::identity::forward::Cache>,
}

impl Worker {
    /// A worker's state and its hook chain: scrub, policy masks, detection, policy (its
    /// sessions and approvals through `sessions`), and the recorder when `emitter` is given.
    pub fn new(id: usize, shared: &Arc<Shared>, emitter: Option<Rc<crate::events::Emitter>>, sessions: crate::policy::hook::SessionsHandle) -> Self {
        let mut chain = Chain::new(vec![
            Box::new(crate::scrub::ScrubHook),
            Box::new(crate::pins::hook::PinHook::new(shared.pins.clone(), emitter.clone()).telling(shared.clone())),
            Box::new(crate::policy::hook::PolicyMasks::default()),
            Box::new(crate::detect::hook::DetectHook::new(shared.metrics[id].clone())),
            Box::new(crate::policy::hook::PolicyHook::new(sessions).with_metrics(shared.metrics[id].clone())),
        ]);
        if let Some(em) = &emitter {
            chain = chain.with_observer(Box::new(crate::events::record::RecordObserver::new(em.clone())));
        }
        Worker {
            id,
            metrics: shared.metrics[id].clone(),
            shared: shared.clone(),
            pool: upstream::Pool::default(),
            chain,
            open: Cell::new(0),
            buffered: Cell::new(0),
            scratch: Cell::new(Vec::with_capacity(64 * 1024)),
            reqbuf: Cell::new(Vec::with_capacity(16 * 1024)),
            respbuf: Cell::new(Vec::with_capacity(16 * 1024)),
            drain: Drain::default(),
            emitter,
            scanners: RefCell::new(Vec::new()),
            assertions: RefCell::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    /// A scanner for `engine` from this worker's pool, or a new one when none is free.
    pub fn take_scanner(&self, engine: &Arc<Engine>) -> Result<Scanner, String> {
        let mut pool = self.scanners.borrow_mut();
        pool.retain(|(e, _)| Arc::ptr_eq(e, engine));
        match pool.pop() {
            Some((_, sc)) => Ok(sc),
            None => engine.scanner(),
        }
    }

    /// Give a scanner back for the next streamed body (the pool keeps a few).
    pub fn return_scanner(&self, engine: &Arc<Engine>, sc: Scanner) {
        let mut pool = self.scanners.borrow_mut();
        if pool.len() < 8 {
            pool.push((engine.clone(), sc));
        }
    }

    pub fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Record a request refused before any stage read it (see `record::refusal`).
    pub fn record_refusal(&self, ctx: Option<&crate::hooks::RequestCtx>, route: Option<&str>, client: std::net::SocketAddr, e: &ProxyError) {
        if let Some(em) = &self.emitter {
            crate::events::record::refusal(em, ctx, self.id, route, client.ip(), e);
        }
    }
}

/// The body capacity a connection keeps between requests (a larger buffer is freed), and the
/// first step by which a growing body is held.
pub const KEEP_BODY: usize = 64 * 1024;

/// Body bytes (agents' requests, buffered answers) a connection holds, counted against its
/// worker's share of `limits.max_buffered_bytes`; given back on `release` and on drop.
pub struct Held<'w> {
    w: &'w Worker,
    bytes: usize,
}

impl<'w> Held<'w> {
    pub fn new(w: &'w Worker) -> Self {
        Held { w, bytes: 0 }
    }

    /// Hold `to` bytes in all; `Err` (503) when the worker's share would be passed.
    pub fn grow(&mut self, to: usize, limits: &crate::config::Limits) -> Result<(), ProxyError> {
        if to <= self.bytes {
            return Ok(());
        }
        let more = to - self.bytes;
        let now = self.w.buffered.get();
        if now + more > limits.worker_buffered_bytes {
            self.w.metrics.bodies_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(worker = self.w.id, held = now, wanted = more, share = limits.worker_buffered_bytes, "body refused: limits.max_buffered_bytes reached");
            return Err(ProxyError::Overloaded(format!(
                "the gateway holds as many message bodies as its memory limit allows (limits.max_buffered_bytes = {} bytes across its workers)",
                limits.max_buffered_bytes
            )));
        }
        self.set(now + more, more as i64);
        self.bytes = to;
        Ok(())
    }

    /// Hold enough for a body growing to `len` (of at most `max`), in doubling steps from `first`.
    pub fn grow_to_fit(&mut self, len: usize, first: usize, max: usize, limits: &crate::config::Limits) -> Result<(), ProxyError> {
        if len <= self.bytes {
            return Ok(());
        }
        self.grow(len.max(2 * self.bytes).max(first).min(max).max(len), limits)
    }

    /// Hold exactly `to` bytes: more as with `grow`, fewer given back (an SSE event once it
    /// has gone out).
    pub fn resize(&mut self, to: usize, limits: &crate::config::Limits) -> Result<(), ProxyError> {
        if to > self.bytes {
            return self.grow(to, limits);
        }
        let less = self.bytes - to;
        self.set(self.w.buffered.get() - less, -(less as i64));
        self.bytes = to;
        Ok(())
    }

    pub fn release(&mut self) {
        let n = std::mem::take(&mut self.bytes);
        self.set(self.w.buffered.get() - n, -(n as i64));
    }

    fn set(&self, now: usize, delta: i64) {
        self.w.buffered.set(now);
        self.w.metrics.buffered_bytes.fetch_add(delta, Ordering::Relaxed);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Run one worker until shutdown: bind, accept, then drain within the grace period.
pub async fn run_worker(id: usize, shared: Arc<Shared>) -> anyhow::Result<()> {
    let cfg = shared.config.load_full();
    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        let sock = TcpListener::bind(l.address).map_err(|e| anyhow::anyhow!("worker {id}: cannot listen on {} (listener \"{}\"): {e}", l.address, l.name))?;
        listeners.push((sock, l.tls.clone(), l.name.clone(), l.address));
    }
    let emitter = match &shared.recorder {
        Some(r) => Some(Rc::new(r.emitter(id).ok_or_else(|| anyhow::anyhow!("worker {id}: no event queue (started twice?)"))?)),
        None => None,
    };
    let worker = Rc::new(Worker::new(id, &shared, emitter, crate::policy::hook::SessionsHandle::Runtime(shared.clone())));
    shared.ready_workers.fetch_add(1, Ordering::SeqCst);
    tracing::info!(worker = id, listeners = cfg.listeners.len(), "worker ready");

    let watcher = worker.clone();
    glommio::spawn_local(async move {
        while !watcher.draining() {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            // Events that waited in the overflow list go on even when no new event comes.
            if let Some(em) = watcher.emitter.as_ref().filter(|e| e.overflow_len() > 0) {
                em.flush_overflow();
            }
        }
        watcher.drain.fire();
    })
    .detach();
    let mut accept_tasks = Vec::new();
    for (listener, tls, name, address) in listeners {
        let w = worker.clone();
        accept_tasks.push(glommio::spawn_local(accept_loop(w, listener, tls, name, address)));
    }
    for t in accept_tasks {
        t.await;
    }
    // Draining: in-flight requests and open streams get the grace period to finish.
    let grace = worker.config().shutdown_grace;
    let until = Instant::now() + grace;
    while worker.open.get() > 0 && Instant::now() < until {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if worker.open.get() > 0 {
        tracing::warn!(worker = id, open = worker.open.get(), grace_ms = grace.as_millis() as u64, "grace period over; closing open connections");
    }
    Ok(())
}

async fn accept_loop(w: Rc<Worker>, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, name: String, address: std::net::SocketAddr) {
    let mut tls = tls.map(|t| (t.clone(), futures_rustls::TlsAcceptor::from(t)));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            wait_for_drain(&w).await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        match accepted {
            Ok(stream) if w.open.get() >= w.config().limits.worker_connections => {
                // At the limit: a short answer and close (over TLS there is no handshake to answer in).
                w.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
                let plain = tls.is_none();
                glommio::spawn_local(conn::refuse(w.clone(), stream, plain)).detach();
            }
            Ok(stream) => {
                current_tls(&w, address, &mut tls);
                let (w2, acc, open) = (w.clone(), tls.as_ref().map(|(_, a)| a.clone()), conn::OpenGuard::new(&w));
                glommio::spawn_local(async move { conn::serve(w2, stream, acc, open).await }).detach();
            }
            Err(e) => {
                tracing::warn!(worker = w.id, listener = %name, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The listener's TLS settings as the config now holds them: a reload reads the certificate
/// and key again, so a renewed certificate serves every new connection (connections already
/// open keep theirs). Whether a listener speaks TLS at all changes only on restart.
fn current_tls(w: &Worker, address: std::net::SocketAddr, held: &mut Option<(Arc<rustls::ServerConfig>, futures_rustls::TlsAcceptor)>) {
    let Some((in_use, _)) = held.as_ref() else { return };
    let cfg = w.shared.config.load();
    if let Some(now) = cfg.listeners.iter().find(|l| l.address == address).and_then(|l| l.tls.as_ref()).filter(|now| !Arc::ptr_eq(now, in_use)) {
        *held = Some((now.clone(), futures_rustls::TlsAcceptor::from(now.clone())));
    }
}

/// Resolves once the gateway starts draining.
pub async fn wait_for_drain(w: &Worker) {
    w.drain.wait().await
}
