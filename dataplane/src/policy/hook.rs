//! The policy on the request path: two hooks around detection.
//!
//! [`PolicyMasks`] runs before detection and tells it which extra kinds to mask in this
//! message (mask rules). [`PolicyHook`] runs after detection: it decides each request and
//! notification from the agent (with what detection found in it), filters `tools/list`
//! answers down to the tools the caller may call, decides answers with the response rules,
//! and keeps the session's policy state (calls so far, findings seen, tool annotations).

use super::{Annotations, Facts, FindingFacts, Outcome, Policy};
use crate::hooks::{Direction, MessageHook, RequestCtx, Verdict};
use crate::jsonrpc::{Code, Kind, MessageInfo};
use crate::session::Store;
use simd_json::prelude::*;
use simd_json::BorrowedValue;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

/// Most tools whose annotations a session remembers.
const MAX_TOOLS: usize = 1024;
/// Most distinct finding kinds a session remembers for `session.findings.kinds`.
const MAX_KINDS: usize = 64;

fn args<'v, 'a>(info: &MessageInfo, value: &'a BorrowedValue<'v>) -> Option<&'a BorrowedValue<'v>> {
    let params = value.get("params")?;
    if info.method.as_deref() == Some("tools/call") {
        params.get("arguments")
    } else {
        Some(params)
    }
}

/// The facts of one message. `session` is filled by the caller.
fn facts<'a>(ctx: &'a RequestCtx, dir: Direction, info: &'a MessageInfo, value: &'a BorrowedValue<'a>) -> Facts<'a> {
    // A plain HTTP document is the request's only message: what was found in its URL counts too.
    let from = if info.kind == crate::jsonrpc::Kind::Document && dir == Direction::Request { 0 } else { ctx.message_findings_from };
    let mine = &ctx.findings[from.min(ctx.findings.len())..];
    Facts {
        identity: ctx.identity.as_ref(),
        route: &ctx.route,
        upstream: &ctx.upstream,
        method: info.method.as_deref().unwrap_or(""),
        http_method: &ctx.http_method,
        path: &ctx.path,
        tool: info.tool.as_deref(),
        annotations: None,
        pin_changed: false,
        args: if dir == Direction::Request { args(info, value) } else { None },
        request: FindingFacts { all: if dir == Direction::Request { mine } else { &[] }, direction: Direction::Request },
        response: FindingFacts { all: if dir == Direction::Response { mine } else { &[] }, direction: Direction::Response },
        session_id: ctx.gateway_session_id.as_deref(),
        session: None,
        now: SystemTime::now(),
    }
}

/// Mask rules, before detection.
#[derive(Default)]
pub struct PolicyMasks {
    buf: RefCell<Vec<usize>>,
}

impl MessageHook for PolicyMasks {
    fn name(&self) -> &'static str {
        "policy-mask"
    }

    fn on_message(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, value: &mut BorrowedValue<'_>) -> Verdict {
        ctx.policy_masks.clear();
        let Some(p) = ctx.policy.clone() else {
            return Verdict::Pass;
        };
        if !p.has_mask_rules() {
            return Verdict::Pass;
        }
        let mut buf = self.buf.borrow_mut();
        p.masks(&facts(ctx, dir, info, value), dir == Direction::Response, &mut buf);
        std::mem::swap(&mut *buf, &mut ctx.policy_masks);
        Verdict::Pass
    }
}

/// Decisions, after detection.
pub struct PolicyHook {
    sessions: Arc<SessionsHandle>,
    /// Where decisions are counted (`sluice_policy_decisions_total`); none offline.
    metrics: Option<Arc<crate::metrics::WorkerMetrics>>,
}

/// Where the session store lives (the runtime's shared state, or a test's own store).
pub enum SessionsHandle {
    Runtime(Arc<crate::runtime::Shared>),
    /// A store of its own (policy cases: no approvals are waited for).
    Own(Arc<Store>),
    /// The stdio transport: the process's sessions, and no approvals (nobody can review a
    /// call held in a local process; such calls are refused, saying why).
    Stdio(Arc<crate::runtime::Shared>),
}

impl SessionsHandle {
    fn store(&self) -> &Store {
        match self {
            SessionsHandle::Runtime(s) | SessionsHandle::Stdio(s) => &s.sessions,
            SessionsHandle::Own(s) => s,
        }
    }

    /// The tool pins, where there are any (not for offline decisions).
    fn pins(&self) -> Option<&crate::pins::Store> {
        match self {
            SessionsHandle::Runtime(s) | SessionsHandle::Stdio(s) => Some(&s.pins),
            SessionsHandle::Own(_) => None,
        }
    }

    /// The approval store, or why calls cannot be held here.
    fn approvals(&self) -> Result<&crate::approvals::Store, &'static str> {
        match self {
            SessionsHandle::Runtime(s) => Ok(&s.approvals),
            SessionsHandle::Own(_) => Err("approvals are not available here"),
            SessionsHandle::Stdio(_) => Err("approvals are not available over the stdio transport (no reviewer can reach a local process); run this server behind `sluice run` to have calls approved"),
        }
    }
}

impl PolicyHook {
    pub fn new(sessions: SessionsHandle) -> Self {
        PolicyHook { sessions: Arc::new(sessions), metrics: None }
    }

    /// Count decisions in this worker's metrics.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::WorkerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, ctx: &RequestCtx, direction: &'static str, d: &super::Decision) {
        if let Some(m) = &self.metrics {
            m.decision(&ctx.route, direction, d.outcome.name(), d.rule.as_deref().unwrap_or("default"));
        }
    }

    /// The session's policy state (copied only when some condition reads `session`) and the
    /// tool's annotations.
    fn session_state(&self, p: &Policy, ctx: &RequestCtx, tool: Option<&str>) -> (Option<super::SessionFacts>, Option<Annotations>) {
        let Some(sid) = ctx.mcp_session_id.as_deref() else {
            return (None, None);
        };
        let copy = p.reads("session");
        self.sessions.store().with(sid, |s| (copy.then(|| s.policy.clone()), tool.and_then(|t| s.tools.get(t).copied()))).unwrap_or((None, None))
    }

    /// Remember what this message adds to the session's policy state.
    fn update_session(&self, ctx: &RequestCtx, call: bool) {
        let Some(sid) = ctx.mcp_session_id.as_deref() else {
            return;
        };
        let mine = &ctx.findings[ctx.message_findings_from.min(ctx.findings.len())..];
        if !call && mine.is_empty() {
            return;
        }
        self.sessions.store().with(sid, |s| {
            let st = &mut s.policy;
            st.calls += u64::from(call);
            for r in mine {
                st.findings += 1;
                if st.kinds.len() < MAX_KINDS && !st.kinds.iter().any(|k| *k == r.kind) {
                    st.kinds.push(r.kind.clone());
                }
                if !st.categories.contains(&r.category.as_str()) {
                    st.categories.push(r.category.as_str());
                }
            }
        });
    }

    fn request(&self, p: &Policy, ctx: &mut RequestCtx, info: &MessageInfo, value: &BorrowedValue<'_>) -> Verdict {
        let (session, annotations) = self.session_state(p, ctx, info.tool.as_deref());
        let decision = {
            let mut f = facts(ctx, Direction::Request, info, value);
            f.session = session.as_ref();
            f.annotations = annotations;
            f.pin_changed = info.tool.as_deref().is_some_and(|t| self.sessions.pins().is_some_and(|pins| pins.is_changed(&ctx.upstream, t)));
            p.decide(&f, None)
        };
        self.update_session(ctx, info.method.as_deref() == Some("tools/call"));
        let verdict = match &decision.outcome {
            Outcome::RequireApproval { approvers, timeout } => self.approval(ctx, info, value, approvers, *timeout, decision.rule.as_deref().unwrap_or("")),
            _ => refusal(p, &decision),
        };
        tracing::debug!(route = %ctx.route, method = info.method.as_deref().unwrap_or(""), tool = info.tool.as_deref().unwrap_or(""), decision = %decision.label(), "policy");
        self.count(ctx, "request", &decision);
        ctx.decision = Some(decision);
        verdict
    }

    /// A request the upstream sends the agent (sampling, elicitation, roots), decided by the
    /// `from = "server"` rules; a refusal goes back to the server as the answer to it.
    fn server_request(&self, p: &Policy, ctx: &mut RequestCtx, info: &MessageInfo, value: &BorrowedValue<'_>) -> Verdict {
        let (session, _) = self.session_state(p, ctx, None);
        let decision = {
            let mut f = facts(ctx, Direction::Request, info, value);
            // Its own findings (detected on the way to the agent) are what `request.findings` reads.
            f.request.direction = Direction::Response;
            f.session = session.as_ref();
            p.decide_server(&f, None)
        };
        let Some(decision) = decision else { return Verdict::Pass };
        // SDKs surface only the error's message to the server's code: it carries the reason.
        let verdict = match refusal(p, &decision) {
            Verdict::Refuse { code, message, reason } => Verdict::Refuse { code, message: format!("{message}: {reason}"), reason },
            v => v,
        };
        tracing::debug!(route = %ctx.route, method = info.method.as_deref().unwrap_or(""), decision = %decision.label(), "policy: server request");
        self.count(ctx, "response", &decision);
        ctx.decision = Some(decision);
        verdict
    }
}

impl PolicyHook {
    /// MCP 2026-07-28 (multi-round-trip requests): a server no longer sends the agent requests
    /// of its own; it answers a call with `resultType: "input_required"` and the sampling,
    /// elicitation or roots requests it needs answered first (`inputRequests`), and the agent
    /// calls again with the answers. Each is decided by the `from = "server"` rules as one sent
    /// on its own is, with the call's tool as `tool.name`; the first refused withholds the
    /// whole answer (the agent cannot answer part of it) and the agent's call fails with the
    /// reason. `None`: nothing refused.
    fn input_requests(&self, p: &Policy, ctx: &mut RequestCtx, info: &MessageInfo, value: &BorrowedValue<'_>) -> Option<Verdict> {
        let result = value.get("result")?;
        if result.get("resultType").and_then(|t| t.as_str()) != Some("input_required") {
            return None;
        }
        let asks = result.get("inputRequests")?.as_object()?;
        let (session, _) = self.session_state(p, ctx, None);
        for (key, asked) in asks.iter() {
            let Some(method) = asked.get("method").and_then(|m| m.as_str()) else { continue };
            let as_request = MessageInfo { kind: Kind::Request, method: Some(method.to_owned()), tool: info.tool.clone(), ..MessageInfo::document() };
            let decision = {
                let mut f = facts(ctx, Direction::Request, &as_request, asked);
                f.request.direction = Direction::Response;
                f.session = session.as_ref();
                p.decide_server(&f, None)
            };
            let Some(decision) = decision else { continue };
            self.count(ctx, "response", &decision);
            tracing::debug!(route = %ctx.route, method, input = %key, decision = %decision.label(), "policy: input request");
            if let Verdict::Refuse { code, message, reason } = refusal(p, &decision) {
                let reason = format!("the server answered with a request for {method} (input request \"{key}\"), which policy refuses: {reason}");
                ctx.decided_input = Some(method.to_owned());
                ctx.decision = Some(decision);
                return Some(Verdict::Refuse { code, message: format!("{message}: {reason}"), reason });
            }
        }
        None
    }
}

/// The verdict of a decision that needs no waiting: pass, or the refusal with its reason.
fn refusal(p: &Policy, decision: &super::Decision) -> Verdict {
    match &decision.outcome {
            Outcome::Allow | Outcome::RequireApproval { .. } => Verdict::Pass,
            Outcome::Deny { reason } => Verdict::Refuse { code: Code::PolicyDenied, message: "denied by policy".into(), reason: reason.clone() },
            Outcome::RateLimited { retry_after } => {
                let text = decision.rule.as_deref().and_then(|id| p.rules.iter().find(|r| r.id == id)).map_or(String::new(), |r| match &r.action {
                    super::Action::RateLimit { text, .. } => format!(" (allowed: {text})"),
                    _ => String::new(),
                });
                Verdict::Refuse {
                    code: Code::RateLimited,
                    message: "rate limited".into(),
                    reason: format!(
                        "too many calls: policy rule \"{}\" limits them{text}; retry in {:.1} s",
                        decision.rule.as_deref().unwrap_or(""),
                        retry_after.as_secs_f64().max(0.1)
                    ),
                }
            }
    }
}

impl PolicyHook {

    /// A call that needs a human: hold it (the exchange waits), or let it through when this
    /// exact call was approved and not used yet.
    fn approval(&self, ctx: &mut RequestCtx, info: &MessageInfo, value: &BorrowedValue<'_>, approvers: &[String], timeout: std::time::Duration, rule: &str) -> Verdict {
        let refuse = |reason: String| Verdict::Refuse { code: Code::ApprovalRequired, message: "approval required".into(), reason };
        let who = approvers.join(" or ");
        if ctx.in_batch || info.kind != Kind::Request {
            return refuse(format!("this call needs the approval of a member of {who} (policy rule \"{rule}\"); send it on its own, not in a batch, so it can wait for the decision"));
        }
        let Some(identity) = ctx.identity.as_ref() else {
            return refuse(format!("this call needs the approval of a member of {who} (policy rule \"{rule}\"), and approvals need an authenticated caller"));
        };
        let store = match self.sessions.approvals() {
            Ok(store) => store,
            Err(why) => return refuse(format!("this call needs the approval of a member of {who} (policy rule \"{rule}\"), and {why}")),
        };
        // Bound to the exact arguments as they will be forwarded (after masking).
        let exact = args(info, value);
        let mut canon = Vec::new();
        if let Some(a) = exact {
            crate::events::record::canonical(a, &mut canon);
        }
        let digest = blake3::hash(&canon).to_hex().to_string();
        // Reviewers see what the record keeps: masked.
        let shown: serde_json::Value = match ctx.record_payload.as_deref() {
            Some(masked) => serde_json::from_str::<serde_json::Value>(masked).ok().and_then(|p| if info.method.as_deref() == Some("tools/call") { p.get("arguments").cloned() } else { Some(p) }).unwrap_or_default(),
            None => exact.and_then(|a| serde_json::to_value(a).ok()).unwrap_or_default(),
        };
        let ask = store.ask(crate::approvals::Request {
            subject: &identity.subject,
            agent_groups: &identity.groups,
            session: ctx.gateway_session_id.as_deref(),
            route: &ctx.route,
            tool: info.tool.as_deref().unwrap_or(""),
            method: info.method.as_deref().unwrap_or(""),
            arguments: shown,
            args_digest: digest,
            approvers,
            rule,
            timeout,
        });
        match ask {
            crate::approvals::Ask::Approved { id, by } => {
                tracing::info!(approval = %id, by = %by, "an approved call goes through");
                Verdict::Pass
            }
            crate::approvals::Ask::Wait { entry, created } => {
                let progress_token = value.get("params").and_then(|p| p.get("_meta")).and_then(|m| m.get("progressToken")).and_then(|t| simd_json::to_string(t).ok());
                ctx.hold = Some(crate::approvals::wait::Hold { entry, created, rpc_id: info.id.clone(), progress_token });
                Verdict::Pass
            }
        }
    }

    /// Keep only the tools this caller may call; remember their annotations for the session.
    fn tools_list(&self, p: &Policy, ctx: &mut RequestCtx, info: &MessageInfo, value: &mut BorrowedValue<'_>) -> bool {
        let (session, _) = self.session_state(p, ctx, None);
        let Some(BorrowedValue::Array(tools)) = value.get_mut("result").and_then(|r| r.get_mut("tools")) else {
            return false;
        };
        let before = tools.len();
        let mut seen: Vec<(String, Annotations)> = Vec::with_capacity(tools.len());
        tools.retain(|t| {
            let Some(name) = t.get("name").and_then(|n| n.as_str()) else {
                return false;
            };
            let a = Annotations::from_json(t.get("annotations"));
            seen.push((name.to_owned(), a));
            let mut f = Facts::new("tools/call");
            f.identity = ctx.identity.as_ref();
            f.route = &ctx.route;
            f.upstream = &ctx.upstream;
            f.http_method = &ctx.http_method;
            f.path = &ctx.path;
            f.tool = Some(name);
            f.annotations = Some(a);
            f.session_id = ctx.gateway_session_id.as_deref();
            f.session = session.as_ref();
            p.lists(&f, None)
        });
        let hidden = before - tools.len();
        if let Some(sid) = ctx.mcp_session_id.as_deref() {
            self.sessions.store().with(sid, |s| {
                for (name, a) in seen {
                    if s.tools.len() < MAX_TOOLS || s.tools.contains_key(&name) {
                        s.tools.insert(name, a);
                    }
                }
            });
        }
        if hidden > 0 {
            tracing::debug!(route = %ctx.route, id = info.id.as_deref().unwrap_or(""), hidden, "policy: tools hidden from tools/list");
        }
        hidden > 0
    }
}

impl MessageHook for PolicyHook {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn on_message(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, value: &mut BorrowedValue<'_>) -> Verdict {
        let Some(p) = ctx.policy.clone() else {
            return Verdict::Pass;
        };
        match (dir, info.kind) {
            (Direction::Request, Kind::Request | Kind::Notification | Kind::Document) => self.request(&p, ctx, info, value),
            (Direction::Response, Kind::Response | Kind::Error | Kind::Document) => {
                let mut changed = false;
                if info.kind == Kind::Response && info.method.as_deref() == Some("tools/list") {
                    changed = self.tools_list(&p, ctx, info, value);
                }
                if info.kind == Kind::Response && p.has_server_rules() {
                    if let Some(refused) = self.input_requests(&p, ctx, info, value) {
                        return refused;
                    }
                }
                let mut verdict = if changed { Verdict::Changed } else { Verdict::Pass };
                if p.has_response_rules() {
                    let (session, annotations) = self.session_state(&p, ctx, info.tool.as_deref());
                    let decision = {
                        let mut f = facts(ctx, Direction::Response, info, value);
                        f.session = session.as_ref();
                        f.annotations = annotations;
                        p.decide_response(&f, None)
                    };
                    if let Some(d) = decision {
                        if let Outcome::Deny { reason } = &d.outcome {
                            verdict = Verdict::Refuse { code: Code::PolicyDenied, message: "answer withheld by policy".into(), reason: reason.clone() };
                        }
                        self.count(ctx, "response", &d);
                        ctx.decision = Some(d);
                    }
                }
                self.update_session(ctx, false);
                verdict
            }
            // Server → agent requests (sampling, elicitation, roots): the `from = "server"` rules.
            (Direction::Response, Kind::Request) => self.server_request(&p, ctx, info, value),
            // The agent's answers to them: detection and mask rules apply, decisions do not.
            _ => Verdict::Pass,
        }
    }
}
