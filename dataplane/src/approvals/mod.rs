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

pub mod admin;
pub mod cli;
pub mod notify;
pub mod wait;

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// Most records kept (decided and expired ones are dropped first, oldest first).
const MAX_RECORDS: usize = 10_000;
/// How long decided records stay listed.
const KEEP_DECIDED: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip)]
    created: Instant,
    #[serde(skip)]
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
}

impl Store {
    /// Find the approval for this exact call (same caller, route, tool and arguments), or open
    /// a new request.
    pub fn ask(&self, r: Request<'_>) -> Ask {
        let mut map = self.entries.lock();
        let now = Instant::now();
        let same = |e: &Entry| e.subject == r.subject && e.route == r.route && e.tool == r.tool && e.args_digest == r.args_digest;
        if let Some(e) = map.values_mut().find(|e| same(e) && matches!(e.state, State::Approved { .. }) && e.deadline > now) {
            if let State::Approved { by, .. } = std::mem::replace(&mut e.state, State::Expired) {
                e.state = State::Used { by: by.clone() };
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
                Some((State::Expired, true))
            }
            State::Approved { by, reason } => {
                let decided = State::Approved { by: by.clone(), reason: reason.clone() };
                e.state = State::Used { by: by.clone() };
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
        prune(&mut map, false);
        out
    }

    /// Decide a pending call as `reviewer` (subject, groups).
    pub fn decide(&self, id: &str, reviewer: &str, groups: &[String], approve: bool, reason: &str) -> Result<Entry, DecideError> {
        let mut map = self.entries.lock();
        let e = map.get_mut(id).ok_or_else(|| DecideError::Unknown(id.to_owned()))?;
        if e.state == State::Pending && Instant::now() >= e.deadline {
            e.state = State::Expired;
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
