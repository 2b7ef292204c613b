//! Answers from a remote service (the identity provider: token exchange, token introspection)
//! asked off the workers and held per key.
//!
//! A request that finds no answer for its key puts a job on a bounded queue and polls its
//! [`Slot`] on the executor's timer (as approvals do); a few threads of the cache's own ask the
//! service. Answers — refusals too, for as long as the asker says — are held per key (the
//! blake3 of the input: a token is never kept, only its digest) in 16 shards, at most
//! `max_held`; concurrent requests for one key share one question.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

const SHARDS: usize = 16;

type Key = [u8; 32];

/// Why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The service answered and refused (the caller's fault: 4xx); otherwise it could not be
    /// asked (5xx, unreachable).
    pub refused: bool,
    pub reason: String,
}

/// A question under way: filled once by a thread of the cache.
pub struct Slot<V>(Mutex<Option<Result<V, Failure>>>);

impl<V: Clone> Slot<V> {
    /// The outcome, once there is one.
    pub fn outcome(&self) -> Option<Result<V, Failure>> {
        self.0.lock().clone()
    }
}

/// What a request gets for its key.
pub enum Lookup<V> {
    Ready(V),
    /// Poll this until it is filled.
    Wait(Arc<Slot<V>>),
    Failed(Failure),
}

impl<V> From<Result<V, Failure>> for Lookup<V> {
    fn from(r: Result<V, Failure>) -> Self {
        match r {
            Ok(v) => Lookup::Ready(v),
            Err(f) => Lookup::Failed(f),
        }
    }
}

/// What the service said, and until when it holds (`None`: not held at all).
pub type Answer<V> = (Result<V, Failure>, Option<Instant>);

/// How a cache's threads ask the service: the input and the asker's hint → the answer.
pub type Ask<V> = Arc<dyn Fn(&str, Option<SystemTime>) -> Answer<V> + Send + Sync>;

struct Job<V> {
    key: Key,
    input: String,
    /// The asker's hint (e.g. when the caller's token expires).
    hint: Option<SystemTime>,
    slot: Arc<Slot<V>>,
}

struct Shard<V> {
    held: HashMap<Key, (Result<V, Failure>, Instant)>,
    pending: HashMap<Key, Arc<Slot<V>>>,
}

pub struct Cache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    jobs: Sender<Job<V>>,
    /// The jobs' receiving end until [`Cache::run`] hands it to the threads.
    waiting: Mutex<Option<Receiver<Job<V>>>>,
    queue: usize,
    max_held: usize,
    /// Answers given (`ok`) and not (`failed`), for metrics.
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

fn key_of(input: &str) -> Key {
    *blake3::hash(input.as_bytes()).as_bytes()
}

impl<V: Clone + Send + 'static> Cache<V> {
    /// A cache that asks nothing until [`Cache::run`] (a config only checked, or a rejected
    /// reload, never calls the service).
    pub fn new(queue: usize, max_held: usize) -> Arc<Self> {
        let (jobs, rx) = bounded(queue);
        Arc::new(Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard { held: HashMap::new(), pending: HashMap::new() })).collect(),
            jobs,
            waiting: Mutex::new(Some(rx)),
            queue,
            max_held: max_held.max(SHARDS),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard<V>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// The answer for `input`: held, being asked, or asked now.
    pub fn lookup(&self, input: &str, hint: Option<SystemTime>) -> Lookup<V> {
        let key = key_of(input);
        let now = Instant::now();
        let mut shard = self.shard(&key).lock();
        match shard.held.get(&key) {
            Some((r, until)) if *until > now => {
                return match r {
                    Ok(v) => Lookup::Ready(v.clone()),
                    Err(f) => Lookup::Failed(f.clone()),
                }
            }
            Some(_) => {
                shard.held.remove(&key);
            }
            None => {}
        }
        if let Some(slot) = shard.pending.get(&key) {
            return Lookup::Wait(slot.clone());
        }
        let slot = Arc::new(Slot(Mutex::new(None)));
        match self.jobs.try_send(Job { key, input: input.to_owned(), hint, slot: slot.clone() }) {
            Ok(()) => {
                shard.pending.insert(key, slot.clone());
                Lookup::Wait(slot)
            }
            Err(TrySendError::Full(_)) => Lookup::Failed(Failure { refused: false, reason: format!("{} questions already wait for the identity provider", self.queue) }),
            Err(TrySendError::Disconnected(_)) => Lookup::Failed(Failure { refused: false, reason: "the threads that ask the identity provider are not running".into() }),
        }
    }

    /// The answer held for `input`, without asking.
    pub fn held(&self, input: &str) -> Option<V> {
        let key = key_of(input);
        match self.shard(&key).lock().held.get(&key) {
            Some((Ok(v), until)) if *until > Instant::now() => Some(v.clone()),
            _ => None,
        }
    }

    /// Drop what is held for `input`: the next lookup asks again.
    pub fn forget(&self, input: &str) {
        let key = key_of(input);
        self.shard(&key).lock().held.remove(&key);
    }

    /// Answers (not refusals) held now.
    pub fn held_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().held.values().filter(|(r, _)| r.is_ok()).count()).sum()
    }

    fn settle(&self, job: &Job<V>, (result, until): Answer<V>) {
        let counter = if result.is_ok() { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&job.key).lock();
        shard.pending.remove(&job.key);
        if let Some(until) = until {
            let cap = self.max_held / SHARDS;
            if shard.held.len() >= cap {
                let now = Instant::now();
                shard.held.retain(|_, (_, u)| *u > now);
                // Still full of live answers: the one nearest its end goes.
                if shard.held.len() >= cap {
                    if let Some(k) = shard.held.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k) {
                        shard.held.remove(&k);
                    }
                }
            }
            shard.held.insert(job.key, (result.clone(), until));
        }
        *job.slot.0.lock() = Some(result);
    }

    /// Start `threads` threads named `name-N` answering with `ask(input, hint)` (once; later
    /// calls do nothing). They end when the cache is dropped (a reload replaced it).
    pub fn run(self: &Arc<Self>, name: &str, threads: usize, ask: Ask<V>) {
        let Some(rx) = self.waiting.lock().take() else { return };
        for i in 0..threads {
            let (rx, weak, ask): (Receiver<Job<V>>, Weak<Self>, _) = (rx.clone(), Arc::downgrade(self), ask.clone());
            let spawned = std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                while let Ok(job) = rx.recv() {
                    let answer = ask(&job.input, job.hint);
                    let Some(cache) = weak.upgrade() else { return };
                    cache.settle(&job, answer);
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, thread = name, "cannot start a thread");
            }
        }
    }

    /// Stop taking questions (tests: as if the threads never started).
    #[cfg(test)]
    pub fn close(&self) {
        self.waiting.lock().take();
    }
}

/// The end of a wait: the outcome, `Some(None)` when `until` passed without one, `None` while
/// it is still to come.
fn settled<V: Clone>(slot: &Slot<V>, until: Instant) -> Option<Option<Result<V, Failure>>> {
    match slot.outcome() {
        Some(o) => Some(Some(o)),
        None if Instant::now() >= until => Some(None),
        None => None,
    }
}

/// Poll `slot` on the executor's timer until it is filled or `limit` passes (`None`).
pub async fn wait<V: Clone>(slot: &Slot<V>, limit: std::time::Duration) -> Option<Result<V, Failure>> {
    let until = Instant::now() + limit;
    loop {
        if let Some(end) = settled(slot, until) {
            return end;
        }
        glommio::timer::sleep(POLL).await;
    }
}

/// The same, blocking the thread (threads of their own only: the admin listener's).
pub fn wait_blocking<V: Clone>(slot: &Slot<V>, limit: std::time::Duration) -> Option<Result<V, Failure>> {
    let until = Instant::now() + limit;
    loop {
        if let Some(end) = settled(slot, until) {
            return end;
        }
        std::thread::sleep(POLL);
    }
}

/// How often a request waiting for an answer looks at its slot.
const POLL: std::time::Duration = std::time::Duration::from_millis(5);
