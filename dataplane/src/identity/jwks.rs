//! The issuer's signing keys: found by OIDC discovery, fetched off the request path by one
//! thread per configured issuer, swapped whole, refreshed on a schedule and on demand (an
//! unknown `kid`), with refetches rate-limited.

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Jwks {
    pub issuer: String,
    keys: ArcSwap<JwkSet>,
    /// Increments on every successful fetch (waiters watch it).
    version: AtomicU64,
    refresh: parking_lot::Mutex<Sender<()>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({}, v{})", self.issuer, self.version())
    }
}

fn fetch_json(agent: &ureq::Agent, url: &str) -> Result<serde_json::Value, String> {
    let mut resp = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let text = resp.body_mut().read_to_string().map_err(|e| format!("GET {url}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

/// Discovery, then the key set.
fn fetch(agent: &ureq::Agent, issuer: &str) -> Result<JwkSet, String> {
    let disco = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let meta = fetch_json(agent, &disco)?;
    if meta.get("issuer").and_then(|i| i.as_str()) != Some(issuer) {
        return Err(format!("{disco} names issuer {:?}, not {issuer:?}; set identity.issuer to the exact issuer", meta.get("issuer")));
    }
    let uri = meta.get("jwks_uri").and_then(|u| u.as_str()).ok_or_else(|| format!("{disco} has no jwks_uri"))?;
    let set = fetch_json(agent, uri)?;
    serde_json::from_value(set).map_err(|e| format!("{uri}: not a JWK set: {e}"))
}

impl Jwks {
    /// Start fetching in the background; `min_interval` bounds on-demand refetches.
    pub fn start(issuer: String, every: Duration, min_interval: Duration, outbound: crate::tls::Outbound) -> Arc<Self> {
        let (tx, rx) = channel::<()>();
        let j = Arc::new(Jwks { issuer: issuer.clone(), keys: ArcSwap::from_pointee(JwkSet { keys: Vec::new() }), version: AtomicU64::new(0), refresh: parking_lot::Mutex::new(tx) });
        let weak: Weak<Jwks> = Arc::downgrade(&j);
        let spawned = std::thread::Builder::new().name("sluice-jwks".into()).spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(FETCH_TIMEOUT)).tls_config(outbound.tls()).build().into();
            let mut failures = 0u32;
            loop {
                let Some(j) = weak.upgrade() else { return };
                match fetch(&agent, &issuer) {
                    Ok(set) => {
                        let kids: Vec<String> = set.keys.iter().filter_map(|k| k.common.key_id.clone()).collect();
                        j.keys.store(Arc::new(set));
                        j.version.fetch_add(1, Ordering::SeqCst);
                        failures = 0;
                        tracing::info!(issuer = %issuer, ?kids, "JWKS loaded");
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(issuer = %issuer, error = %e, "JWKS fetch failed; tokens signed with unknown keys are refused until it succeeds");
                    }
                }
                drop(j);
                let fetched = Instant::now();
                // Retry soon after a failure, else wait for the schedule or a request.
                let wait = if failures > 0 { Duration::from_secs(u64::from(failures.min(6)) * 5).min(every) } else { every };
                match rx.recv_timeout(wait) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                while rx.try_recv().is_ok() {}
                // Rate limit: however many unknown kids arrive, one fetch per min_interval.
                let since = fetched.elapsed();
                if since < min_interval {
                    std::thread::sleep(min_interval - since);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the JWKS thread");
        }
        j
    }

    /// A key set given outright, never fetched (benchmarks and tests).
    pub fn with_keys(issuer: String, keys: JwkSet) -> Arc<Self> {
        let (tx, _) = channel::<()>();
        Arc::new(Jwks { issuer, keys: ArcSwap::from_pointee(keys), version: AtomicU64::new(1), refresh: parking_lot::Mutex::new(tx) })
    }

    /// As if a fetch brought `keys` (tests).
    #[cfg(test)]
    pub fn replace(&self, keys: JwkSet) {
        self.keys.store(Arc::new(keys));
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn keys(&self) -> Arc<JwkSet> {
        self.keys.load_full()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Ask for a refetch (an unknown `kid`); rate-limited by the fetching thread.
    pub fn request_refresh(&self) {
        let _ = self.refresh.lock().send(());
    }

    /// Take over another cache's keys (a reload with the same issuer keeps working at once).
    pub fn adopt(&self, other: &Jwks) {
        if other.issuer == self.issuer && other.version() > 0 && self.version() == 0 {
            self.keys.store(other.keys());
            self.version.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wait (blocking; start-up only) until the first fetch or `limit`.
    pub fn wait_loaded(&self, limit: Duration) -> bool {
        let t = Instant::now();
        while self.version() == 0 && t.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.version() > 0
    }
}
