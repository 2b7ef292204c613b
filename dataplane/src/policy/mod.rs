//! The policy engine: ordered rules with CEL conditions, compiled once when the config loads,
//! decided per message on the worker that handles it.
//!
//! Evaluation (documented for operators in the README):
//! - **Request rules** (every rule that is not a mask rule and does not look at `response`)
//!   are tried top to bottom for each request and notification from the agent. The first
//!   matching `allow`, `deny` or `require_approval` rule decides. A matching `rate_limit` rule
//!   takes a token from its bucket and evaluation goes on; an empty bucket refuses the call.
//!   When no rule decides, the policy's `default` applies (`deny` unless set otherwise).
//! - **Response rules** (conditions that look at `response`) are tried for each answer from
//!   the upstream after detection; the first matching `deny` replaces that answer with an
//!   error, the first matching `allow` ends the search. On a streamed (SSE) answer every event
//!   is decided on its own: events already sent stay sent, the denied one is replaced.
//! - **Mask rules** are tried before detection, for the direction they name; every matching
//!   rule adds its kinds/categories to what detection masks in that message, with its
//!   strategy. They cannot look at this message's findings (detection has not run yet).
//! - A condition that fails to evaluate (a missing argument, a type error) counts as the
//!   safer outcome: it matches for `deny`, `require_approval`, `rate_limit` and `mask`, and
//!   does not match for `allow`. The error is logged with the rule id.

mod facts;
mod ratelimit;

pub mod cases;
pub mod cli;
pub mod hook;

pub use facts::{Annotations, Facts, FindingFacts, SessionFacts};

use crate::detect::mask::Strategy;
use crate::detect::rules::Category;
use cel::{Program, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What happens when no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    Allow,
    Deny,
}

/// Which messages a mask rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskDirection {
    Request,
    Response,
    Both,
}

/// What a rate limit counts per: the bucket key is made of these parts of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitKey {
    pub identity: bool,
    pub tool: bool,
    pub route: bool,
    pub session: bool,
}

#[derive(Debug, Clone)]
pub enum Action {
    Allow,
    /// `reason` is shown to the agent: it says why and what to do instead.
    Deny {
        reason: String,
    },
    Mask {
        direction: MaskDirection,
        categories: Vec<Category>,
        kinds: Vec<String>,
        strategy: Option<Strategy>,
    },
    RequireApproval {
        approvers: Vec<String>,
        timeout: Duration,
    },
    /// `burst` tokens, refilled at `per_sec` tokens a second.
    RateLimit {
        per_sec: f64,
        burst: f64,
        key: LimitKey,
        text: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny { .. } => "deny",
            Action::Mask { .. } => "mask",
            Action::RequireApproval { .. } => "require_approval",
            Action::RateLimit { .. } => "rate_limit",
        }
    }

    /// Whether a condition that failed to evaluate counts as a match (the safer outcome).
    fn matches_on_error(&self) -> bool {
        !matches!(self, Action::Allow)
    }
}

/// Which inputs a condition reads (from the compiled program's references).
#[derive(Debug, Clone, Copy, Default)]
pub struct Uses {
    pub args: bool,
    pub request: bool,
    pub response: bool,
}

pub struct Rule {
    pub id: String,
    pub description: String,
    pub when: String,
    pub action: Action,
    pub uses: Uses,
    program: Program,
    /// The top-level `&&` terms that read neither `args` nor `request`: when one of them is
    /// false, the rule cannot match any call of the tool (used to list tools).
    call_independent: Vec<cel::IdedExpr>,
    /// `tool.name == "…"` / `method == "…"` among the top-level terms: the rule cannot match
    /// another tool or method, so it is skipped without evaluating (same result, less work).
    only_tool: Option<String>,
    only_method: Option<String>,
    /// The inputs the condition reads (bit per [`facts::VARIABLES`] entry).
    pub(crate) vars: u16,
    /// `from = "server"`: the rule decides requests the upstream sends the agent, and only those.
    pub from_server: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule").field("id", &self.id).field("when", &self.when).field("action", &self.action).finish()
    }
}

impl Rule {
    /// Compile a condition; the error text names what is wrong in the expression.
    pub fn new(id: String, description: String, when: String, action: Action) -> Result<Rule, String> {
        let program = Program::compile(&when).map_err(|e| format!("the condition is not valid CEL: {}", e.to_string().trim()))?;
        let refs = program.references();
        for v in refs.variables() {
            if !facts::VARIABLES.contains(&v) {
                return Err(format!("the condition uses `{v}`, which is not an input; inputs are: {}", facts::VARIABLES.join(", ")));
            }
        }
        let uses = Uses { args: refs.has_variable("args"), request: refs.has_variable("request"), response: refs.has_variable("response") };
        let mut terms = Vec::new();
        conjuncts(program.expression(), &mut terms);
        let only_tool = terms.iter().find_map(|t| equals_literal(t, Some("tool"), "name"));
        let only_method = terms.iter().find_map(|t| equals_literal(t, None, "method"));
        let vars = facts::VARIABLES.iter().enumerate().filter(|(_, v)| refs.has_variable(v)).fold(0u16, |m, (i, _)| m | (1 << i));
        let call_independent = terms
            .into_iter()
            .filter(|t| {
                let r = t.references();
                !r.has_variable("args") && !r.has_variable("request")
            })
            .cloned()
            .collect();
        Ok(Rule { id, description, when, action, uses, program, call_independent, only_tool, only_method, vars, from_server: false })
    }
}

/// `var.field == "lit"` (or `var == "lit"` when `var` is `None`, naming `field`), either way
/// round: the literal.
fn equals_literal(e: &cel::IdedExpr, var: Option<&str>, field: &str) -> Option<String> {
    use cel::common::ast::{Expr, LiteralValue};
    let Expr::Call(c) = &e.expr else { return None };
    if c.func_name != cel::common::ast::operators::EQUALS || c.target.is_some() || c.args.len() != 2 {
        return None;
    }
    let names_it = |x: &cel::IdedExpr| match (&x.expr, var) {
        (Expr::Ident(n), None) => n == field,
        (Expr::Select(sel), Some(v)) => sel.field == field && !sel.test && matches!(&sel.operand.expr, Expr::Ident(n) if n == v),
        _ => false,
    };
    let literal = |x: &cel::IdedExpr| match &x.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
        _ => None,
    };
    match (&c.args[0], &c.args[1]) {
        (a, b) if names_it(a) => literal(b),
        (a, b) if names_it(b) => literal(a),
        _ => None,
    }
}

/// The terms of a top-level `a && b && …`.
fn conjuncts<'e>(e: &'e cel::IdedExpr, out: &mut Vec<&'e cel::IdedExpr>) {
    match &e.expr {
        cel::common::ast::Expr::Call(c) if c.func_name == cel::common::ast::operators::LOGICAL_AND && c.target.is_none() => {
            for a in &c.args {
                conjuncts(a, out);
            }
        }
        _ => out.push(e),
    }
}

/// The compiled policy (part of the config; swapped whole on reload, with its rate buckets).
pub struct Policy {
    pub source: PathBuf,
    pub default: DefaultAction,
    pub zone: chrono_tz::Tz,
    /// Every rule in file order.
    pub rules: Vec<Rule>,
    request: Vec<usize>,
    response: Vec<usize>,
    mask: Vec<usize>,
    /// `from = "server"`: requests the upstream sends the agent.
    server: Vec<usize>,
    buckets: ratelimit::Buckets,
    /// CEL's standard functions, built once (building them per call costs ~25 µs).
    env: Arc<cel::Env>,
    /// blake3 of the policy file, for the record.
    pub digest: String,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("source", &self.source).field("default", &self.default).field("rules", &self.rules).finish_non_exhaustive()
    }
}

/// How one rule came out for one message (for `policy explain` and tests).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Matched,
    NotMatched,
    /// The condition failed; `matched` says how it counted.
    Error {
        error: String,
        matched: bool,
    },
    /// Listing a tool: the rule depends on the arguments or findings of a call, so it is not
    /// decided before one is made.
    Undecided,
    /// A rate limit whose bucket was empty.
    Limited,
}

/// The outcome for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Allow,
    Deny { reason: String },
    RateLimited { retry_after: Duration },
    RequireApproval { approvers: Vec<String>, timeout: Duration },
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny { .. } => "deny",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::RequireApproval { .. } => "require_approval",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The deciding rule's id; `None` when the default decided.
    pub rule: Option<String>,
    pub outcome: Outcome,
}

impl Decision {
    /// `allow by plumbing`, `deny by default`: how case files and logs name a decision.
    pub fn label(&self) -> String {
        format!("{} by {}", self.outcome.name(), self.rule.as_deref().unwrap_or("default"))
    }
}

/// What the caller is asking, in the words of the default decision.
fn asking(f: &Facts<'_>) -> String {
    let who = f.identity.map_or("an anonymous caller".to_string(), |i| format!("`{}`", i.subject));
    match f.tool {
        Some(t) => format!("no policy rule allows {who} to call tool `{t}`"),
        None => format!("no policy rule allows {who} to send `{}`", if f.method.is_empty() { f.http_method } else { f.method }),
    }
}

impl Policy {
    pub fn new(source: PathBuf, default: DefaultAction, zone: chrono_tz::Tz, rules: Vec<Rule>, digest: String) -> Policy {
        let (mut request, mut response, mut mask, mut server) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, r) in rules.iter().enumerate() {
            match r.action {
                _ if r.from_server => server.push(i),
                Action::Mask { .. } => mask.push(i),
                _ if r.uses.response => response.push(i),
                _ => request.push(i),
            }
        }
        Policy { source, default, zone, rules, request, response, mask, server, buckets: ratelimit::Buckets::default(), env: Arc::new(cel::Env::stdlib()), digest }
    }

    /// Whether the rule's own `tool.name == …` / `method == …` terms rule it out.
    fn ruled_out(rule: &Rule, f: &Facts<'_>) -> bool {
        rule.only_tool.as_deref().is_some_and(|t| f.tool.unwrap_or("") != t) || rule.only_method.as_deref().is_some_and(|m| f.method != m)
    }

    fn eval(&self, rule: &Rule, ctx: &mut facts::Lazy<'_, '_>) -> Step {
        let ctx = ctx.for_rule(rule.vars);
        match rule.program.execute(ctx) {
            Ok(Value::Bool(true)) => Step::Matched,
            Ok(Value::Bool(false)) => Step::NotMatched,
            Ok(other) => self.failed(rule, format!("the condition gave {other:?}, not a boolean")),
            Err(e) => self.failed(rule, e.to_string()),
        }
    }

    fn failed(&self, rule: &Rule, error: String) -> Step {
        let matched = rule.action.matches_on_error();
        tracing::warn!(policy = %self.source.display(), rule = %rule.id, %error, counted_as = if matched { "match" } else { "no match" }, "policy condition failed");
        Step::Error { error, matched }
    }

    /// Decide a request or notification from the agent. `trace` receives every rule tried.
    pub fn decide(&self, f: &Facts<'_>, trace: Option<&mut Vec<(usize, Step)>>) -> Decision {
        self.first_deciding(&self.request, f, trace).unwrap_or_else(|| self.default_decision(f))
    }

    /// Decide a request the upstream sends the agent (`sampling/createMessage`,
    /// `elicitation/create`, `roots/list`, …) by the `from = "server"` rules: `None` when none
    /// decides (such requests pass, as they did before these rules existed).
    pub fn decide_server(&self, f: &Facts<'_>, trace: Option<&mut Vec<(usize, Step)>>) -> Option<Decision> {
        if self.server.is_empty() {
            return None;
        }
        self.first_deciding(&self.server, f, trace)
    }

    pub fn has_server_rules(&self) -> bool {
        !self.server.is_empty()
    }

    /// The first rule of `list` that decides (`allow`, `deny`, `require_approval`, an empty rate
    /// limit), taking a token from every matching rate limit on the way.
    fn first_deciding(&self, list: &[usize], f: &Facts<'_>, mut trace: Option<&mut Vec<(usize, Step)>>) -> Option<Decision> {
        let mut ctx = f.context(self);
        for &i in list {
            let r = &self.rules[i];
            let step = if Self::ruled_out(r, f) { Step::NotMatched } else { self.eval(r, &mut ctx) };
            let matched = matches!(step, Step::Matched | Step::Error { matched: true, .. });
            let mut limited = None;
            if matched {
                if let Action::RateLimit { per_sec, burst, key, .. } = &r.action {
                    limited = self.buckets.take(i, f.limit_key(*key, self.buckets.hasher()), *per_sec, *burst).err();
                }
            }
            if let Some(t) = trace.as_deref_mut() {
                t.push((i, if limited.is_some() { Step::Limited } else { step }));
            }
            if !matched {
                continue;
            }
            let rule = Some(r.id.clone());
            let outcome = match &r.action {
                Action::Allow => Outcome::Allow,
                Action::Deny { reason } => Outcome::Deny { reason: reason.clone() },
                Action::RequireApproval { approvers, timeout } => Outcome::RequireApproval { approvers: approvers.clone(), timeout: *timeout },
                Action::RateLimit { .. } => match limited {
                    Some(retry_after) => Outcome::RateLimited { retry_after },
                    None => continue,
                },
                Action::Mask { .. } => continue,
            };
            return Some(Decision { rule, outcome });
        }
        None
    }

    fn default_decision(&self, f: &Facts<'_>) -> Decision {
        let outcome = match self.default {
            DefaultAction::Allow => Outcome::Allow,
            DefaultAction::Deny => Outcome::Deny { reason: format!("{} (the policy's default is deny); ask an operator to grant it", asking(f)) },
        };
        Decision { rule: None, outcome }
    }

    /// Decide an answer from the upstream (after detection): `Some` when a response rule
    /// decided, `None` when none matched (answers are let through by default: the request
    /// was already allowed).
    pub fn decide_response(&self, f: &Facts<'_>, mut trace: Option<&mut Vec<(usize, Step)>>) -> Option<Decision> {
        if self.response.is_empty() {
            return None;
        }
        let mut ctx = f.context(self);
        for &i in &self.response {
            let r = &self.rules[i];
            let step = if Self::ruled_out(r, f) { Step::NotMatched } else { self.eval(r, &mut ctx) };
            let matched = matches!(step, Step::Matched | Step::Error { matched: true, .. });
            if let Some(t) = trace.as_deref_mut() {
                t.push((i, step));
            }
            if matched {
                let outcome = match &r.action {
                    Action::Deny { reason } => Outcome::Deny { reason: reason.clone() },
                    _ => Outcome::Allow,
                };
                return Some(Decision { rule: Some(r.id.clone()), outcome });
            }
        }
        None
    }

    /// The mask rules that apply to this message (their indices into `rules`), in order.
    pub fn masks(&self, f: &Facts<'_>, response: bool, out: &mut Vec<usize>) {
        out.clear();
        if self.mask.is_empty() {
            return;
        }
        let mut ctx = f.context(self);
        for &i in &self.mask {
            let r = &self.rules[i];
            let Action::Mask { direction, .. } = r.action else {
                continue;
            };
            let applies = match direction {
                MaskDirection::Both => true,
                MaskDirection::Request => !response,
                MaskDirection::Response => response,
            };
            if applies && !Self::ruled_out(r, f) && matches!(self.eval(r, &mut ctx), Step::Matched | Step::Error { matched: true, .. }) {
                out.push(i);
            }
        }
    }

    /// Whether a tool may appear in `tools/list` for this caller: some call of it could be
    /// allowed (or approved). Rules that depend on a call's arguments or findings do not
    /// decide before the call; a `deny` among them does not hide the tool.
    pub fn lists(&self, f: &Facts<'_>, mut trace: Option<&mut Vec<(usize, Step)>>) -> bool {
        let mut ctx = f.context(self);
        for &i in &self.request {
            let r = &self.rules[i];
            let step = if Self::ruled_out(r, f) {
                Step::NotMatched
            } else if r.uses.args || r.uses.request {
                // Decided before the call only when a term that does not depend on it is false.
                let c = ctx.for_rule(r.vars);
                let never = r.call_independent.iter().any(|t| matches!(c.resolve(t), Ok(Value::Bool(false))));
                if never {
                    Step::NotMatched
                } else {
                    Step::Undecided
                }
            } else {
                self.eval(r, &mut ctx)
            };
            if let Some(t) = trace.as_deref_mut() {
                t.push((i, step.clone()));
            }
            match (&r.action, step) {
                (Action::RateLimit { .. }, _) => {}
                (Action::Deny { .. }, Step::Matched | Step::Error { matched: true, .. }) => return false,
                (Action::Deny { .. }, _) => {}
                (_, Step::Matched | Step::Undecided) => return true,
                _ => {}
            }
        }
        self.default == DefaultAction::Allow
    }

    /// Extra masking asked by the mask rules `which` for detection rule `kind`/`category`:
    /// `Some(strategy)` (`None` inside: the rule's own default strategy) when one applies.
    pub fn mask_for(&self, which: &[usize], kind: &str, category: Category) -> Option<Option<Strategy>> {
        which.iter().find_map(|&i| match &self.rules[i].action {
            Action::Mask { categories, kinds, strategy, .. }
                if (categories.is_empty() && kinds.is_empty()) || categories.contains(&category) || kinds.iter().any(|k| k == kind) =>
            {
                Some(*strategy)
            }
            _ => None,
        })
    }

    /// Whether any condition reads the input `var` (one of [`facts::VARIABLES`]).
    pub fn reads(&self, var: &str) -> bool {
        facts::VARIABLES.iter().position(|v| *v == var).is_some_and(|i| self.rules.iter().any(|r| r.vars & (1 << i) != 0))
    }

    pub fn has_response_rules(&self) -> bool {
        !self.response.is_empty()
    }

    pub fn has_mask_rules(&self) -> bool {
        !self.mask.is_empty()
    }
}

/// A shared handle, as the config holds it.
pub type PolicyRef = Arc<Policy>;

#[cfg(test)]
mod tests;
