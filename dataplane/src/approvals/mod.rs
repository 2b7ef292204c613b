//! Human approvals: calls a `require_approval` rule holds until a reviewer decides.
//!
//! A request names the caller, session, route, tool, the masked arguments and a blake3 digest
//! of the exact arguments (canonical JSON). An approval is bound to that digest and caller: it
//! lets exactly one call with those arguments through, once, before it expires. The held call
//! waits on its worker without blocking it ([`wait`] polls the record between timer sleeps);
//! reviewers decide through the admin API, the CLI or the web page ([`admin`]).
//!
//! The store lives in this process: approvals are per gateway replica (documented in the
//! README). It is behind one mutex — only calls that need a human reach it, never the hot path.
//! With `approvals.state_file` it is written there (by the housekeeping thread, at most a
//! second after a change, and at stop) and read back at start, so pending requests and
//! decisions survive a restart; see [`Store::load`] for what a crash withdraws.

pub mod admin;
pub mod cli;
pub mod notify;
pub mod wait;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Most records kept (decided and expired ones are dropped first, oldest first).
const MAX_RECORDS: usize = 10_000;
/// How long decided records stay listed.
const KEEP_DECIDED: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    Pending,
    Approved { by: String, reason: String },
    Denied { by: String, reason: String },
    Expired,
    /// Approved, and the call it approved went through.
    Used { by: String },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved { .. } => "approved",
            State::Denied { .. } => "denied",
            State::Expired => "expired",
            State::Used { .. } => "used",
        }
    }
}

/// One call waiting for (or decided by) a human.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    #[serde(flatten)]
    pub state: State,
    pub subject: String,
    pub agent_groups: Vec<String>,
    pub session: Option<String>,
    pub route: String,
    pub tool: String,
    pub method: String,
    /// The arguments as the record keeps them (masked).
    pub arguments: serde_json::Value,
    /// blake3 (hex) of the exact arguments.
    pub args_digest: String,
    /// Groups whose members may decide.
    pub approvers: Vec<String>,
    pub rule: String,
    /// Microseconds since the Unix epoch.
    pub requested_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    #[serde(skip, default = "Instant::now")]
    created: Instant,
    #[serde(skip, default = "Instant::now")]
    deadline: Instant,
}

impl Entry {
    pub fn waited(&self) -> Duration {
        self.created.elapsed()
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// What a new call needing approval gets.
#[derive(Debug, Clone)]
pub enum Ask {
    /// An approval for exactly this call was given and not used yet: it is used now.
    Approved { id: String, by: String },
    /// Wait on this record (`created`: it is new, record the request).
    Wait { entry: Box<Entry>, created: bool },
}

/// A reviewer's decision that cannot be taken, and why (shown to the reviewer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("no approval request {0}")]
    Unknown(String),
    #[error("approval request {0} is already {1}")]
    Closed(String, &'static str),
    #[error("only members of {0} may decide this call")]
    NotApprover(String),
    #[error("a caller can never approve its own call")]
    OwnCall,
    #[error("the gateway is stopping and has written its approvals for the next start: decide once it is back (the request stays open)")]
    Stopping,
}

/// The details of a call that needs approval.
pub struct Request<'a> {
    pub subject: &'a str,
    pub agent_groups: &'a [String],
    pub session: Option<&'a str>,
    pub route: &'a str,
    pub tool: &'a str,
    pub method: &'a str,
    pub arguments: serde_json::Value,
    pub args_digest: String,
    pub approvers: &'a [String],
    pub rule: &'a str,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub struct Store {
    entries: Mutex<HashMap<String, Entry>>,
    /// Changed since the state file was last written.
    dirty: AtomicBool,
    /// Held while the state file is written (housekeeping's write and the one at stop must not
    /// share the temporary file).
    saving: Mutex<()>,
    /// The write at stop has begun: nothing is written after it (a later write would take back
    /// its `clean`), and decisions are refused (the file would not hold them).
    closed: AtomicBool,
}

/// The state file (`approvals.state_file`): read as `Saved<Entry>`, written from the store's
/// own records as `Saved<&Entry>`.
#[derive(Serialize, Deserialize)]
struct Saved<E> {
    version: u32,
    /// Written at a graceful stop, after the last call was answered: nothing happened after.
    clean: bool,
    entries: Vec<E>,
}

const SAVED_VERSION: u32 = 1;

/// What [`Store::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub pending: usize,
    pub approved: usize,
    /// Approvals given but unused that a crash withdrew (see [`Store::load`]), as now
    /// recorded (expired), for the record.
    pub withdrawn: Vec<Entry>,
}

impl Store {
    /// The records a previous run left in `path` (none when it does not exist). Deadlines are
    /// kept in wall-clock time, so a request whose time ran out while the gateway was down is
    /// expired at the first housekeeping tick (recorded, webhooks told). When the file was not
    /// written at a graceful stop (a crash, `kill -9`), an approval given but not yet used may
    /// have been used in the second before the crash without the file knowing: approvals are
    /// single-use, so such approvals are withdrawn (marked expired; the caller asks again).
    pub fn load(path: &Path) -> anyhow::Result<(Store, Loaded)> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            // Marked changed, as below: the first write creates it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Store { dirty: AtomicBool::new(true), ..Store::default() }, Loaded::default())),
            Err(e) => anyhow::bail!("approvals.state_file {}: cannot be read: {e}", path.display()),
        };
        let saved: Saved<Entry> = serde_json::from_slice(&text).map_err(|e| {
            anyhow::anyhow!("approvals.state_file {}: not a state file sluice wrote ({e}); move it aside to start without the approvals it held", path.display())
        })?;
        if saved.version != SAVED_VERSION {
            anyhow::bail!("approvals.state_file {}: version {} is not {SAVED_VERSION}; move it aside to start without the approvals it held", path.display(), saved.version);
        }
        let (now, wall) = (Instant::now(), micros(SystemTime::now()));
        let mut found = Loaded::default();
        let mut map = HashMap::with_capacity(saved.entries.len());
        for mut e in saved.entries {
            let ahead = Duration::from_micros(e.expires_at.saturating_sub(wall).max(0) as u64);
            let ago = Duration::from_micros(wall.saturating_sub(e.requested_at).max(0) as u64);
            e.deadline = now + ahead;
            e.created = now.checked_sub(ago).unwrap_or(now);
            match e.state {
                State::Pending => found.pending += 1,
                State::Approved { .. } if !saved.clean => {
                    e.state = State::Expired;
                    found.withdrawn.push(e.clone());
                }
                State::Approved { .. } => found.approved += 1,
                _ => {}
            }
            map.insert(e.id.clone(), e);
        }
        // Marked changed: the first write says the run is under way (not clean).
        Ok((Store { entries: Mutex::new(map), dirty: AtomicBool::new(true), ..Store::default() }, found))
    }

    /// Write the records to `path` if they changed (`clean`: at a graceful stop, after the
    /// workers ended). Atomic: a temporary file, synced, renamed, and the directory synced.
    pub fn save(&self, path: &Path, clean: bool) -> std::io::Result<bool> {
        let _one = self.saving.lock();
        if self.closed.load(Ordering::SeqCst) || (!self.dirty.swap(false, Ordering::SeqCst) && !clean) {
            return Ok(false);
        }
        if clean {
            self.closed.store(true, Ordering::SeqCst);
        }
        let text = {
            let map = self.entries.lock();
            let mut entries: Vec<&Entry> = map.values().collect();
            entries.sort_by(|a, b| a.id.cmp(&b.id));
            serde_json::to_vec_pretty(&Saved { version: SAVED_VERSION, clean, entries }).map_err(std::io::Error::other)?
        };
        // Owner-only: it holds masked arguments and reviewers' names.
        crate::pins::write_atomically(path, &text, 0o600).inspect_err(|_| self.dirty.store(true, Ordering::SeqCst))?;
        Ok(true)
    }

    fn changed(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Find the approval for this exact call (same caller, route, tool and arguments), or open
    /// a new request.
    pub fn ask(&self, r: Request<'_>) -> Ask {
        let mut map = self.entries.lock();
        let now = Instant::now();
        let same = |e: &Entry| e.subject == r.subject && e.route == r.route && e.tool == r.tool && e.args_digest == r.args_digest;
        if let Some(e) = map.values_mut().find(|e| same(e) && matches!(e.state, State::Approved { .. }) && e.deadline > now) {
            if let State::Approved { by, .. } = std::mem::replace(&mut e.state, State::Expired) {
                e.state = State::Used { by: by.clone() };
                self.changed();
                return Ask::Approved { id: e.id.clone(), by };
            }
        }
        if let Some(e) = map.values().find(|e| same(e) && e.state == State::Pending && e.deadline > now) {
            return Ask::Wait { entry: Box::new(e.clone()), created: false };
        }
        if map.len() >= MAX_RECORDS {
            prune(&mut map, true);
        }
        let t = SystemTime::now();
        let e = Entry {
            id: crate::ids::new_id(),
            state: State::Pending,
            subject: r.subject.to_owned(),
            agent_groups: r.agent_groups.to_vec(),
            session: r.session.map(str::to_owned),
            route: r.route.to_owned(),
            tool: r.tool.to_owned(),
            method: r.method.to_owned(),
            arguments: r.arguments,
            args_digest: r.args_digest,
            approvers: r.approvers.to_vec(),
            rule: r.rule.to_owned(),
            requested_at: micros(t),
            expires_at: micros(t + r.timeout),
            decided_at: None,
            created: now,
            deadline: now + r.timeout,
        };
        map.insert(e.id.clone(), e.clone());
        self.changed();
        Ask::Wait { entry: Box::new(e), created: true }
    }

    /// The state of a record for the call waiting on it: an approval is used by this call.
    /// `Some(Expired)` marks the record expired the first time its deadline is seen passed
    /// (the second value says whether this call marked it).
    pub fn poll(&self, id: &str) -> Option<(State, bool)> {
        let mut map = self.entries.lock();
        let e = map.get_mut(id)?;
        match &e.state {
            State::Pending if Instant::now() >= e.deadline => {
                e.state = State::Expired;
                self.changed();
                Some((State::Expired, true))
            }
            State::Approved { by, reason } => {
                let decided = State::Approved { by: by.clone(), reason: reason.clone() };
                e.state = State::Used { by: by.clone() };
                self.changed();
                Some((decided, false))
            }
            s => Some((s.clone(), false)),
        }
    }

    /// Records past their deadline, now marked expired (for the record).
    pub fn expire_due(&self) -> Vec<Entry> {
        let mut map = self.entries.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        for e in map.values_mut() {
            if e.state == State::Pending && now >= e.deadline {
                e.state = State::Expired;
                out.push(e.clone());
            }
        }
        let before = map.len();
        prune(&mut map, false);
        if !out.is_empty() || map.len() != before {
            self.changed();
        }
        out
    }

    /// Decide a pending call as `reviewer` (subject, groups).
    pub fn decide(&self, id: &str, reviewer: &str, groups: &[String], approve: bool, reason: &str) -> Result<Entry, DecideError> {
        let mut map = self.entries.lock();
        let e = map.get_mut(id).ok_or_else(|| DecideError::Unknown(id.to_owned()))?;
        // Checked under the entries' lock, which the write at stop takes after setting it.
        if self.closed.load(Ordering::SeqCst) {
            return Err(DecideError::Stopping);
        }
        if e.state == State::Pending && Instant::now() >= e.deadline {
            e.state = State::Expired;
            self.changed();
        }
        if e.state != State::Pending {
            return Err(DecideError::Closed(id.to_owned(), e.state.name()));
        }
        if reviewer == e.subject {
            return Err(DecideError::OwnCall);
        }
        if !groups.iter().any(|g| e.approvers.contains(g)) {
            return Err(DecideError::NotApprover(e.approvers.join(" or ")));
        }
        e.state = if approve {
            State::Approved { by: reviewer.to_owned(), reason: reason.to_owned() }
        } else {
            State::Denied { by: reviewer.to_owned(), reason: reason.to_owned() }
        };
        e.decided_at = Some(micros(SystemTime::now()));
        self.changed();
        Ok(e.clone())
    }

    /// Records a reviewer in `groups` may see (newest first); `all`: decided ones too.
    pub fn list(&self, groups: &[String], all: bool) -> Vec<Entry> {
        let map = self.entries.lock();
        let now = Instant::now();
        let mut v: Vec<Entry> = map
            .values()
            .filter(|e| groups.iter().any(|g| e.approvers.contains(g)))
            .filter(|e| all || (e.state == State::Pending && e.deadline > now))
            .cloned()
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.requested_at));
        v
    }
}

/// Drop decided records older than [`KEEP_DECIDED`] (`force`: the oldest decided ones until
/// there is room).
fn prune(map: &mut HashMap<String, Entry>, force: bool) {
    map.retain(|_, e| e.state == State::Pending || e.created.elapsed() < KEEP_DECIDED);
    if force && map.len() >= MAX_RECORDS {
        let mut closed: Vec<(Instant, String)> = map.values().filter(|e| e.state != State::Pending).map(|e| (e.created, e.id.clone())).collect();
        closed.sort();
        for (_, id) in closed.into_iter().take(map.len() + 1 - MAX_RECORDS) {
            map.remove(&id);
        }
    }
}

/// The record of one approval step (`approval_requested`, `_decided`, `_expired`).
pub fn event<'a>(e: &'a Entry, kind: sluice_schema::event::Kind, instance: &'a str) -> sluice_schema::event::Event<'a> {
    use std::borrow::Cow;
    let mut ev = sluice_schema::event::Event::new(crate::ids::new_id(), crate::events::now_us(), kind, instance);
    ev.session = e.session.as_deref().map(Cow::Borrowed);
    ev.route = Some(Cow::Borrowed(&e.route));
    ev.method = Some(Cow::Borrowed(&e.method));
    ev.tool = Some(Cow::Borrowed(&e.tool));
    ev.identity = Some(sluice_schema::event::Identity {
        subject: Cow::Borrowed(&e.subject),
        groups: e.agent_groups.iter().map(|g| Cow::Borrowed(g.as_str())).collect(),
        agent_type: None,
        via: None,
    });
    let (by, reason) = match &e.state {
        State::Approved { by, reason } | State::Denied { by, reason } => (Some(by.as_str()), Some(reason.as_str())),
        State::Used { by } => (Some(by.as_str()), None),
        _ => (None, None),
    };
    ev.approval = Some(sluice_schema::event::Approval {
        id: Cow::Borrowed(&e.id),
        state: Cow::Borrowed(match kind {
            sluice_schema::event::Kind::ApprovalRequested => "requested",
            sluice_schema::event::Kind::ApprovalExpired => "expired",
            _ => e.state.name(),
        }),
        args_digest: Cow::Borrowed(&e.args_digest),
        approver_groups: e.approvers.iter().map(|g| Cow::Borrowed(g.as_str())).collect(),
        by: by.map(Cow::Borrowed),
        reason: reason.map(Cow::Borrowed),
        waited_ms: (kind != sluice_schema::event::Kind::ApprovalRequested).then(|| e.waited().as_millis() as u64),
        expires_at: Some(e.expires_at),
    });
    ev
}

#[cfg(test)]
mod tests;
