//! The gateway's own record of each MCP session, reachable from every core.
//!
//! Requests of one session may arrive on different connections and so on different workers.
//! The store is split into [`SHARDS`] shards by a hash of the MCP session id; a worker locks
//! only the shard of the session it is handling, for the few hundred nanoseconds a lookup or
//! update takes, so there is no global lock on the hot path. Sessions are released on DELETE,
//! when the upstream answers 404 for them, when idle past `sessions.idle_timeout`, or when the
//! store is full (least recently used first).
//!
//! The session id an agent holds is the gateway's, not the upstream's ([`Ids`]): it names the
//! gateway's session and the upstream's, and carries a keyed tag over both, the route and the
//! caller that opened the session. Any gateway holding the deployment's key can check it
//! without shared state — so a session continues across gateway instances and restarts under
//! its one gateway id, and is refused to every other caller there too.

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
    /// The task the request names (its answer is recorded as that task's).
    pub task: Option<String>,
    /// The id of the request's event in the record (its answer's events name it).
    pub call: Option<String>,
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
    /// Tasks (MCP 2025-11-25) this session's calls created: task id → the tool that made it, so
    /// `tasks/get`, `tasks/result` and `tasks/cancel` are decided and recorded as that tool's.
    #[serde(skip)]
    pub tasks: HashMap<String, String>,
    /// MCP 2026-07-28 has no sessions: this one is the gateway's, of one caller's requests on
    /// one route (`caller_key`), ended by `sessions.idle_timeout`. No upstream knows it.
    pub stateless: bool,
    /// Event streams of this session open now (SSE answers, a `subscriptions/listen`, the
    /// standing GET stream): a session with one is not idle, however long it stays quiet.
    #[serde(skip)]
    pub open_streams: u32,
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
            tasks: HashMap::new(),
            stateless: false,
            open_streams: 0,
        }
    }

    /// The store's key for a caller's stateless requests (MCP 2026-07-28) on a route: NUL
    /// separated, so no session id an upstream hands out (a header value) can be one.
    pub fn caller_key(route: &str, caller: Option<&str>) -> String {
        format!("\0{route}\0{}", caller.unwrap_or(""))
    }

    /// Remember which tool a task belongs to; bounded like the pending maps (in count, and in
    /// the length of what is kept).
    pub fn remember_task(&mut self, task: &str, tool: &str) {
        // A task id is the server's to choose: one longer than any id is not kept.
        if task.len() > crate::jsonrpc::classify::MAX_ID_BYTES {
            return;
        }
        if self.tasks.len() >= MAX_PENDING && !self.tasks.contains_key(task) {
            if let Some(k) = self.tasks.keys().next().cloned() {
                self.tasks.remove(&k);
            }
        }
        self.tasks.insert(task.to_owned(), tool.to_owned());
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

/// An open event stream of a session ([`Store::open_stream`]).
pub struct OpenStream<'a> {
    store: &'a Store,
    key: String,
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        // Evicted and made again meanwhile: the new session never counted this stream.
        self.store.with(&self.key, |s| s.open_streams = s.open_streams.saturating_sub(1));
    }
}

#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<HashMap<String, Session>>]>,
    count: AtomicUsize,
    /// Sessions held per authenticated owner (`sessions.max_per_caller`), sharded by owner.
    owners: Box<[Mutex<HashMap<String, usize>>]>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: AtomicUsize::new(0),
            owners: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
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

    /// How many sessions `owner` holds.
    pub fn owned(&self, owner: &str) -> usize {
        self.owners[shard_of(owner)].lock().get(owner).copied().unwrap_or(0)
    }

    /// Count a session in (`up`) or out for its owner (none: anonymous, not counted).
    fn own(&self, owner: Option<&str>, up: bool) {
        let Some(o) = owner else { return };
        let mut m = self.owners[shard_of(o)].lock();
        if up {
            match m.get_mut(o) {
                Some(n) => *n += 1,
                None => {
                    m.insert(o.to_owned(), 1);
                }
            }
        } else if let Some(n) = m.get_mut(o) {
            *n -= 1;
            if *n == 0 {
                m.remove(o);
            }
        }
    }

    /// Insert (or replace) a session; evicts the least recently used when over `max`.
    pub fn insert(&self, s: Session, max: usize) {
        let into = shard_of(&s.mcp_session_id);
        if self.len() >= max {
            self.evict_oldest(into);
        }
        let owner = s.owner.clone();
        let old = self.shards[into].lock().insert(s.mcp_session_id.clone(), s);
        match old {
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            Some(o) => self.own(o.owner.as_deref(), false),
        }
        self.own(owner.as_deref(), true);
    }

    /// The session under `key`, made by `make` when there is none (under the shard's lock, so
    /// two workers never make two); its gateway id, and whether it was made now.
    pub fn get_or_insert(&self, key: &str, max: usize, make: impl FnOnce() -> Session) -> (String, bool) {
        let into = shard_of(key);
        if let Some(s) = self.shards[into].lock().get_mut(key) {
            s.last_seen = Instant::now();
            return (s.gateway_id.clone(), false);
        }
        if self.len() >= max {
            self.evict_oldest(into);
        }
        let mut shard = self.shards[into].lock();
        if let Some(s) = shard.get(key) {
            return (s.gateway_id.clone(), false);
        }
        let s = make();
        let (gid, owner) = (s.gateway_id.clone(), s.owner.clone());
        shard.insert(key.to_owned(), s);
        drop(shard);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.own(owner.as_deref(), true);
        (gid, true)
    }

    /// Run `f` on a session if it is known, refreshing its idle timer.
    pub fn with<R>(&self, mcp_session_id: &str, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let mut shard = self.shards[shard_of(mcp_session_id)].lock();
        shard.get_mut(mcp_session_id).map(|s| {
            s.last_seen = Instant::now();
            f(s)
        })
    }

    /// Count an event stream of the session as open until the guard is dropped (the session's
    /// idle timer starts again then). Nothing when the session is not known.
    pub fn open_stream(&self, key: String) -> Option<OpenStream<'_>> {
        self.with(&key, |s| s.open_streams += 1)?;
        Some(OpenStream { store: self, key })
    }

    pub fn remove(&self, mcp_session_id: &str) -> Option<Session> {
        let removed = self.shards[shard_of(mcp_session_id)].lock().remove(mcp_session_id);
        if let Some(s) = &removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.own(s.owner.as_deref(), false);
        }
        removed
    }

    /// Release sessions idle for longer than `idle`; returns the released ones.
    pub fn sweep(&self, idle: Duration) -> Vec<Session> {
        let now = Instant::now();
        let mut gone = Vec::new();
        for shard in self.shards.iter() {
            let mut m = shard.lock();
            let stale: Vec<String> = m.iter().filter(|(_, s)| s.open_streams == 0 && now.duration_since(s.last_seen) > idle).map(|(k, _)| k.clone()).collect();
            for k in stale {
                if let Some(s) = m.remove(&k) {
                    gone.push(s);
                }
            }
        }
        self.count.fetch_sub(gone.len(), Ordering::Relaxed);
        for s in &gone {
            self.own(s.owner.as_deref(), false);
        }
        gone
    }

    /// Make room for a session going into shard `into`: the least recently used of that shard
    /// when it holds enough to choose from — one lock and a 64th of the sessions, and still
    /// among the least recently used overall — else of the whole store (a small one: exact).
    /// A store-wide scan on every new session at capacity cost ~0.4 ms at 100,000 sessions,
    /// taking every shard's lock in turn.
    fn evict_oldest(&self, into: usize) {
        {
            let mut shard = self.shards[into].lock();
            if shard.len() >= LOCAL_EVICTION {
                if let Some(k) = shard.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone()) {
                    let gone = shard.remove(&k);
                    drop(shard);
                    self.count.fetch_sub(1, Ordering::Relaxed);
                    self.own(gone.and_then(|s| s.owner).as_deref(), false);
                    return;
                }
            }
        }
        let mut oldest: Option<(Instant, String)> = None;
        for shard in self.shards.iter() {
            let shard = shard.lock();
            if let Some((k, s)) = shard.iter().min_by_key(|(_, s)| s.last_seen) {
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

/// A shard holding at least this many sessions gives up its own least recently used one.
const LOCAL_EVICTION: usize = 16;

/// Bytes of the tag (128 bits), written as 26 Crockford base32 characters.
const TAG_BYTES: usize = 16;

/// Mints and opens the session ids agents hold: `GATEWAY_ID.TAG.UPSTREAM_ID`, where `TAG` is a
/// blake3 keyed hash of the route, the owner (the subject that opened the session, or none),
/// the gateway's session id and the upstream's. Only the holder of the key makes a tag that
/// opens, so an id presented by another caller, on another route, or altered in any character
/// does not.
#[derive(Clone, Copy)]
pub struct Ids {
    key: [u8; 32],
    /// The key before a rotation: ids it minted still open (new ones are minted with `key`).
    previous: Option<[u8; 32]>,
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ids(<key hidden>)")
    }
}

/// Why a presented session id did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum Unopened<'t> {
    /// Not an id this gateway hands out (an upstream's own id, or mangled).
    Malformed,
    /// Well formed, but its tag is not for this caller and route under this key: another
    /// caller's session, another deployment's key (or one from before a restart without a key
    /// file), or altered. Carries the upstream's id it names, for the log.
    Foreign { upstream: &'t str },
}

impl Ids {
    /// Ids keyed by key material a deployment shares between its gateways (≥ 16 bytes).
    pub fn from_material(material: &[u8]) -> Self {
        Ids { key: Self::derive(material), previous: None }
    }

    fn derive(material: &[u8]) -> [u8; 32] {
        blake3::derive_key("sluice 2026-11 session ids", material)
    }

    /// Also open the ids minted with the key made from `material` (the key before a rotation).
    pub fn with_previous(self, material: &[u8]) -> Self {
        Ids { previous: Some(Self::derive(material)), ..self }
    }

    /// Ids keyed for this process only (no key file): valid until it restarts.
    pub fn for_process() -> Self {
        Ids { key: crate::ids::process_key("sluice 2026-11 session ids (no key file)"), previous: None }
    }

    fn tag(&self, route: &str, owner: Option<&str>, gateway: &str, upstream: &str) -> [u8; TAG_BYTES] {
        Self::tag_with(&self.key, route, owner, gateway, upstream)
    }

    fn tag_with(key: &[u8; 32], route: &str, owner: Option<&str>, gateway: &str, upstream: &str) -> [u8; TAG_BYTES] {
        // Length-prefixed, so no two field lists hash the same bytes; no owner differs from an
        // empty one. Encoded on the stack and hashed in one call (the usual ids fit in 512
        // bytes): a call per field cost more than the hash.
        let mut buf = [0u8; 512];
        let mut n = 0;
        let mut h = None::<blake3::Hasher>;
        for field in [Some(route), owner, Some(gateway), Some(upstream)] {
            let (tag, bytes) = field.map_or((0u8, &b""[..]), |f| (1, f.as_bytes()));
            let len = (bytes.len() as u64).to_le_bytes();
            for part in [&[tag][..], &len[..], bytes] {
                if let Some(h) = h.as_mut() {
                    h.update(part);
                } else if n + part.len() <= buf.len() {
                    buf[n..n + part.len()].copy_from_slice(part);
                    n += part.len();
                } else {
                    let mut long = blake3::Hasher::new_keyed(key);
                    long.update(&buf[..n]).update(part);
                    h = Some(long);
                }
            }
        }
        let hash = h.map_or_else(|| blake3::keyed_hash(key, &buf[..n]), |h| h.finalize());
        let mut t = [0u8; TAG_BYTES];
        t.copy_from_slice(&hash.as_bytes()[..TAG_BYTES]);
        t
    }

    /// The id to give the agent for the upstream's session `upstream`.
    pub fn mint(&self, route: &str, owner: Option<&str>, gateway: &str, upstream: &str) -> String {
        let tag = u128::from_be_bytes(self.tag(route, owner, gateway, upstream));
        let mut out = String::with_capacity(gateway.len() + 28 + upstream.len());
        out.push_str(gateway);
        out.push('.');
        crate::ids::push_base32(&mut out, tag);
        out.push('.');
        out.push_str(upstream);
        out
    }

    /// The gateway's and the upstream's session ids named by `held`, if it was minted for
    /// `caller` on `route`.
    pub fn open<'t>(&self, route: &str, caller: Option<&str>, held: &'t str) -> Result<(&'t str, &'t str), Unopened<'t>> {
        let mut parts = held.splitn(3, '.');
        let (Some(gateway), Some(tag), Some(upstream)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Unopened::Malformed);
        };
        let Some(tag) = crate::ids::parse_base32(tag) else {
            return Err(Unopened::Malformed);
        };
        if gateway.len() != 26 || crate::ids::parse_base32(gateway).is_none() || upstream.is_empty() {
            return Err(Unopened::Malformed);
        }
        // Compared without an early exit: the time taken says nothing of how much matched.
        let held = tag.to_be_bytes();
        let matches = |key: &[u8; 32]| held.iter().zip(Self::tag_with(key, route, caller, gateway, upstream)).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
        if matches(&self.key) || self.previous.as_ref().is_some_and(matches) {
            Ok((gateway, upstream))
        } else {
            Err(Unopened::Foreign { upstream })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_stateless_requests_share_one_session_per_route() {
        let store = Store::default();
        let key = Session::caller_key("mcp", Some("alice"));
        let make = |owner: &str| {
            let mut s = Session::new(&key, "mcp");
            s.owner = Some(owner.into());
            s.stateless = true;
            s
        };
        let (first, made) = store.get_or_insert(&key, 10, || make("alice"));
        assert!(made);
        assert_eq!(store.get_or_insert(&key, 10, || make("alice")), (first.clone(), false), "the same session, not a second one");
        assert_eq!(store.len(), 1);
        for other in [Session::caller_key("mcp", Some("bob")), Session::caller_key("other", Some("alice")), Session::caller_key("mcp", None)] {
            assert_ne!(other, key);
            assert_ne!(store.get_or_insert(&other, 10, || make("x")).0, first);
        }
        assert!(key.bytes().any(|b| b == 0), "no header value (a session id an upstream hands out) can be such a key");
        // At capacity a new one evicts, and the caller's next request starts afresh.
        let full = Store::default();
        for i in 0..3 {
            full.get_or_insert(&Session::caller_key("mcp", Some(&format!("u{i}"))), 3, || make("u"));
        }
        full.get_or_insert(&key, 3, || make("alice"));
        assert_eq!(full.len(), 3);
    }

    #[test]
    fn sessions_are_counted_per_owner_through_every_way_out() {
        let store = Store::default();
        let mk = |id: &str, owner: Option<&str>| {
            let mut s = Session::new(id, "mcp");
            s.owner = owner.map(str::to_owned);
            s
        };
        for i in 0..4 {
            store.insert(mk(&format!("a{i}"), Some("alice")), 100);
        }
        store.insert(mk("b0", Some("bob")), 100);
        store.insert(mk("anon", None), 100);
        assert_eq!((store.owned("alice"), store.owned("bob"), store.owned("")), (4, 1, 0));
        store.insert(mk("a0", Some("alice")), 100); // the same id again: replaced, not added
        assert_eq!(store.owned("alice"), 4);
        store.remove("a1");
        assert_eq!(store.owned("alice"), 3);
        store.get_or_insert(&Session::caller_key("mcp", Some("alice")), 100, || mk(&Session::caller_key("mcp", Some("alice")), Some("alice")));
        assert_eq!(store.owned("alice"), 4, "a stateless session counts too");
        // At capacity the least recently used goes, counted out.
        let small = Store::default();
        small.insert(mk("x0", Some("carol")), 2);
        small.insert(mk("x1", Some("carol")), 2);
        small.insert(mk("y0", Some("dave")), 2);
        assert_eq!((small.owned("carol"), small.owned("dave"), small.len()), (1, 1, 2));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(store.sweep(Duration::from_millis(5)).len(), 6);
        assert_eq!((store.owned("alice"), store.owned("bob")), (0, 0));
        assert!(store.owners.iter().all(|m| m.lock().is_empty()), "no owner left behind");
    }

    #[test]
    fn a_session_with_an_open_stream_is_not_idle() {
        let store = Store::default();
        for id in ["listening", "quiet"] {
            store.insert(Session::new(id, "mcp"), 10);
        }
        let stream = store.open_stream("listening".into()).unwrap();
        let nested = store.open_stream("listening".into()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let gone: Vec<String> = store.sweep(Duration::from_millis(10)).into_iter().map(|s| s.mcp_session_id).collect();
        assert_eq!(gone, ["quiet"]);
        drop(nested);
        std::thread::sleep(Duration::from_millis(30));
        assert!(store.sweep(Duration::from_millis(10)).is_empty(), "one stream is still open");
        drop(stream);
        assert!(store.sweep(Duration::from_millis(10)).is_empty(), "the idle timer starts again when the stream ends");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(store.sweep(Duration::from_millis(10)).len(), 1);
        assert!(store.open_stream("unknown".into()).is_none());
    }

    #[test]
    fn session_ids_open_only_for_their_caller_route_and_key() {
        let ids = Ids::from_material(b"0123456789abcdef-deployment");
        let gid = crate::ids::new_id();
        let held = ids.mint("mcp", Some("alice"), &gid, "up.session-1");
        assert!(held.starts_with(&format!("{gid}.")) && held.ends_with(".up.session-1"), "{held}");
        assert!(held.bytes().all(|b| (0x21..=0x7e).contains(&b)), "visible ASCII, as MCP requires");
        assert_eq!(ids.open("mcp", Some("alice"), &held), Ok((gid.as_str(), "up.session-1")));
        // Another gateway of the deployment (same key material) opens it too.
        assert_eq!(Ids::from_material(b"0123456789abcdef-deployment").open("mcp", Some("alice"), &held), Ok((gid.as_str(), "up.session-1")));
        let foreign = Err(Unopened::Foreign { upstream: "up.session-1" });
        assert_eq!(ids.open("mcp", Some("bob"), &held), foreign, "another caller");
        assert_eq!(ids.open("mcp", None, &held), foreign, "an anonymous caller");
        assert_eq!(ids.open("other", Some("alice"), &held), foreign, "another route");
        assert_eq!(Ids::from_material(b"another deployment's key").open("mcp", Some("alice"), &held), foreign);
        assert_eq!(Ids::for_process().open("mcp", Some("alice"), &held), foreign);
        // An anonymous session opens for anonymous callers only.
        let anon = ids.mint("mcp", None, &gid, "u");
        assert!(ids.open("mcp", None, &anon).is_ok());
        assert!(ids.open("mcp", Some(""), &anon).is_err(), "no owner is not an empty subject");
        // Every single-character change to the gateway id, tag or upstream id is refused.
        for i in 0..held.len() {
            for c in [b'0', b'Z', b'.', b'a', b'-'] {
                let mut b = held.clone().into_bytes();
                if b[i] == c {
                    continue;
                }
                b[i] = c;
                let altered = String::from_utf8(b).unwrap();
                assert!(ids.open("mcp", Some("alice"), &altered).is_err(), "{altered}");
            }
        }
        for bad in ["", "abc", "up-1", &gid, &format!("{gid}."), &format!("{gid}.x.y"), &held[..held.len() - 13], &format!("{}.", &held[..held.rfind('.').unwrap()])] {
            assert!(ids.open("mcp", Some("alice"), bad).is_err(), "{bad:?}");
        }
        assert_eq!(ids.open("mcp", Some("alice"), "up-1"), Err(Unopened::Malformed), "an upstream's own id is not one of ours");
        // A key rotation: the new key with the old one as previous opens both generations and
        // mints with the new one; without it, the old ids are refused.
        let rotated = Ids::from_material(b"the next key, 32 bytes or so....").with_previous(b"0123456789abcdef-deployment");
        assert!(rotated.open("mcp", Some("alice"), &held).is_ok());
        let fresh = rotated.mint("mcp", Some("alice"), &gid, "up.session-1");
        assert_ne!(fresh, held);
        assert!(Ids::from_material(b"the next key, 32 bytes or so....").open("mcp", Some("alice"), &fresh).is_ok());
        assert!(Ids::from_material(b"the next key, 32 bytes or so....").open("mcp", Some("alice"), &held).is_err());
        assert!(rotated.open("mcp", Some("bob"), &held).is_err(), "the previous key binds the caller just the same");
        // Fields past the stack buffer hash the same bytes through the streaming hasher.
        for len in [400, 480, 500, 1000] {
            let long = "u".repeat(len);
            let held = ids.mint("mcp", Some("alice"), &gid, &long);
            assert!(ids.open("mcp", Some("alice"), &held).is_ok(), "{len}");
            assert!(ids.open("mcp", Some("alicf"), &held).is_err(), "{len}");
            let mut h = blake3::Hasher::new_keyed(&ids.key);
            for f in ["mcp", "alice", &gid, &long] {
                h.update(&[1]).update(&(f.len() as u64).to_le_bytes()).update(f.as_bytes());
            }
            assert_eq!(ids.tag("mcp", Some("alice"), &gid, &long), h.finalize().as_bytes()[..TAG_BYTES], "{len}");
        }
    }

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

    /// A large store evicts within the new session's shard: its least recently used one,
    /// and the store stays at its size.
    #[test]
    fn a_large_full_store_evicts_the_oldest_of_the_shard() {
        let st = Store::default();
        let max = 64 * LOCAL_EVICTION * 2;
        for i in 0..max {
            st.insert(Session::new(&format!("s-{i}"), "r"), max);
        }
        let incoming = "incoming";
        let shard = shard_of(incoming);
        let of_shard: Vec<String> = (0..max).map(|i| format!("s-{i}")).filter(|k| shard_of(k) == shard).collect();
        assert!(of_shard.len() >= LOCAL_EVICTION, "{}", of_shard.len());
        // Everything but one session of another shard (older still) and the shard's first one
        // was used since.
        let elsewhere = (0..max).map(|i| format!("s-{i}")).find(|k| shard_of(k) != shard).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        st.with(&of_shard[0], |_| ());
        std::thread::sleep(Duration::from_millis(2));
        for k in (0..max).map(|i| format!("s-{i}")).filter(|k| *k != of_shard[0] && *k != elsewhere) {
            st.with(&k, |_| ());
        }
        st.insert(Session::new(incoming, "r"), max);
        assert_eq!(st.len(), max);
        assert!(st.with(&of_shard[0], |_| ()).is_none(), "the shard's least recently used one went");
        assert!(st.with(&elsewhere, |_| ()).is_some(), "another shard's was not looked at");
        assert!(st.with(incoming, |_| ()).is_some());
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
            Session::remember(&mut m, &i.to_string(), Pending { method: "x".into(), tool: None, task: None, call: None });
        }
        assert_eq!(m.len(), MAX_PENDING);
    }
}
