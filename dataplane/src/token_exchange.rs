//! Upstream tokens by OAuth 2.0 Token Exchange (RFC 8693): the caller's own access token (the
//! bearer token the gateway authenticated it by) is exchanged at the identity provider for a
//! token to this upstream, naming the same subject — so the upstream sees who calls, with a
//! token scoped to it, and the agent's token never reaches it.
//!
//! Off the workers: a request that finds no token for its caller puts a job on a bounded
//! queue and polls its slot on the executor's timer (as approvals do); two `sluice-exchange`
//! threads ask the provider. Exchanged tokens are held per caller token (keyed by its blake3)
//! until three quarters of their lifetime, never past the caller's own token, in 16 shards; the
//! same caller's concurrent requests share one exchange.

use crate::oauth::{fetch_for, renew_after, Grant, Live};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

const SHARDS: usize = 16;
/// Exchanged tokens held per upstream (callers' tokens live, not callers).
const MAX_HELD: usize = 16_384;
/// Exchanges waiting for a thread.
const QUEUE: usize = 1_024;
const THREADS: usize = 2;
/// A token is not used within this much of the caller's own token's expiry.
const MARGIN: Duration = Duration::from_secs(5);

type Key = [u8; 32];

/// Why no token could be had for a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The provider answered and refused (the caller's token cannot be exchanged: 403);
    /// otherwise it could not be asked (503).
    pub refused: bool,
    pub reason: String,
}

/// An exchange under way: filled once by a `sluice-exchange` thread.
#[derive(Default)]
pub struct Slot(Mutex<Option<Result<Arc<Live>, Failure>>>);

impl Slot {
    /// The outcome, once there is one.
    pub fn outcome(&self) -> Option<Result<Arc<Live>, Failure>> {
        self.0.lock().clone()
    }
}

struct Held {
    live: Arc<Live>,
    until: Instant,
}

#[derive(Default)]
struct Shard {
    held: HashMap<Key, Held>,
    pending: HashMap<Key, Arc<Slot>>,
}

struct Job {
    key: Key,
    subject: String,
    /// The caller's token expires then (its `exp`).
    expires: Option<SystemTime>,
    slot: Arc<Slot>,
}

/// What a request gets for its caller.
pub enum Lookup {
    Ready(Arc<Live>),
    /// Poll this until it is filled.
    Wait(Arc<Slot>),
    Failed(Failure),
}

pub struct Exchanger {
    pub grant: Grant,
    upstream: String,
    shards: Box<[Mutex<Shard>]>,
    jobs: Sender<Job>,
    /// The jobs' receiving end until [`Exchanger::run`] hands it to the threads.
    waiting: Mutex<Option<Receiver<Job>>>,
    pub exchanged: AtomicU64,
    pub failed: AtomicU64,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exchanger({:?})", self.grant)
    }
}

fn key_of(subject: &str) -> Key {
    *blake3::hash(subject.as_bytes()).as_bytes()
}

impl Exchanger {
    /// An exchanger that asks nothing until [`Exchanger::run`] (a config only checked, or a
    /// rejected reload, never calls the provider). `upstream` names the upstream in logs.
    pub fn new(upstream: String, grant: Grant) -> Arc<Self> {
        let (jobs, rx) = bounded(QUEUE);
        Arc::new(Exchanger {
            grant,
            upstream,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            jobs,
            waiting: Mutex::new(Some(rx)),
            exchanged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// The token for the caller presenting `subject` (its access token, expiring at `expires`):
    /// held, being exchanged, or now asked for.
    pub fn lookup(&self, subject: &str, expires: Option<SystemTime>) -> Lookup {
        let key = key_of(subject);
        let now = Instant::now();
        let mut shard = self.shard(&key).lock();
        match shard.held.get(&key) {
            Some(h) if h.until > now => return Lookup::Ready(h.live.clone()),
            Some(_) => {
                shard.held.remove(&key);
            }
            None => {}
        }
        if let Some(slot) = shard.pending.get(&key) {
            return Lookup::Wait(slot.clone());
        }
        let slot = Arc::new(Slot::default());
        match self.jobs.try_send(Job { key, subject: subject.to_owned(), expires, slot: slot.clone() }) {
            Ok(()) => {
                shard.pending.insert(key, slot.clone());
                Lookup::Wait(slot)
            }
            Err(TrySendError::Full(_)) => Lookup::Failed(Failure { refused: false, reason: format!("{QUEUE} token exchanges already wait for the identity provider") }),
            Err(TrySendError::Disconnected(_)) => Lookup::Failed(Failure { refused: false, reason: "the token exchange threads are not running".into() }),
        }
    }

    /// The token held for `subject`, without asking for one.
    pub fn held(&self, subject: &str) -> Option<Arc<Live>> {
        let key = key_of(subject);
        self.shard(&key).lock().held.get(&key).filter(|h| h.until > Instant::now()).map(|h| h.live.clone())
    }

    /// The upstream refused the token held for `subject`: the next request exchanges again.
    pub fn forget(&self, subject: &str) {
        let key = key_of(subject);
        self.shard(&key).lock().held.remove(&key);
    }

    /// Tokens held now (for `/metrics`).
    pub fn held_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().held.len()).sum()
    }

    fn settle(&self, job: &Job, outcome: Result<(Arc<Live>, Instant), Failure>) {
        let mut shard = self.shard(&job.key).lock();
        shard.pending.remove(&job.key);
        let result = match outcome {
            Ok((live, until)) => {
                if shard.held.len() >= MAX_HELD / SHARDS {
                    let now = Instant::now();
                    shard.held.retain(|_, h| h.until > now);
                    // Still full of live tokens: the one nearest its end goes.
                    if shard.held.len() >= MAX_HELD / SHARDS {
                        if let Some(k) = shard.held.iter().min_by_key(|(_, h)| h.until).map(|(k, _)| *k) {
                            shard.held.remove(&k);
                        }
                    }
                }
                shard.held.insert(job.key, Held { live: live.clone(), until });
                Ok(live)
            }
            Err(f) => Err(f),
        };
        *job.slot.0.lock() = Some(result);
    }

    /// Start the exchange threads (once; later calls do nothing). They end when the
    /// exchanger is dropped (a reload replaced it).
    pub fn run(self: &Arc<Self>) {
        let Some(rx) = self.waiting.lock().take() else { return };
        for i in 0..THREADS {
            let (rx, weak, grant, upstream) = (rx.clone(), Arc::downgrade(self), self.grant.clone(), self.upstream.clone());
            let spawned = std::thread::Builder::new().name(format!("sluice-exchange-{i}")).spawn(move || serve(&rx, &weak, &grant, &upstream));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a token exchange thread");
            }
        }
    }
}

fn serve(rx: &Receiver<Job>, weak: &Weak<Exchanger>, grant: &Grant, upstream: &str) {
    let agent = crate::oauth::agent(&grant.outbound);
    while let Ok(job) = rx.recv() {
        let form = [("grant_type", GRANT_TYPE), ("subject_token", job.subject.as_str()), ("subject_token_type", ACCESS_TOKEN), ("requested_token_type", ACCESS_TOKEN)];
        let asked = Instant::now();
        let outcome = fetch_for(&agent, grant, &form);
        let Some(x) = weak.upgrade() else { return };
        let outcome = match outcome {
            Ok(issued) => {
                x.exchanged.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(upstream = %upstream, expires_in = issued.lifetime.map(|l| l.as_secs()), "caller's token exchanged for the upstream's");
                let until = until(asked, issued.lifetime, job.expires, SystemTime::now());
                Ok((Arc::new(live(&issued.token, &grant.secret)), until))
            }
            Err((refused, reason)) => {
                x.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(upstream = %upstream, error = %reason, "token exchange failed");
                Err(Failure { refused, reason })
            }
        };
        x.settle(&job, outcome);
    }
}

/// What requests send and scrub for an exchanged token.
fn live(token: &str, client_secret: &str) -> Live {
    let value = format!("Bearer {token}");
    let mut secrets = vec![value.clone(), token.to_owned()];
    if client_secret.len() >= 8 {
        secrets.push(client_secret.to_owned());
    }
    Live { value: Some(value.into_bytes()), secrets, error: None }
}

/// Until when a token asked for at `asked` is used: three quarters of its lifetime, and never
/// within [`MARGIN`] of the caller's own token's expiry (`now` is the wall clock then).
fn until(asked: Instant, lifetime: Option<Duration>, caller_expires: Option<SystemTime>, now: SystemTime) -> Instant {
    let own = asked + renew_after(lifetime);
    match caller_expires.map(|e| e.duration_since(now).unwrap_or_default().saturating_sub(MARGIN)) {
        Some(left) => own.min(Instant::now() + left),
        None => own,
    }
}

/// The caller's token's expiry from its `exp` claim.
pub fn expiry(claims: Option<&serde_json::Value>) -> Option<SystemTime> {
    claims?.get("exp")?.as_u64().map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::ClientAuth;
    use std::io::{BufReader, Write};

    fn grant(url: String) -> Grant {
        Grant {
            token_url: url,
            client_id: "sluice-gateway".into(),
            secret: "sluice-gateway-secret".into(),
            auth: ClientAuth::Basic,
            scope: None,
            resource: None,
            audience: Some("https://tickets.internal".into()),
            outbound: Default::default(),
        }
    }

    /// A token endpoint on a real socket: answers each request with `answer(form)` and
    /// records the forms it was sent.
    fn endpoint(answer: fn(&str) -> (u16, String)) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let form = crate::test_http::request_body(&mut BufReader::new(conn.try_clone().unwrap()));
                // Slow enough that concurrent lookups find the exchange under way.
                std::thread::sleep(Duration::from_millis(100));
                let (status, text) = answer(&form);
                log.lock().push(form);
                write!(conn, "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len()).unwrap();
            }
        });
        (url, seen)
    }

    fn settle(x: &Exchanger, subject: &str) -> Result<Arc<Live>, Failure> {
        let slot = match x.lookup(subject, None) {
            Lookup::Ready(l) => return Ok(l),
            Lookup::Failed(f) => return Err(f),
            Lookup::Wait(slot) => slot,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Some(o) = slot.outcome() {
                return o;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no outcome in 10 s");
    }

    #[test]
    fn each_callers_token_is_exchanged_once_and_held_apart() {
        let (url, seen) = endpoint(|form| {
            let subject = form.split('&').find_map(|kv| kv.strip_prefix("subject_token=")).unwrap_or("");
            (200, format!(r#"{{"access_token":"up-{subject}","issued_token_type":"{ACCESS_TOKEN}","token_type":"Bearer","expires_in":600}}"#))
        });
        let x = Exchanger::new("tickets".into(), grant(url));
        x.run();
        // Concurrent requests of one caller share one exchange.
        let waits: Vec<_> = (0..3).map(|_| x.lookup("alice-token", None)).collect();
        assert!(waits.iter().all(|w| matches!(w, Lookup::Wait(_))));
        let a = settle(&x, "alice-token").unwrap();
        assert_eq!(a.value.as_deref(), Some(&b"Bearer up-alice-token"[..]));
        assert!(a.secrets.contains(&"up-alice-token".to_string()) && a.secrets.contains(&"sluice-gateway-secret".to_string()));
        let b = settle(&x, "bob-token").unwrap();
        assert_eq!(b.value.as_deref(), Some(&b"Bearer up-bob-token"[..]));
        assert!(matches!(x.lookup("alice-token", None), Lookup::Ready(l) if Arc::ptr_eq(&l, &a)), "held, not asked again");
        let forms = seen.lock().clone();
        assert_eq!(forms.len(), 2, "{forms:?}");
        assert!(forms[0].starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=alice-token&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&requested_token_type="), "{forms:?}");
        assert!(forms[0].ends_with("&audience=https%3A%2F%2Ftickets.internal"), "{forms:?}");
        // Refused by the upstream: asked again.
        x.forget("alice-token");
        assert!(x.held("alice-token").is_none());
        settle(&x, "alice-token").unwrap();
        assert_eq!(seen.lock().len(), 3);
        assert_eq!(x.exchanged.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_refusal_is_told_apart_from_an_unreachable_provider_and_nothing_is_held() {
        let (url, _) = endpoint(|_| (400, r#"{"error":"invalid_grant","error_description":"interns may not reach this resource"}"#.into()));
        let x = Exchanger::new("tickets".into(), grant(url));
        x.run();
        let f = settle(&x, "intern-token").unwrap_err();
        assert!(f.refused && f.reason.contains("invalid_grant (interns may not reach this resource)"), "{f:?}");
        assert!(x.held("intern-token").is_none());
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let x = Exchanger::new("tickets".into(), grant(format!("http://{dead}/token")));
        x.run();
        let f = settle(&x, "alice-token").unwrap_err();
        assert!(!f.refused && f.reason.contains(&dead.to_string()), "{f:?}");
        // Not running: said so, at once.
        let idle = Exchanger::new("tickets".into(), grant("http://127.0.0.1:9/token".into()));
        drop(idle.waiting.lock().take());
        assert!(matches!(idle.lookup("t", None), Lookup::Failed(f) if f.reason.contains("not running")));
    }

    #[test]
    fn a_token_is_not_used_past_three_quarters_of_its_life_or_near_the_callers_own_expiry() {
        let (now, asked) = (SystemTime::now(), Instant::now());
        let life = Some(Duration::from_secs(600));
        let near = |a: Instant, b: Instant| a.max(b) - a.min(b) < Duration::from_secs(1);
        assert!(near(until(asked, life, None, now), asked + Duration::from_secs(450)));
        assert!(near(until(asked, life, Some(now + Duration::from_secs(3600)), now), asked + Duration::from_secs(450)));
        assert!(near(until(asked, life, Some(now + Duration::from_secs(65)), now), Instant::now() + Duration::from_secs(60)));
        assert!(until(asked, life, Some(now - Duration::from_secs(1)), now) <= Instant::now(), "an expired caller token holds nothing");
        assert_eq!(expiry(Some(&serde_json::json!({"exp": 1800000000u64}))), Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        assert_eq!(expiry(Some(&serde_json::json!({"sub": "x"}))), None);
    }
}
