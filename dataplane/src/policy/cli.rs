//! `sluice policy check|explain|test`: a policy's rules, why a call is decided the way it is,
//! and case files run through the live hooks.

use super::{Action, Facts, FindingFacts, Outcome, Policy, Step};
use crate::config;
use crate::hooks::{self, Chain, Direction, RequestCtx};
use crate::jsonrpc;
use anyhow::{anyhow, Context as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum PolicyCmd {
    /// Compile a policy file and list its rules in evaluation order.
    Check { file: PathBuf },
    /// Show which rule decides a call and why (each rule tried, in order). The arguments are
    /// scanned with the detection rule packs first, as on the live path.
    Explain {
        /// The policy file (detection with the shipped packs and default actions)…
        #[arg(long, conflicts_with = "config")]
        policy: Option<PathBuf>,
        /// …or a gateway config (its policy and its detection settings).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The caller: a subject (`alice`), or JSON `{"sub":…,"groups":[…],"agent":…,"claims":{…}}`.
        /// Omit for an anonymous caller.
        #[arg(long)]
        identity: Option<String>,
        /// Groups of the caller (comma-separated), added to those in --identity.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// JSON-RPC method.
        #[arg(long, default_value = "tools/call")]
        method: String,
        /// Tool name (for tools/call).
        #[arg(long)]
        tool: Option<String>,
        /// Arguments as JSON (tools/call) or the params of another method.
        #[arg(long, default_value = "{}")]
        args: String,
        /// The tool's annotations as JSON, as a tools/list would have given them.
        #[arg(long)]
        annotations: Option<String>,
        /// Route name.
        #[arg(long, default_value = "mcp")]
        route: String,
        /// Upstream name (`upstream` in conditions).
        #[arg(long, default_value = "")]
        upstream: String,
        /// Decide a request the upstream sends the agent (`--method sampling/createMessage`,
        /// `elicitation/create`, …) by the `from = "server"` rules.
        #[arg(long)]
        from_server: bool,
        /// Tool calls the session made before this one.
        #[arg(long, default_value_t = 0)]
        session_calls: u64,
        /// Decide at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run policy case files (input → expected decision); exit 1 when a case fails.
    Test { files: Vec<PathBuf> },
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<u8> {
    match cmd {
        PolicyCmd::Check { file } => {
            let p = load(&file)?;
            println!("{}: ok ({} rule(s), default {}, time zone {})", file.display(), p.rules.len(), default_name(&p), p.zone);
            for (i, r) in p.rules.iter().enumerate() {
                println!("  {:>3}  {:<28} {:<16} {:<9} {}", i + 1, r.id, r.action.name(), phase(&p, i), r.when);
            }
            Ok(0)
        }
        PolicyCmd::Test { files } => {
            if files.is_empty() {
                return Err(anyhow!("give one or more case files"));
            }
            let mut failed = 0;
            for f in &files {
                let report = super::cases::run(f).map_err(|e| anyhow!(e))?;
                for fl in &report.failures {
                    println!("FAIL {}: {}: {}", f.display(), fl.case, fl.problem);
                }
                println!("{}: {} passed, {} failed", f.display(), report.passed, report.failures.len());
                failed += report.failures.len();
            }
            Ok(u8::from(failed > 0))
        }
        PolicyCmd::Explain { policy, config, identity, groups, method, tool, args, annotations, route, upstream, from_server, session_calls, at, json } => {
            let cfg = match (policy, config) {
                (_, Some(c)) => config::load(&c).map_err(|e| anyhow!("{e}"))?,
                (Some(p), None) => policy_only(&p)?,
                (None, None) => return Err(anyhow!("give --policy FILE or --config FILE")),
            };
            let p = cfg.policy.clone().ok_or_else(|| anyhow!("the configuration has no [policy]"))?;
            let ident = parse_identity(identity.as_deref(), groups)?;
            let now = match at {
                Some(t) => chrono::DateTime::parse_from_rfc3339(&t).with_context(|| format!("--at {t:?} is not an RFC 3339 time"))?.into(),
                None => SystemTime::now(),
            };
            let mut params = serde_json::json!({});
            let arguments: serde_json::Value = serde_json::from_str(&args).with_context(|| "--args is not JSON")?;
            if method == "tools/call" {
                params["name"] = serde_json::Value::String(tool.clone().unwrap_or_default());
                params["arguments"] = arguments;
            } else {
                params = arguments;
            }
            let msg = serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))?;
            // Detection first, as on the live path.
            let mut ctx = RequestCtx::offline(&route, cfg.detect.clone(), Some(p.clone()), ident);
            let chain = Chain::new(vec![Box::new(super::hook::PolicyMasks::default()), Box::new(crate::detect::hook::DetectHook::new(Arc::default()))]);
            let mut buf = msg.clone();
            let mut body = jsonrpc::parse(&mut buf).map_err(|e| anyhow!("{e}"))?;
            // A server's request is scanned on its way to the agent.
            let dir = if from_server { Direction::Response } else { Direction::Request };
            hooks::process_body(&chain, &mut ctx, dir, &mut body);
            let mut abuf = annotations.unwrap_or_else(|| "null".into()).into_bytes();
            let ann_value = simd_json::to_borrowed_value(&mut abuf).map_err(|e| anyhow!("--annotations is not JSON: {e}"))?;
            let ann =
                (!matches!(ann_value, simd_json::BorrowedValue::Static(simd_json::StaticNode::Null))).then(|| super::Annotations::from_json(Some(&ann_value)));
            let mut vbuf = msg;
            let value = simd_json::to_borrowed_value(&mut vbuf).map_err(|e| anyhow!("{e}"))?;
            let args_v = if method == "tools/call" { get_args(&value) } else { get_params(&value) };
            let session = super::SessionFacts { calls: session_calls, ..Default::default() };
            let facts = Facts {
                identity: ctx.identity.as_ref(),
                route: &route,
                upstream: &upstream,
                method: &method,
                http_method: "POST",
                path: "",
                tool: tool.as_deref(),
                annotations: ann,
                pin_changed: false,
                args: args_v,
                request: FindingFacts { all: &ctx.findings, direction: dir },
                response: FindingFacts::NONE,
                session_id: None,
                session: Some(&session),
                now,
            };
            let mut trace = Vec::new();
            let d = if from_server {
                // No `from = "server"` rule deciding: the request passes.
                p.decide_server(&facts, Some(&mut trace)).unwrap_or(super::Decision { rule: None, outcome: Outcome::Allow })
            } else {
                p.decide(&facts, Some(&mut trace))
            };
            let reason = match &d.outcome {
                Outcome::Deny { reason } => Some(reason.clone()),
                Outcome::RateLimited { retry_after } => Some(format!("rate limited; retry in {:.1} s", retry_after.as_secs_f64())),
                Outcome::RequireApproval { approvers, timeout } => {
                    Some(format!("held for approval by {} (timeout {} s)", approvers.join(" or "), timeout.as_secs()))
                }
                Outcome::Allow => None,
            };
            if json {
                let steps: Vec<_> = trace
                    .iter()
                    .map(|(i, s)| serde_json::json!({"rule": p.rules[*i].id, "action": p.rules[*i].action.name(), "result": step_name(s), "error": step_error(s)}))
                    .collect();
                let findings: Vec<_> =
                    ctx.findings.iter().map(|f| serde_json::json!({"kind": f.kind, "category": f.category.as_str(), "path": f.path})).collect();
                let out = serde_json::json!({"decision": d.outcome.name(), "rule": d.rule, "reason": reason, "findings": findings, "steps": steps});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("policy {} (default {}, time zone {})", p.source.display(), default_name(&p), p.zone);
                for f in &ctx.findings {
                    println!("finding in the arguments: {} ({}, {}) at {}", f.kind, f.category.as_str(), f.severity.as_str(), f.path);
                }
                for (i, s) in &trace {
                    let r = &p.rules[*i];
                    let err = step_error(s).map(|e| format!("  [{e}]")).unwrap_or_default();
                    println!("  {:>3}  {:<28} {:<16} {:<10} {}{err}", i + 1, r.id, r.action.name(), step_name(s), r.when);
                }
                println!("decision: {}", d.label());
                if let Some(r) = reason {
                    println!("reason: {r}");
                }
            }
            Ok(u8::from(d.outcome != Outcome::Allow))
        }
    }
}

fn get_args<'a, 'v>(v: &'a simd_json::BorrowedValue<'v>) -> Option<&'a simd_json::BorrowedValue<'v>> {
    use simd_json::prelude::*;
    v.get("params")?.get("arguments")
}

fn get_params<'a, 'v>(v: &'a simd_json::BorrowedValue<'v>) -> Option<&'a simd_json::BorrowedValue<'v>> {
    use simd_json::prelude::*;
    v.get("params")
}

fn step_name(s: &Step) -> &'static str {
    match s {
        Step::Matched => "MATCH",
        Step::NotMatched => "no match",
        Step::Error { matched: true, .. } => "ERROR→match",
        Step::Error { matched: false, .. } => "ERROR→skip",
        Step::Undecided => "undecided",
        Step::Limited => "LIMITED",
    }
}

fn step_error(s: &Step) -> Option<&str> {
    match s {
        Step::Error { error, .. } => Some(error),
        _ => None,
    }
}

fn default_name(p: &Policy) -> &'static str {
    match p.default {
        super::DefaultAction::Allow => "allow",
        super::DefaultAction::Deny => "deny",
    }
}

fn phase(p: &Policy, i: usize) -> &'static str {
    match &p.rules[i].action {
        Action::Mask { .. } => "mask",
        _ if p.rules[i].from_server => "server",
        _ if p.rules[i].uses.response => "response",
        _ => "request",
    }
}

fn load(file: &Path) -> anyhow::Result<Policy> {
    config::policy::load(file).map_err(|problems| {
        let mut text = format!("{} problem(s) in {}:", problems.len(), file.display());
        for (at, msg) in problems {
            text.push_str(&format!("\n  {}: {at}: {msg}", file.display()));
        }
        anyhow!(text)
    })
}

/// A config with nothing but this policy (and default detection; an identity section so
/// approval rules compile — callers are given by the cases or the command line).
fn policy_only(p: &Path) -> anyhow::Result<config::Config> {
    let abs = std::fs::canonicalize(p).with_context(|| format!("cannot read {}", p.display()))?;
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:9\"\n[[upstream]]\nname = \"explain\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\npath = \"/mcp\"\nupstream = \"explain\"\n[identity]\n[identity.mtls]\n[policy]\nfile = {}\n",
        toml::Value::String(abs.display().to_string())
    );
    let f: config::schema::File = toml::from_str(&text)?;
    config::from_schema(&f).map_err(|e| anyhow!("{e}"))
}

fn parse_identity(s: Option<&str>, groups: Vec<String>) -> anyhow::Result<Option<crate::identity::Identity>> {
    let Some(s) = s else {
        return if groups.is_empty() { Ok(None) } else { Err(anyhow!("--groups needs --identity")) };
    };
    let mut id = if s.trim_start().starts_with('{') {
        let c: super::cases::CaseIdentity = serde_json::from_str(s).with_context(|| "--identity is not a JSON identity {\"sub\":…,\"groups\":[…]}")?;
        c.identity()
    } else {
        crate::identity::Identity { subject: s.to_owned(), groups: Vec::new(), agent_type: None, via: "jwt", claims: None }
    };
    id.groups.extend(groups);
    Ok(Some(id))
}
