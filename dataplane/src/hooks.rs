//! The message hooks: where later stages (identity, policy, detection and masking, approvals,
//! recording) plug into the request path without rewriting it.
//!
//! Every JSON-RPC message in either direction (each element of a batch, each SSE event) and
//! every JSON document on a plain HTTP route passes the hook chain in order. A hook may let
//! the message through, change it in place (the forwarded bytes are then re-encoded and
//! re-framed), or answer it with an error in place of the upstream. This module is sans-io:
//! [`process_body`] turns a body and a chain into what to forward and what to answer.

use crate::jsonrpc::{self, Code, Kind, MessageInfo};
use simd_json::BorrowedValue;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Agent → upstream.
    Request,
    /// Upstream → agent.
    Response,
}

/// Per-request context, created when a request head is parsed and handed to every phase.
#[derive(Debug)]
pub struct RequestCtx {
    pub worker: usize,
    pub route: std::sync::Arc<str>,
    pub upstream: String,
    pub client: SocketAddr,
    pub http_method: String,
    pub path: String,
    pub mcp_session_id: Option<String>,
    /// The session is the gateway's own for a caller's stateless requests (MCP 2026-07-28):
    /// no upstream session id to record, request ids not unique across it.
    pub stateless: bool,
    pub gateway_session_id: Option<String>,
    pub protocol_version: Option<String>,
    pub started: Instant,
    /// Messages refused by a hook in this exchange.
    pub refused: u32,
    /// Content inspection in force for this request (from the config it started with).
    pub detect: Option<std::sync::Arc<crate::config::detect::DetectCfg>>,
    /// What inspection found in this exchange, both directions (for policy and recording).
    pub findings: Vec<crate::detect::hook::Recorded>,
    /// Tail of the last scanned text of the previous response message (SSE event), so a value
    /// split across two events is found.
    pub carry: String,
    /// Set by a hook that forwards findings unmasked (action `log`): the message's recorded
    /// part with everything masked, for the session record. Taken by the observer.
    pub record_payload: Option<String>,
    /// Path and query of an exchange on a plain HTTP route as the record shows them (masked);
    /// `None` on MCP routes.
    pub http_target: Option<String>,
    /// Set by the detection stage when the URL held findings it did not mask (logged or
    /// blocked): the target below the route's prefix with every finding masked, for the record.
    pub record_target: Option<String>,
    /// Set by the detection stage when the message's `id` (bit 1), `method` (bit 2) or the
    /// tool/prompt name it calls (bit 4) held a finding: the record shows them as `[REDACTED]`.
    /// Per message.
    pub envelope_masked: u8,
    /// The upstream's HTTP status, once its response head is in.
    pub status: Option<u16>,
    /// The authenticated caller (`None`: anonymous, identity off).
    pub identity: Option<crate::identity::Identity>,
    /// The credential injected towards this upstream (its values are scrubbed from answers).
    pub credential: Option<std::sync::Arc<crate::config::credential::Injected>>,
    /// The token exchanged for this caller's own (`oauth_token_exchange`), once asked for.
    pub exchanged: Option<std::sync::Arc<crate::oauth::Live>>,
    /// The policy in force for this request (from the config it started with).
    pub policy: Option<std::sync::Arc<crate::policy::Policy>>,
    /// Mask rules that apply to the current message (set before detection, read by it).
    pub policy_masks: Vec<usize>,
    /// The policy's decision on the current message (for the record).
    pub decision: Option<crate::policy::Decision>,
    /// When that decision was about a request the server asked of the agent inside its answer
    /// (MCP 2026-07-28 `inputRequests`): that request's method, which the record's decision names.
    pub decided_input: Option<String>,
    /// Where the current message's findings start in `findings`.
    pub message_findings_from: usize,
    /// The current body is a JSON-RPC batch.
    pub in_batch: bool,
    /// A call the policy holds for a human's approval (taken by the exchange).
    pub hold: Option<crate::approvals::wait::Hold>,
    /// The stage that changed or refused the current message when it is neither detection nor
    /// policy (for the record's decision), e.g. `pins`.
    pub stage: Option<&'static str>,
    /// This exchange asked for a page of `tools/list` after the first (`Some(true)`), or for the
    /// first (`Some(false)`); `None`: not known (its answer says nothing of missing tools).
    pub listing_paged: Option<bool>,
}

impl RequestCtx {
    /// The upstream's credential for this request — the value to send and the secrets to
    /// scrub from answers: the caller's exchanged token once there is one, else the
    /// upstream's own.
    pub fn upstream_credential(&self) -> Option<std::sync::Arc<crate::oauth::Live>> {
        self.exchanged.clone().or_else(|| self.credential.as_ref().map(|c| c.live()))
    }

    /// A request on `route` that has learned nothing yet: every other field empty (nothing
    /// allocated), for the constructors to fill in what they know.
    pub fn blank(route: std::sync::Arc<str>, started: Instant) -> Self {
        RequestCtx {
            worker: 0,
            route,
            upstream: String::new(),
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            http_method: String::new(),
            path: String::new(),
            mcp_session_id: None,
            stateless: false,
            gateway_session_id: None,
            protocol_version: None,
            started,
            refused: 0,
            detect: None,
            findings: Vec::new(),
            carry: String::new(),
            record_payload: None,
            http_target: None,
            record_target: None,
            envelope_masked: 0,
            status: None,
            identity: None,
            credential: None,
            exchanged: None,
            policy: None,
            policy_masks: Vec::new(),
            decision: None,
            decided_input: None,
            message_findings_from: 0,
            in_batch: false,
            hold: None,
            stage: None,
            listing_paged: None,
        }
    }

    /// A context for messages decided outside a live exchange (policy cases, `policy explain`).
    pub fn offline(
        route: &str,
        detect: Option<std::sync::Arc<crate::config::detect::DetectCfg>>,
        policy: Option<std::sync::Arc<crate::policy::Policy>>,
        identity: Option<crate::identity::Identity>,
    ) -> Self {
        RequestCtx {
            client: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_method: "POST".into(),
            detect,
            identity,
            policy,
            ..RequestCtx::blank(route.into(), Instant::now())
        }
    }
}

/// What a hook decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Pass,
    /// The hook changed the value in place; forward the new encoding.
    Changed,
    /// Do not forward; answer with this error (`reason` is shown to the agent, so it must say
    /// what to do and never echo a sensitive value).
    Refuse { code: Code, message: String, reason: String },
}

/// A stage that sees messages. Hooks are per worker (`!Send` is fine) and must not block.
pub trait MessageHook {
    fn name(&self) -> &'static str;
    fn on_message(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, value: &mut BorrowedValue<'_>) -> Verdict;

    /// The request target below the route's prefix (path and query), once per request before
    /// its messages. A hook may rewrite it in place (`Changed`) or refuse the request.
    fn on_target(&self, _ctx: &mut RequestCtx, _target: &mut String) -> Verdict {
        Verdict::Pass
    }

    /// Headers that may carry data, as (name, value): on a request, those the upstream will
    /// read — every forwarded one but credentials, framing and hop-by-hop headers — once before
    /// its messages; on an answer, those the agent will read, before its body. A hook may
    /// rewrite values in place (`Changed`) or refuse (a request; an answer's head is answered
    /// as it was passed, with values rewritten). On an answer, a header whose *name* a hook
    /// changed (masked: no longer a header name) is not passed on at all.
    fn on_headers(&self, _ctx: &mut RequestCtx, _dir: Direction, _headers: &mut [(Cow<'_, str>, Cow<'_, str>)]) -> Verdict {
        Verdict::Pass
    }
}

/// Sees every message after the hooks, with their verdict and what they found in it (the
/// session recorder). It cannot change anything.
pub trait Observer {
    fn observed(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, value: &BorrowedValue<'_>, verdict: &Verdict, findings_from: usize);

    /// Findings outside any message, from `findings_from` on: in the request target (see
    /// [`MessageHook::on_target`]) or in a streamed text body.
    fn observed_outside(&self, _ctx: &mut RequestCtx, _dir: Direction, _verdict: &Verdict, _findings_from: usize) {}
}

/// The ordered hook chain of a worker, and its observer.
#[derive(Default)]
pub struct Chain {
    hooks: Vec<Box<dyn MessageHook>>,
    observer: Option<Box<dyn Observer>>,
}

impl Chain {
    pub fn new(hooks: Vec<Box<dyn MessageHook>>) -> Self {
        Chain { hooks, observer: None }
    }

    pub fn with_observer(mut self, o: Box<dyn Observer>) -> Self {
        self.observer = Some(o);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty() && self.observer.is_none()
    }

    /// Pass the request target through the hooks; the caller shows the outcome to the
    /// observer ([`Chain::observe_outside`]) once it knows what the record may show of the URL.
    pub fn run_target(&self, ctx: &mut RequestCtx, target: &mut String) -> Verdict {
        self.run_outside(|h| h.on_target(ctx, target))
    }

    /// Pass a request's or an answer's headers through the hooks (see
    /// [`MessageHook::on_headers`]) and show the outcome to the observer.
    pub fn run_headers(&self, ctx: &mut RequestCtx, dir: Direction, headers: &mut [(Cow<'_, str>, Cow<'_, str>)]) -> Verdict {
        let from = ctx.findings.len();
        let verdict = self.run_outside(|h| h.on_headers(ctx, dir, headers));
        self.observe_outside(ctx, dir, &verdict, from);
        verdict
    }

    /// The hooks in order until one refuses; `Changed` if any changed something.
    fn run_outside(&self, mut each: impl FnMut(&dyn MessageHook) -> Verdict) -> Verdict {
        let mut verdict = Verdict::Pass;
        for h in &self.hooks {
            match each(h.as_ref()) {
                Verdict::Pass => {}
                Verdict::Changed => verdict = Verdict::Changed,
                refuse @ Verdict::Refuse { .. } => {
                    verdict = refuse;
                    break;
                }
            }
        }
        verdict
    }

    /// Show the observer findings made outside any message (see [`Observer::observed_outside`]).
    pub fn observe_outside(&self, ctx: &mut RequestCtx, dir: Direction, verdict: &Verdict, findings_from: usize) {
        if let Some(o) = &self.observer {
            o.observed_outside(ctx, dir, verdict, findings_from);
        }
    }

    fn run(&self, ctx: &mut RequestCtx, dir: Direction, info: &MessageInfo, v: &mut BorrowedValue<'_>) -> Verdict {
        let mut changed = false;
        for h in &self.hooks {
            match h.on_message(ctx, dir, info, v) {
                Verdict::Pass => {}
                Verdict::Changed => changed = true,
                refuse @ Verdict::Refuse { .. } => {
                    ctx.refused += 1;
                    return refuse;
                }
            }
        }
        // MCP 2026-07-28 caching: a result the gateway changed (masked, a listing filtered), or
        // one a policy decides per caller, is not the same for every caller, whatever the
        // server said: a cache shared between callers must not hand one caller's view to another.
        if dir == Direction::Response && info.kind == Kind::Response && (changed || ctx.policy.is_some()) && private_cache_scope(v) {
            changed = true;
        }
        if changed {
            Verdict::Changed
        } else {
            Verdict::Pass
        }
    }
}

/// `result.cacheScope` `"public"` made `"private"`; whether it was.
fn private_cache_scope(v: &mut BorrowedValue<'_>) -> bool {
    use simd_json::prelude::{MutableObject, ValueAsScalar};
    match v.get_mut("result").and_then(|r| r.get_mut("cacheScope")) {
        Some(scope) if scope.as_str() == Some("public") => {
            *scope = BorrowedValue::from("private");
            true
        }
        _ => false,
    }
}

/// The result of passing one body through the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forward the original bytes.
    Unchanged,
    /// Forward these bytes instead (re-encoded after a change, or a batch with refused
    /// elements removed). `answers` are error responses for the removed requests, to be merged
    /// into what goes back to the agent.
    Rewritten { body: Vec<u8>, answers: Vec<Vec<u8>> },
    /// Nothing is left to forward: answer with this body (a single error, or a batch array of
    /// errors; empty when only notifications were refused).
    Answer(Vec<u8>),
}

/// Pass every message of a parsed JSON-RPC body through the chain.
pub fn process_body(chain: &Chain, ctx: &mut RequestCtx, dir: Direction, body: &mut jsonrpc::Body<'_>) -> Outcome {
    if chain.is_empty() {
        return Outcome::Unchanged;
    }
    let mut changed = false;
    ctx.in_batch = body.batch;
    let mut keep = vec![true; body.values.len()];
    let mut answers = Vec::new();
    for (i, (v, info)) in body.values.iter_mut().zip(&body.infos).enumerate() {
        let findings_from = ctx.findings.len();
        ctx.record_payload = None;
        ctx.envelope_masked = 0;
        ctx.decision = None;
        ctx.decided_input = None;
        ctx.message_findings_from = findings_from;
        let verdict = chain.run(ctx, dir, info, v);
        if let Some(o) = &chain.observer {
            o.observed(ctx, dir, info, v, &verdict, findings_from);
        }
        log_message(ctx, dir, info, &verdict);
        match verdict {
            Verdict::Pass => {}
            Verdict::Changed => changed = true,
            Verdict::Refuse { code, message, reason } => {
                match (dir, info.kind) {
                    // A refused answer keeps its place: whoever asked gets an error for its id
                    // instead of waiting for ever — the agent for its call, the server for its
                    // sampling or elicitation request.
                    (_, Kind::Response | Kind::Error) => {
                        let err = jsonrpc::error_body(info.id.as_deref(), code, &message, &reason);
                        let mut buf = err;
                        if let Ok(owned) = simd_json::to_owned_value(&mut buf) {
                            *v = owned.into();
                            changed = true;
                            continue;
                        }
                        keep[i] = false;
                    }
                    (_, Kind::Request | Kind::Document) => {
                        answers.push(jsonrpc::error_body(info.id.as_deref(), code, &message, &reason));
                        keep[i] = false;
                    }
                    _ => keep[i] = false,
                }
            }
        }
    }
    if keep.iter().all(|k| *k) && !changed {
        return Outcome::Unchanged;
    }
    if keep.iter().all(|k| !*k) {
        return Outcome::Answer(join_answers(body.batch, answers));
    }
    // What is forwarded stays in `body` too (a caller may write it in another format).
    let mut kept = keep.into_iter();
    body.values.retain(|_| kept.next().unwrap_or(true));
    let mut out = Vec::new();
    jsonrpc::encode(&body.values, body.batch, &mut out);
    Outcome::Rewritten { body: out, answers }
}

/// The debug line for one message, written after the hooks: an id, method or tool name in
/// which detection found something shows as `[REDACTED]` (the message was refused; its record
/// shows the same), so a debug log never holds what the record may not.
fn log_message(ctx: &RequestCtx, dir: Direction, info: &MessageInfo, verdict: &Verdict) {
    use crate::detect::hook::{ENVELOPE_ID, ENVELOPE_METHOD, ENVELOPE_TOOL, REDACTED};
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    fn shown(masked: u8, bit: u8, v: &Option<String>) -> Option<&str> {
        if masked & bit != 0 { Some(REDACTED) } else { v.as_deref() }
    }
    let m = ctx.envelope_masked;
    let verdict = match verdict {
        Verdict::Pass => "pass",
        Verdict::Changed => "changed",
        Verdict::Refuse { .. } => "refused",
    };
    tracing::debug!(
        worker = ctx.worker, route = %ctx.route, direction = if dir == Direction::Request { "request" } else { "response" },
        kind = info.kind.as_str(), method = shown(m, ENVELOPE_METHOD, &info.method), id = shown(m, ENVELOPE_ID, &info.id),
        tool = shown(m, ENVELOPE_TOOL, &info.tool), error_code = info.error_code, session = ctx.mcp_session_id.as_deref(), verdict, "message"
    );
}

/// Join error answers the way the agent sent the requests: an array for a batch.
pub fn join_answers(batch: bool, answers: Vec<Vec<u8>>) -> Vec<u8> {
    if !batch {
        return answers.into_iter().next().unwrap_or_default();
    }
    if answers.is_empty() {
        return Vec::new();
    }
    let mut out = vec![b'['];
    for (i, a) in answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(a);
    }
    out.push(b']');
    out
}

/// Merge local answers into an upstream JSON body (a batch array, or a single message made
/// into an array). Returns `None` when the upstream body is not JSON.
pub fn merge_answers(upstream: &[u8], answers: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut items: Vec<serde_json::Value> = match serde_json::from_slice(upstream).ok()? {
        serde_json::Value::Array(a) => a,
        other => vec![other],
    };
    for a in answers {
        items.push(serde_json::from_slice(a).ok()?);
    }
    serde_json::to_vec(&items).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    /// Refuses `tools/call` of a tool named `forbidden` and upper-cases `params.arguments.text`.
    struct TestHook;
    impl MessageHook for TestHook {
        fn name(&self) -> &'static str {
            "test"
        }
        fn on_message(&self, _: &mut RequestCtx, _: Direction, info: &MessageInfo, v: &mut BorrowedValue<'_>) -> Verdict {
            if info.tool.as_deref() == Some("forbidden") || info.method.as_deref() == Some("notifications/forbidden") {
                return Verdict::Refuse { code: Code::Refused, message: "no".into(), reason: "tool not allowed".into() };
            }
            if let Some(t) = v.get_mut("params").and_then(|p| p.get_mut("arguments")).and_then(|a| a.get_mut("text")) {
                if let Some(s) = t.as_str() {
                    *t = BorrowedValue::from(s.to_uppercase());
                    return Verdict::Changed;
                }
            }
            if let Some(t) = v.get_mut("result").and_then(|r| r.get_mut("shout")) {
                if let Some(s) = t.as_str() {
                    *t = BorrowedValue::from(s.to_uppercase());
                    return Verdict::Changed;
                }
            }
            if info.kind == Kind::Response && v.get("result").and_then(|r| r.get("secret")).is_some() {
                return Verdict::Refuse { code: Code::Refused, message: "blocked".into(), reason: "secret".into() };
            }
            Verdict::Pass
        }
    }

    fn ctx() -> RequestCtx {
        let mut c = RequestCtx::offline("r", None, None, None);
        c.upstream = "u".into();
        c.path = "/mcp".into();
        c
    }

    fn run(src: &str, dir: Direction) -> Outcome {
        let chain = Chain::new(vec![Box::new(TestHook)]);
        let mut buf = src.as_bytes().to_vec();
        let mut body = jsonrpc::parse(&mut buf).unwrap();
        process_body(&chain, &mut ctx(), dir, &mut body)
    }

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    /// A result the gateway changed is this caller's: not to be shared by caches (MCP 2026-07-28).
    #[test]
    fn a_changed_cacheable_result_is_private() {
        let Outcome::Rewritten { body, .. } = run(r#"{"jsonrpc":"2.0","id":1,"result":{"shout":"hi","ttlMs":60000,"cacheScope":"public"}}"#, Direction::Response) else { panic!() };
        assert_eq!((json(&body)["result"]["cacheScope"].as_str(), json(&body)["result"]["ttlMs"].as_i64()), (Some("private"), Some(60000)));
        // Unchanged, and no policy deciding per caller: what the server said stands.
        assert_eq!(run(r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"cacheScope":"public"}}"#, Direction::Response), Outcome::Unchanged);
        let mut with_policy = ctx();
        with_policy.policy = Some(std::sync::Arc::new(crate::config::policy::parse("default = \"allow\"\n", std::path::Path::new("p.toml")).unwrap()));
        let chain = Chain::new(vec![Box::new(TestHook)]);
        let mut buf = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"cacheScope":"public"}}"#.to_vec();
        let mut body = jsonrpc::parse(&mut buf).unwrap();
        let Outcome::Rewritten { body, .. } = process_body(&chain, &mut with_policy, Direction::Response, &mut body) else { panic!() };
        assert_eq!(json(&body)["result"]["cacheScope"], "private");
    }

    #[test]
    fn untouched_messages_forward_original_bytes() {
        assert_eq!(run(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, Direction::Request), Outcome::Unchanged);
    }

    #[test]
    fn changed_message_is_re_encoded() {
        let Outcome::Rewritten { body, answers } =
            run(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#, Direction::Request)
        else {
            panic!()
        };
        assert!(answers.is_empty());
        assert_eq!(json(&body)["params"]["arguments"]["text"], "HI");
    }

    #[test]
    fn refused_single_request_is_answered_locally() {
        let Outcome::Answer(b) = run(r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"forbidden"}}"#, Direction::Request) else { panic!() };
        let v = json(&b);
        assert_eq!(v["id"], "q");
        assert_eq!(v["error"]["data"]["reason"], "tool not allowed");
    }

    #[test]
    fn batch_cannot_smuggle_a_refused_call() {
        let Outcome::Rewritten { body, answers } = run(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"forbidden"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"ok"}},{"jsonrpc":"2.0","method":"notifications/forbidden"}]"#,
            Direction::Request,
        ) else {
            panic!()
        };
        let fwd = json(&body);
        assert_eq!(fwd.as_array().unwrap().len(), 1);
        assert_eq!(fwd[0]["id"], 2);
        assert_eq!(answers.len(), 1);
        let merged = json(&merge_answers(br#"[{"jsonrpc":"2.0","id":2,"result":{}}]"#, &answers).unwrap());
        assert_eq!(merged.as_array().unwrap().len(), 2);
        assert_eq!(merged[1]["id"], 1);
    }

    #[test]
    fn all_refused_batch_answers_with_array() {
        let Outcome::Answer(b) = run(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"forbidden"}},{"jsonrpc":"2.0","method":"notifications/forbidden"}]"#,
            Direction::Request,
        ) else {
            panic!()
        };
        assert_eq!(json(&b).as_array().unwrap().len(), 1);
    }

    #[test]
    fn refused_response_becomes_error_with_same_id() {
        // Both ways: a server's answer to the agent's call, and the agent's answer to the
        // server's own request (sampling, elicitation) — the asker is never left waiting.
        for dir in [Direction::Response, Direction::Request] {
            let Outcome::Rewritten { body, answers } = run(r#"{"jsonrpc":"2.0","id":5,"result":{"secret":"x"}}"#, dir) else { panic!("{dir:?}") };
            let v = json(&body);
            assert_eq!(v["id"], 5);
            assert_eq!(v["error"]["message"], "blocked");
            assert!(v.get("result").is_none());
            assert!(answers.is_empty(), "the error goes on to the asker, not back to the sender");
        }
    }
}
