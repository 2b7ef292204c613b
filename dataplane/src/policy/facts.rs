//! What a policy condition can see about one message, and its CEL form.
//!
//! Inputs (also listed in the README):
//! - `identity`: `sub`, `groups`, `agent`, `via` (`jwt`, `api_key`, `mtls`, `os_user`, `anonymous`),
//!   `authenticated`, `claims` (every claim of the token).
//! - `route`, `upstream`, `method` (JSON-RPC method; empty on plain HTTP routes), `http`
//!   (`method`, `path`).
//! - `tool`: `name` (empty when the message is not a tool call), `known` (the tool was seen in
//!   this session's `tools/list`), `annotations` (`readOnlyHint`, `destructiveHint`,
//!   `idempotentHint`, `openWorldHint`; the MCP defaults when the server gave none:
//!   not read-only, destructive, not idempotent, open world). Annotations come from the
//!   upstream server and are only as trustworthy as it is. `pin_changed`: the tool's
//!   definition changed since the gateway pinned it and no one accepted the change (with
//!   `pins.on_change = "log"`, a rule can hold such calls for approval instead of blocking).
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
use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelUInt};
use cel::common::value::Val;
use cel::Context;
use chrono::{Datelike, Timelike};
use simd_json::{BorrowedValue, StaticNode};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::SystemTime;

/// Every input a condition may name.
pub const VARIABLES: &[&str] = &["identity", "route", "upstream", "method", "http", "tool", "args", "request", "response", "session", "time", "now"];

/// The CEL context of one message, filled as rules need inputs.
pub struct Lazy<'f, 'a> {
    facts: &'f Facts<'a>,
    zone: chrono_tz::Tz,
    built: u16,
    ctx: Context<'static, 'static>,
}

impl Lazy<'_, '_> {
    /// The context with every input in `vars` (a bit per [`VARIABLES`] entry).
    pub fn for_rule(&mut self, vars: u16) -> &Context<'static, 'static> {
        let missing = vars & !self.built;
        if missing != 0 {
            for (i, name) in VARIABLES.iter().enumerate() {
                if missing & (1 << i) != 0 {
                    self.facts.add(self.zone, &mut self.ctx, name);
                }
            }
            self.built |= missing;
        }
        &self.ctx
    }
}

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

    fn value(&self) -> V {
        let mut kinds: Vec<&str> = Vec::new();
        let mut cats: Vec<&str> = Vec::new();
        let mut sevs: Vec<&str> = Vec::new();
        let mut rules: Vec<&str> = Vec::new();
        let mut count = 0i64;
        for r in self.all.iter().filter(|r| r.direction == self.direction) {
            count += 1;
            for (set, v) in [(&mut kinds, r.kind.as_str()), (&mut cats, r.category.as_str()), (&mut sevs, r.severity.as_str()), (&mut rules, r.rule.as_str())] {
                if !set.contains(&v) {
                    set.push(v);
                }
            }
        }
        map([("count", int(count)), ("kinds", strs(&kinds)), ("categories", strs(&cats)), ("severities", strs(&sevs)), ("rules", strs(&rules))])
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
    /// The tool's definition changed since it was pinned, not accepted (`crate::pins`).
    pub pin_changed: bool,
    pub args: Option<&'a BorrowedValue<'a>>,
    pub request: FindingFacts<'a>,
    pub response: FindingFacts<'a>,
    pub session_id: Option<&'a str>,
    pub session: Option<&'a SessionFacts>,
    pub now: SystemTime,
}

/// A CEL value, built directly in the interpreter's own representation (building a `Value`
/// and converting it deep-copies every map and list once more).
type V = Box<dyn Val>;

fn s(v: &str) -> V {
    Box::new(CelString::from(v.to_owned()))
}

fn int(i: i64) -> V {
    Box::new(CelInt::from(i))
}

fn boolean(b: bool) -> V {
    Box::new(CelBool::from(b))
}

fn list(v: Vec<V>) -> V {
    Box::new(CelList::from(v))
}

fn strs<T: AsRef<str>>(v: &[T]) -> V {
    list(v.iter().map(|x| s(x.as_ref())).collect())
}

fn map<const N: usize>(entries: [(&'static str, V); N]) -> V {
    let mut m: HashMap<CelMapKey<'static>, V> = HashMap::with_capacity(N);
    for (k, v) in entries {
        m.insert(CelMapKey::from(k.to_owned()), v);
    }
    Box::new(CelMap::from(m))
}

/// A JSON value (simd-json) as a CEL value.
pub fn json_value(v: &BorrowedValue<'_>) -> V {
    match v {
        BorrowedValue::Static(StaticNode::Null) => Box::new(CelNull),
        BorrowedValue::Static(StaticNode::Bool(b)) => boolean(*b),
        BorrowedValue::Static(StaticNode::I64(i)) => int(*i),
        BorrowedValue::Static(StaticNode::U64(u)) => i64::try_from(*u).map_or_else(|_| Box::new(CelUInt::from(*u)) as V, int),
        BorrowedValue::Static(StaticNode::F64(f)) => Box::new(CelDouble::from(*f)),
        BorrowedValue::String(t) => s(t),
        BorrowedValue::Array(a) => list(a.iter().map(json_value).collect()),
        BorrowedValue::Object(o) => {
            let m: HashMap<CelMapKey<'static>, V> = o.iter().map(|(k, v)| (CelMapKey::from(k.to_string()), json_value(v))).collect();
            Box::new(CelMap::from(m))
        }
    }
}

/// A JSON value (serde) as a CEL value.
pub fn serde_value(v: &serde_json::Value) -> V {
    match v {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => boolean(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => int(i),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(0.0))),
        },
        serde_json::Value::String(t) => s(t),
        serde_json::Value::Array(a) => list(a.iter().map(serde_value).collect()),
        serde_json::Value::Object(o) => {
            let m: HashMap<CelMapKey<'static>, V> = o.iter().map(|(k, v)| (CelMapKey::from(k.clone()), serde_value(v))).collect();
            Box::new(CelMap::from(m))
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
            pin_changed: false,
            args: None,
            request: FindingFacts::NONE,
            response: FindingFacts::NONE,
            session_id: None,
            session: None,
            now: SystemTime::now(),
        }
    }

    fn identity_value(&self) -> V {
        match self.identity {
            Some(i) => map([
                ("sub", s(&i.subject)),
                ("groups", strs(&i.groups)),
                ("agent", s(i.agent_type.as_deref().unwrap_or(""))),
                ("via", s(i.via)),
                ("authenticated", boolean(true)),
                ("claims", i.claims.as_deref().map_or_else(|| map([]), serde_value)),
            ]),
            None => map([
                ("sub", s("")),
                ("groups", list(Vec::new())),
                ("agent", s("")),
                ("via", s("anonymous")),
                ("authenticated", boolean(false)),
                ("claims", map([])),
            ]),
        }
    }

    fn tool_value(&self) -> V {
        let a = self.annotations.unwrap_or_default();
        map([
            ("name", s(self.tool.unwrap_or(""))),
            ("known", boolean(self.annotations.is_some())),
            ("pin_changed", boolean(self.pin_changed)),
            (
                "annotations",
                map([
                    ("readOnlyHint", boolean(a.read_only.unwrap_or(false))),
                    ("destructiveHint", boolean(a.destructive.unwrap_or(true))),
                    ("idempotentHint", boolean(a.idempotent.unwrap_or(false))),
                    ("openWorldHint", boolean(a.open_world.unwrap_or(true))),
                ]),
            ),
        ])
    }

    fn session_value(&self) -> V {
        let empty = SessionFacts::default();
        let st = self.session.unwrap_or(&empty);
        let findings = map([
            ("count", int(i64::try_from(st.findings).unwrap_or(i64::MAX))),
            ("kinds", strs(&st.kinds)),
            ("categories", strs(&st.categories)),
        ]);
        map([("id", s(self.session_id.unwrap_or(""))), ("calls", int(i64::try_from(st.calls).unwrap_or(i64::MAX))), ("findings", findings)])
    }

    fn time_value(&self, zone: chrono_tz::Tz) -> (V, V) {
        let utc: chrono::DateTime<chrono::Utc> = self.now.into();
        let t = utc.with_timezone(&zone);
        let time = map([
            ("hour", int(i64::from(t.hour()))),
            ("minute", int(i64::from(t.minute()))),
            ("weekday", int(i64::from(t.weekday().num_days_from_sunday()))),
            ("day", int(i64::from(t.day()))),
            ("month", int(i64::from(t.month()))),
            ("year", int(i64::from(t.year()))),
            ("date", s(&t.format("%Y-%m-%d").to_string())),
        ]);
        (time, Box::new(CelTimestamp::from(t.fixed_offset())))
    }

    /// A CEL context that gets each input the first time a rule reads it.
    pub fn context<'f>(&'f self, p: &Policy) -> Lazy<'f, 'a> {
        Lazy { facts: self, zone: p.zone, built: 0, ctx: Context::with_env(p.env.clone()) }
    }

    fn add(&self, zone: chrono_tz::Tz, c: &mut Context<'static, 'static>, var: &str) {
        let v = match var {
            "identity" => self.identity_value(),
            "route" => s(self.route),
            "upstream" => s(self.upstream),
            "method" => s(self.method),
            "http" => map([("method", s(self.http_method)), ("path", s(self.path))]),
            "tool" => self.tool_value(),
            "args" => self.args.map_or_else(|| map([]), json_value),
            "request" => map([("findings", self.request.value())]),
            "response" => map([("findings", self.response.value())]),
            "session" => self.session_value(),
            "time" => self.time_value(zone).0,
            "now" => self.time_value(zone).1,
            _ => return,
        };
        c.add_variable_as_val(var, v);
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
