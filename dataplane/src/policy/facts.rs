//! What a policy condition can see about one message, and its CEL form.
//!
//! Inputs (also listed in the README):
//! - `identity`: `sub`, `groups`, `agent`, `via` (`jwt`, `api_key`, `mtls`, `anonymous`),
//!   `authenticated`, `claims` (every claim of the token).
//! - `route`, `upstream`, `method` (JSON-RPC method; empty on plain HTTP routes), `http`
//!   (`method`, `path`).
//! - `tool`: `name` (empty when the message is not a tool call), `known` (the tool was seen in
//!   this session's `tools/list`), `annotations` (`readOnlyHint`, `destructiveHint`,
//!   `idempotentHint`, `openWorldHint`; the MCP defaults when the server gave none:
//!   not read-only, destructive, not idempotent, open world). Annotations come from the
//!   upstream server and are only as trustworthy as it is.
//! - `args`: the tool call's `arguments` (other requests: their `params`), as JSON.
//! - `request.findings`, `response.findings`: `count`, `kinds`, `categories`, `severities`,
//!   `rules` of what detection found in this message.
//! - `session`: `id`, `calls` (tool calls before this one), `findings` (kinds and categories
//!   seen earlier in the session, both directions).
//! - `time`: `hour`, `minute`, `weekday` (0 = Sunday), `day`, `month`, `year`, `date`
//!   (`YYYY-MM-DD`) in the policy's `timezone`; `now`: a CEL timestamp.

use super::{LimitKey, Policy};
use crate::detect::hook::Recorded;
use crate::hooks::Direction;
use crate::identity::Identity;
use cel::objects::{Key, Map};
use cel::{Context, Value};
use chrono::{Datelike, Timelike};
use simd_json::{BorrowedValue, StaticNode};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

/// Every input a condition may name.
pub const VARIABLES: &[&str] = &["identity", "route", "upstream", "method", "http", "tool", "args", "request", "response", "session", "time", "now"];

/// A tool's behaviour hints from `tools/list` (`None`: not given by the server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Annotations {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

impl Annotations {
    /// From a tool's `annotations` object.
    pub fn from_json(v: Option<&BorrowedValue<'_>>) -> Annotations {
        use simd_json::prelude::*;
        let get = |k: &str| v.and_then(|a| a.get(k)).and_then(|x| x.as_bool());
        Annotations { read_only: get("readOnlyHint"), destructive: get("destructiveHint"), idempotent: get("idempotentHint"), open_world: get("openWorldHint") }
    }
}

/// What the session did before this message.
#[derive(Debug, Clone, Default)]
pub struct SessionFacts {
    pub calls: u64,
    pub findings: u64,
    pub kinds: Vec<String>,
    pub categories: Vec<&'static str>,
}

/// Findings of one message and direction, as a condition sees them.
#[derive(Debug, Clone, Copy)]
pub struct FindingFacts<'a> {
    pub all: &'a [Recorded],
    pub direction: Direction,
}

impl FindingFacts<'_> {
    pub const NONE: FindingFacts<'static> = FindingFacts { all: &[], direction: Direction::Request };

    fn value(&self) -> Value {
        let mine = || self.all.iter().filter(|r| r.direction == self.direction);
        let mut kinds: Vec<Value> = Vec::new();
        let mut cats: Vec<Value> = Vec::new();
        let mut sevs: Vec<Value> = Vec::new();
        let mut rules: Vec<Value> = Vec::new();
        let mut count = 0i64;
        for r in mine() {
            count += 1;
            push_unique(&mut kinds, &r.kind);
            push_unique(&mut cats, r.category.as_str());
            push_unique(&mut sevs, r.severity.as_str());
            push_unique(&mut rules, &r.rule);
        }
        map([("count", Value::Int(count)), ("kinds", list(kinds)), ("categories", list(cats)), ("severities", list(sevs)), ("rules", list(rules))])
    }
}

fn push_unique(v: &mut Vec<Value>, s: &str) {
    if !v.iter().any(|x| matches!(x, Value::String(t) if t.as_str() == s)) {
        v.push(Value::String(Arc::new(s.to_owned())));
    }
}

/// Everything known about one message when the policy decides it.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub identity: Option<&'a Identity>,
    pub route: &'a str,
    pub upstream: &'a str,
    pub method: &'a str,
    pub http_method: &'a str,
    pub path: &'a str,
    pub tool: Option<&'a str>,
    /// `None`: the tool was not seen in a `tools/list` of this session.
    pub annotations: Option<Annotations>,
    pub args: Option<&'a BorrowedValue<'a>>,
    pub request: FindingFacts<'a>,
    pub response: FindingFacts<'a>,
    pub session_id: Option<&'a str>,
    pub session: Option<&'a SessionFacts>,
    pub now: SystemTime,
}

fn s(v: &str) -> Value {
    Value::String(Arc::new(v.to_owned()))
}

fn list(v: Vec<Value>) -> Value {
    Value::List(Arc::new(v))
}

fn map<const N: usize>(entries: [(&'static str, Value); N]) -> Value {
    let mut m: HashMap<Key, Value> = HashMap::with_capacity(N);
    for (k, v) in entries {
        m.insert(Key::from(k), v);
    }
    Value::Map(Map { map: Arc::new(m) })
}

/// A JSON value (simd-json) as a CEL value.
pub fn json_value(v: &BorrowedValue<'_>) -> Value {
    match v {
        BorrowedValue::Static(StaticNode::Null) => Value::Null,
        BorrowedValue::Static(StaticNode::Bool(b)) => Value::Bool(*b),
        BorrowedValue::Static(StaticNode::I64(i)) => Value::Int(*i),
        BorrowedValue::Static(StaticNode::U64(u)) => i64::try_from(*u).map_or(Value::UInt(*u), Value::Int),
        BorrowedValue::Static(StaticNode::F64(f)) => Value::Float(*f),
        BorrowedValue::String(t) => s(t),
        BorrowedValue::Array(a) => list(a.iter().map(json_value).collect()),
        BorrowedValue::Object(o) => {
            let m: HashMap<Key, Value> = o.iter().map(|(k, v)| (Key::from(k.to_string()), json_value(v))).collect();
            Value::Map(Map { map: Arc::new(m) })
        }
    }
}

/// A JSON value (serde) as a CEL value.
pub fn serde_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            n.as_i64().map(Value::Int).or_else(|| n.as_u64().map(Value::UInt)).unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0)))
        }
        serde_json::Value::String(t) => s(t),
        serde_json::Value::Array(a) => list(a.iter().map(serde_value).collect()),
        serde_json::Value::Object(o) => {
            let m: HashMap<Key, Value> = o.iter().map(|(k, v)| (Key::from(k.clone()), serde_value(v))).collect();
            Value::Map(Map { map: Arc::new(m) })
        }
    }
}

impl<'a> Facts<'a> {
    /// The facts of a message with nothing but its method (the rest empty).
    pub fn new(method: &'a str) -> Facts<'a> {
        Facts {
            identity: None,
            route: "",
            upstream: "",
            method,
            http_method: "POST",
            path: "",
            tool: None,
            annotations: None,
            args: None,
            request: FindingFacts::NONE,
            response: FindingFacts::NONE,
            session_id: None,
            session: None,
            now: SystemTime::now(),
        }
    }

    fn identity_value(&self) -> Value {
        match self.identity {
            Some(i) => map([
                ("sub", s(&i.subject)),
                ("groups", list(i.groups.iter().map(|g| s(g)).collect())),
                ("agent", s(i.agent_type.as_deref().unwrap_or(""))),
                ("via", s(i.via)),
                ("authenticated", Value::Bool(true)),
                ("claims", i.claims.as_deref().map_or_else(|| map([]), serde_value)),
            ]),
            None => map([
                ("sub", s("")),
                ("groups", list(Vec::new())),
                ("agent", s("")),
                ("via", s("anonymous")),
                ("authenticated", Value::Bool(false)),
                ("claims", map([])),
            ]),
        }
    }

    fn tool_value(&self) -> Value {
        let a = self.annotations.unwrap_or_default();
        map([
            ("name", s(self.tool.unwrap_or(""))),
            ("known", Value::Bool(self.annotations.is_some())),
            (
                "annotations",
                map([
                    ("readOnlyHint", Value::Bool(a.read_only.unwrap_or(false))),
                    ("destructiveHint", Value::Bool(a.destructive.unwrap_or(true))),
                    ("idempotentHint", Value::Bool(a.idempotent.unwrap_or(false))),
                    ("openWorldHint", Value::Bool(a.open_world.unwrap_or(true))),
                ]),
            ),
        ])
    }

    fn session_value(&self) -> Value {
        let empty = SessionFacts::default();
        let st = self.session.unwrap_or(&empty);
        let findings = map([
            ("count", Value::Int(i64::try_from(st.findings).unwrap_or(i64::MAX))),
            ("kinds", list(st.kinds.iter().map(|k| s(k)).collect())),
            ("categories", list(st.categories.iter().map(|c| s(c)).collect())),
        ]);
        map([("id", s(self.session_id.unwrap_or(""))), ("calls", Value::Int(i64::try_from(st.calls).unwrap_or(i64::MAX))), ("findings", findings)])
    }

    fn time_value(&self, p: &Policy) -> (Value, Value) {
        let utc: chrono::DateTime<chrono::Utc> = self.now.into();
        let t = utc.with_timezone(&p.zone);
        let time = map([
            ("hour", Value::Int(i64::from(t.hour()))),
            ("minute", Value::Int(i64::from(t.minute()))),
            ("weekday", Value::Int(i64::from(t.weekday().num_days_from_sunday()))),
            ("day", Value::Int(i64::from(t.day()))),
            ("month", Value::Int(i64::from(t.month()))),
            ("year", Value::Int(i64::from(t.year()))),
            ("date", s(&t.format("%Y-%m-%d").to_string())),
        ]);
        (time, Value::Timestamp(t.fixed_offset()))
    }

    /// The CEL context with the inputs this policy's conditions use.
    pub fn context(&self, p: &Policy) -> Context<'static, 'static> {
        let mut c = Context::default();
        let uses = |v: &str| p.vars.contains(&v);
        if uses("identity") {
            c.add_variable_from_value("identity", self.identity_value());
        }
        for (name, v) in [("route", self.route), ("upstream", self.upstream), ("method", self.method)] {
            if uses(name) {
                c.add_variable_from_value(name, s(v));
            }
        }
        if uses("http") {
            c.add_variable_from_value("http", map([("method", s(self.http_method)), ("path", s(self.path))]));
        }
        if uses("tool") {
            c.add_variable_from_value("tool", self.tool_value());
        }
        if uses("args") {
            c.add_variable_from_value("args", self.args.map_or_else(|| map([]), json_value));
        }
        if uses("request") {
            c.add_variable_from_value("request", map([("findings", self.request.value())]));
        }
        if uses("response") {
            c.add_variable_from_value("response", map([("findings", self.response.value())]));
        }
        if uses("session") {
            c.add_variable_from_value("session", self.session_value());
        }
        if uses("time") || uses("now") {
            let (time, now) = self.time_value(p);
            c.add_variable_from_value("time", time);
            c.add_variable_from_value("now", now);
        }
        c
    }

    /// The rate-limit bucket of this call for `key` (a hash of the chosen parts).
    pub fn limit_key(&self, key: LimitKey, hasher: &impl BuildHasher) -> u64 {
        let mut h = hasher.build_hasher();
        if key.identity {
            self.identity.map(|i| i.subject.as_str()).hash(&mut h);
        }
        if key.tool {
            self.tool.hash(&mut h);
        }
        if key.route {
            self.route.hash(&mut h);
        }
        if key.session {
            self.session_id.hash(&mut h);
        }
        h.finish()
    }
}
