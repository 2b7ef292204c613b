//! Policy cases as data: a file of messages and the decisions a policy must give them, run
//! through the same hooks as live traffic (mask rules, detection with the shipped or
//! configured rule packs, decisions, `tools/list` filtering). `sluice policy test FILE…` runs
//! them; the repository's own cases run in `cargo test`.
//!
//! ```toml
//! policy = "policy.toml"          # relative to this file; or `config = "sluice.toml"`
//!
//! [[case]]
//! name = "engineers may add"
//! identity = { sub = "alice", groups = ["eng"] }     # omit for an anonymous caller
//! tools = [{ name = "add", annotations = { readOnlyHint = true } }]  # a tools/list seen earlier
//! session = { calls = 3, kinds = ["email"], categories = ["pii"] }  # the session so far
//! message = '[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}, …]'
//! expect = ["allow by eng-tools", "deny by default"]  # one per request/notification
//! tasks = { "t-1" = "search" }                        # optional: tasks the session's calls made
//! response = '{"jsonrpc":"2.0","id":1,"result":{…}}'  # optional: the upstream's answer, or a request
//!                                                      # it sends the agent (decided by from = "server" rules)
//! expect_response = "deny by no-keys-out"             # or "pass"
//! expect_tools = ["add"]                              # for a tools/list answer: what is left
//! ```

use super::{Annotations, SessionFacts};
use crate::config::{self, Config};
use crate::hooks::{self, Chain, Direction, Observer, RequestCtx, Verdict};
use crate::identity::Identity;
use crate::jsonrpc::{self, Kind, MessageInfo};
use crate::session::{Session, Store};
use serde::Deserialize;
use simd_json::BorrowedValue;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policy: Option<PathBuf>,
    config: Option<PathBuf>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    identity: Option<CaseIdentity>,
    #[serde(default = "default_route")]
    route: String,
    /// The upstream's name (`upstream` in conditions); default "cases".
    #[serde(default = "default_upstream")]
    upstream: String,
    #[serde(default)]
    tools: Vec<CaseTool>,
    /// Tasks the session's calls made: task id → tool (`tasks/*` follow-ups are that tool's).
    #[serde(default)]
    tasks: std::collections::HashMap<String, String>,
    session: Option<CaseSession>,
    message: String,
    #[serde(default)]
    expect: Vec<String>,
    response: Option<String>,
    expect_response: Option<String>,
    expect_tools: Option<Vec<String>>,
}

fn default_route() -> String {
    "mcp".into()
}

fn default_upstream() -> String {
    "cases".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseIdentity {
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub agent: Option<String>,
    #[serde(default = "default_via")]
    pub via: String,
    pub claims: Option<serde_json::Value>,
}

fn default_via() -> String {
    "jwt".into()
}

impl CaseIdentity {
    pub fn identity(&self) -> Identity {
        let via: &'static str = match self.via.as_str() {
            "api_key" => "api_key",
            "mtls" => "mtls",
            _ => "jwt",
        };
        Identity { subject: self.sub.clone(), groups: self.groups.clone(), agent_type: self.agent.clone(), via, claims: self.claims.clone().map(Arc::new) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseTool {
    name: String,
    #[serde(default)]
    annotations: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSession {
    #[serde(default)]
    calls: u64,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
}

/// One case that did not come out as expected.
#[derive(Debug)]
pub struct Failure {
    pub case: String,
    pub problem: String,
}

/// What a case file run found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failures: Vec<Failure>,
}

/// Decisions seen by the observer: (direction, message kind, decision label or "pass").
type Seen = Rc<RefCell<Vec<(Direction, Kind, String)>>>;

struct Collect(Seen);

impl Observer for Collect {
    fn observed(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, _: &BorrowedValue<'_>, verdict: &Verdict, _: usize) {
        let label = match (&ctx.decision, verdict) {
            (Some(d), _) => d.label(),
            (None, Verdict::Refuse { .. }) => "refuse by detect".into(),
            (None, _) => "pass".into(),
        };
        self.0.borrow_mut().push((dir, info.kind, label));
    }
}

fn load_config(file: &File, base: &Path) -> Result<Config, String> {
    if let Some(c) = &file.config {
        return config::load(&base.join(c)).map_err(|e| e.to_string());
    }
    let Some(p) = &file.policy else {
        return Err("name the policy to test: policy = \"policy.toml\" (or config = \"sluice.toml\")".into());
    };
    let policy = base.join(p);
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:9\"\n[[upstream]]\nname = \"cases\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\npath = \"/mcp\"\nupstream = \"cases\"\n[identity]\n[identity.mtls]\n[policy]\nfile = {}\n",
        toml::Value::String(policy.display().to_string())
    );
    let f: config::schema::File = toml::from_str(&text).map_err(|e| e.to_string())?;
    config::from_schema(&f).map_err(|e| e.to_string())
}

/// Run one case file.
pub fn run(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let cfg = load_config(&file, base).map_err(|e| format!("{}: {e}", path.display()))?;
    if cfg.policy.is_none() {
        return Err(format!("{}: the configuration has no [policy]", path.display()));
    }
    let store = Arc::new(Store::default());
    let seen: Seen = Rc::default();
    let hook = super::hook::PolicyHook::new(super::hook::SessionsHandle::Own(store.clone()));
    let metrics = Arc::new(crate::metrics::WorkerMetrics::default());
    let chain = Chain::new(vec![Box::new(super::hook::PolicyMasks::default()), Box::new(crate::detect::hook::DetectHook::new(metrics)), Box::new(hook)])
        .with_observer(Box::new(Collect(seen.clone())));
    let mut report = Report::default();
    for (n, case) in file.cases.iter().enumerate() {
        let sid = format!("case-{n}");
        match run_case(&cfg, &chain, &store, &seen, case, &sid) {
            Ok(()) => report.passed += 1,
            Err(problem) => report.failures.push(Failure { case: case.name.clone(), problem }),
        }
    }
    Ok(report)
}

fn ctx_for(cfg: &Config, case: &Case, sid: &str) -> RequestCtx {
    let mut ctx = RequestCtx::offline(&case.route, cfg.detect.clone(), cfg.policy.clone(), case.identity.as_ref().map(CaseIdentity::identity));
    ctx.upstream = case.upstream.clone();
    ctx.path = "/mcp".into();
    ctx.mcp_session_id = Some(sid.to_owned());
    ctx.gateway_session_id = Some(sid.to_owned());
    ctx
}

fn run_case(cfg: &Config, chain: &Chain, store: &Store, seen: &Seen, case: &Case, sid: &str) -> Result<(), String> {
    let mut s = Session::new(sid, &case.route);
    for t in &case.tools {
        let mut buf = serde_json::to_vec(&t.annotations).map_err(|e| e.to_string())?;
        let v = simd_json::to_borrowed_value(&mut buf).map_err(|e| format!("tools[{}].annotations: {e}", t.name))?;
        s.tools.insert(t.name.clone(), Annotations::from_json(Some(&v)));
    }
    if let Some(cs) = &case.session {
        let categories = cs.categories.iter().filter_map(|c| ["pii", "secret", "injection", "poisoning"].into_iter().find(|k| k == c)).collect();
        s.policy = SessionFacts { calls: cs.calls, findings: cs.kinds.len() as u64, kinds: cs.kinds.clone(), categories };
    }
    for (task, tool) in &case.tasks {
        s.remember_task(task, tool);
    }
    store.insert(s, usize::MAX);
    let mut ctx = ctx_for(cfg, case, sid);

    seen.borrow_mut().clear();
    let mut buf = case.message.clone().into_bytes();
    let mut body = jsonrpc::parse(&mut buf).map_err(|e| format!("message: {e}"))?;
    // As on the live path (`exchange::observe`): a task's follow-up is the tool's that made it.
    for info in body.infos.iter_mut() {
        if let (None, Some(task)) = (&info.tool, info.followed_task()) {
            info.tool = store.with(sid, |s| s.tasks.get(task).cloned()).flatten();
        }
    }
    let infos = body.infos.clone();
    hooks::process_body(chain, &mut ctx, Direction::Request, &mut body);
    let got: Vec<String> = seen
        .borrow()
        .iter()
        .filter(|(d, k, _)| *d == Direction::Request && matches!(k, Kind::Request | Kind::Notification))
        .map(|(_, _, l)| l.clone())
        .collect();
    if got != case.expect {
        return Err(format!("request decisions: expected {:?}, got {:?}", case.expect, got));
    }
    if let Some(resp) = &case.response {
        seen.borrow_mut().clear();
        let mut rbuf = resp.clone().into_bytes();
        let mut rbody = jsonrpc::parse(&mut rbuf).map_err(|e| format!("response: {e}"))?;
        // An answer carries the method and tool of the request it answers.
        for info in rbody.infos.iter_mut() {
            if let Some(q) = infos.iter().find(|q| q.id.is_some() && q.id == info.id) {
                info.method = q.method.clone();
                info.tool = q.tool.clone();
            }
        }
        let out = hooks::process_body(chain, &mut ctx, Direction::Response, &mut rbody);
        let label = seen.borrow().first().map(|(_, _, l)| l.clone()).unwrap_or_else(|| "pass".into());
        if let Some(want) = &case.expect_response {
            if &label != want {
                return Err(format!("response decision: expected {want:?}, got {label:?}"));
            }
        }
        if let Some(want) = &case.expect_tools {
            let text = match &out {
                hooks::Outcome::Unchanged => resp.clone().into_bytes(),
                hooks::Outcome::Rewritten { body, .. } | hooks::Outcome::Answer(body) => body.clone(),
            };
            let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format!("forwarded answer is not JSON: {e}"))?;
            let names: Vec<String> =
                v["result"]["tools"].as_array().map(|a| a.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
            if &names != want {
                return Err(format!("tools/list: expected {want:?} to be listed, got {names:?}"));
            }
        }
    }
    Ok(())
}
