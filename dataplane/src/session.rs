//! The gateway's own record of each MCP session, reachable from every core.
//!
//! Requests of one session may arrive on different connections and so on different workers.
//! The store is split into [`SHARDS`] shards by a hash of the MCP session id; a worker locks
//! only the shard of the session it is handling, for the few hundred nanoseconds a lookup or
//! update takes, so there is no global lock on the hot path. Sessions are released on DELETE,
//! when the upstream answers 404 for them, when idle past `sessions.idle_timeout`, or when the
//! store is full (least recently used first).

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub const SHARDS: usize = 64;
/// Most unanswered requests remembered per session and direction.
const MAX_PENDING: usize = 1024;

/// A request waiting for its response, remembered to classify the response.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub method: String,
    pub tool: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// The gateway's own id for this session (time-ordered).
    pub gateway_id: String,
    pub mcp_session_id: String,
    pub route: String,
    /// The authenticated subject that opened the session (none without `[identity]`): only
    /// it may use the session (MCP security best practices: bind session ids to the user).
    pub owner: Option<String>,
    pub protocol_version: Option<String>,
    pub client_info: Option<serde_json::Value>,
    pub client_capabilities: Option<serde_json::Value>,
    pub server_info: Option<serde_json::Value>,
    pub server_capabilities: Option<serde_json::Value>,
    pub started_at: SystemTime,
    #[serde(skip)]
    pub last_seen: Instant,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Client → server requests awaiting a response, by id text.
    #[serde(skip)]
    pub pending_client: HashMap<String, Pending>,
    /// Server → client requests (sampling, elicitation, roots) awaiting the client's answer.
    #[serde(skip)]
    pub pending_server: HashMap<String, Pending>,
    /// What the policy knows of this session: calls so far, findings seen.
    #[serde(skip)]
    pub policy: crate::policy::SessionFacts,
    /// Tool annotations from this session's `tools/list` answers.
    #[serde(skip)]
    pub tools: HashMap<String, crate::policy::Annotations>,
    /// Legacy HTTP+SSE: the gateway's own answers (refusals of posted calls) waiting to go out
    /// on the session's stream, where the agent reads its answers.
    #[serde(skip)]
    pub legacy_out: Vec<Vec<u8>>,
}

impl Session {
    pub fn new(mcp_session_id: &str, route: &str) -> Self {
        Session {
            gateway_id: crate::ids::new_id(),
            mcp_session_id: mcp_session_id.to_owned(),
            route: route.to_owned(),
            owner: None,
            protocol_version: None,
            client_info: None,
            client_capabilities: None,
            server_info: None,
            server_capabilities: None,
            started_at: SystemTime::now(),
            last_seen: Instant::now(),
            messages_in: 0,
            messages_out: 0,
            pending_client: HashMap::new(),
            pending_server: HashMap::new(),
            policy: Default::default(),
            tools: HashMap::new(),
            legacy_out: Vec::new(),
        }
    }

    /// Remember a request so that its response can be matched; the map is bounded.
    pub fn remember(map: &mut HashMap<String, Pending>, id: &str, p: Pending) {
        if map.len() >= MAX_PENDING {
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.insert(id.to_owned(), p);
    }
}

#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<HashMap<String, Session>>]>,
    count: AtomicUsize,
}

impl Default for Store {
    fn default() -> Self {
        Store { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), count: AtomicUsize::new(0) }
    }
}

fn shard_of(id: &str) -> usize {
    let h = blake3::hash(id.as_bytes());
    (h.as_bytes()[0] as usize) % SHARDS
}

impl Store {
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Insert (or replace) a session; evicts the least recently used when over `max`.
    pub fn insert(&self, s: Session, max: usize) {
        if self.len() >= max {
            self.evict_oldest();
        }
        let mut shard = self.shards[shard_of(&s.mcp_session_id)].lock();
        if shard.insert(s.mcp_session_id.clone(), s).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Run `f` on a session if it is known, refreshing its idle timer.
    pub fn with<R>(&self, mcp_session_id: &str, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let mut shard = self.shards[shard_of(mcp_session_id)].lock();
        shard.get_mut(mcp_session_id).map(|s| {
            s.last_seen = Instant::now();
            f(s)
        })
    }

    pub fn remove(&self, mcp_session_id: &str) -> Option<Session> {
        let removed = self.shards[shard_of(mcp_session_id)].lock().remove(mcp_session_id);
        if removed.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Release sessions idle for longer than `idle`; returns the released ones.
    pub fn sweep(&self, idle: Duration) -> Vec<Session> {
        let now = Instant::now();
        let mut gone = Vec::new();
        for shard in self.shards.iter() {
            let mut m = shard.lock();
            let stale: Vec<String> = m.iter().filter(|(_, s)| now.duration_since(s.last_seen) > idle).map(|(k, _)| k.clone()).collect();
            for k in stale {
                if let Some(s) = m.remove(&k) {
                    gone.push(s);
                }
            }
        }
        self.count.fetch_sub(gone.len(), Ordering::Relaxed);
        gone
    }

    fn evict_oldest(&self) {
        let mut oldest: Option<(Instant, String)> = None;
        for shard in self.shards.iter() {
            for (k, s) in shard.lock().iter() {
                if oldest.as_ref().is_none_or(|(t, _)| s.last_seen < *t) {
                    oldest = Some((s.last_seen, k.clone()));
                }
            }
        }
        if let Some((_, k)) = oldest {
            self.remove(&k);
        }
    }

    /// A copy of every live session (admin API).
    pub fn snapshot(&self) -> Vec<Session> {
        self.shards.iter().flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_update_remove_and_count() {
        let st = Store::default();
        st.insert(Session::new("a", "r"), 10);
        st.insert(Session::new("b", "r"), 10);
        assert_eq!(st.len(), 2);
        assert_eq!(
            st.with("a", |s| {
                s.messages_in += 1;
                s.messages_in
            }),
            Some(1)
        );
        assert_eq!(st.with("zz", |_| ()), None);
        assert!(st.remove("a").is_some());
        assert!(st.remove("a").is_none());
        assert_eq!(st.len(), 1);
    }

    #[test]
    fn full_store_evicts_least_recently_used() {
        let st = Store::default();
        st.insert(Session::new("old", "r"), 2);
        std::thread::sleep(Duration::from_millis(2));
        st.insert(Session::new("new", "r"), 2);
        st.with("old", |_| ());
        st.insert(Session::new("newest", "r"), 2);
        assert_eq!(st.len(), 2);
        assert!(st.with("new", |_| ()).is_none(), "the least recently used one goes");
        assert!(st.with("old", |_| ()).is_some());
    }

    #[test]
    fn sweep_releases_idle_sessions() {
        let st = Store::default();
        st.insert(Session::new("a", "r"), 10);
        std::thread::sleep(Duration::from_millis(20));
        st.insert(Session::new("b", "r"), 10);
        let gone = st.sweep(Duration::from_millis(10));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].mcp_session_id, "a");
        assert_eq!(st.len(), 1);
    }

    #[test]
    fn pending_is_bounded() {
        let mut m = HashMap::new();
        for i in 0..MAX_PENDING + 10 {
            Session::remember(&mut m, &i.to_string(), Pending { method: "x".into(), tool: None });
        }
        assert_eq!(m.len(), MAX_PENDING);
    }
}
