//! The policy file (`[policy] file = "…"` in the main config): a strict TOML schema of ordered
//! rules, compiled into [`crate::policy::Policy`]. Every problem is reported at once, each
//! with the policy file, the rule and the key.

use crate::detect::mask::Strategy;
use crate::detect::rules::Category;
use crate::policy::{Action, DefaultAction, LimitKey, MaskDirection, Policy, Rule};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// The policy file; a relative path is relative to the config file.
    pub file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// What happens when no rule decides: `deny` (default) or `allow`.
    default: Option<String>,
    /// IANA zone for `time.*` (default UTC).
    timezone: Option<String>,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: Option<String>,
    #[serde(default)]
    description: String,
    /// CEL condition; default `true`.
    when: Option<String>,
    action: Option<String>,
    reason: Option<String>,
    direction: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    kinds: Vec<String>,
    strategy: Option<String>,
    #[serde(default)]
    approvers: Vec<String>,
    timeout: Option<String>,
    rate: Option<u32>,
    per: Option<String>,
    burst: Option<u32>,
    #[serde(default)]
    key: Vec<String>,
    /// `agent` (default): the rule decides what the agent sends; `server`: requests the
    /// upstream sends the agent (sampling, elicitation, roots).
    from: Option<String>,
}

/// Problems found in a policy file: (path inside the file, message).
pub type Problems = Vec<(String, String)>;

/// Read and compile a policy file.
pub fn load(path: &Path) -> Result<Policy, Problems> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![("(file)".to_string(), format!("cannot read the policy file: {e}; check the path and permissions"))])?;
    parse(&text, path)
}

/// Compile a policy from its text (`source` names it in messages and the record).
pub fn parse(text: &str, source: &Path) -> Result<Policy, Problems> {
    let f: File = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| super::line_col(text, s.start)).unwrap_or_default();
        vec![(at, format!("{}; see deploy/policy.toml for every key", e.message()))]
    })?;
    let mut problems = Problems::new();
    let default = match f.default.as_deref() {
        None | Some("deny") => DefaultAction::Deny,
        Some("allow") => DefaultAction::Allow,
        Some(other) => {
            problems.push(("default".into(), format!("\"{other}\" is not a default; use \"deny\" or \"allow\"")));
            DefaultAction::Deny
        }
    };
    let zone = match f.timezone.as_deref() {
        None => chrono_tz::UTC,
        Some(z) => z.parse().unwrap_or_else(|_| {
            problems.push(("timezone".into(), format!("\"{z}\" is not an IANA time zone; use a name such as \"UTC\" or \"Europe/Berlin\"")));
            chrono_tz::UTC
        }),
    };
    let mut rules = Vec::with_capacity(f.rule.len());
    let mut ids: Vec<String> = Vec::new();
    for (i, r) in f.rule.into_iter().enumerate() {
        let at = |key: &str| match &r.id {
            Some(id) => format!("rule[{i}] (\"{id}\").{key}"),
            None => format!("rule[{i}].{key}"),
        };
        let mut bad = |key: &str, msg: String| problems.push((at(key), msg));
        let id = match &r.id {
            Some(id) if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                bad("id", format!("\"{id}\" is not a rule id; use letters, digits, '-', '_' and '.'"));
                continue;
            }
            Some(id) if ids.contains(id) => {
                bad("id", format!("\"{id}\" is used by an earlier rule; ids name rules in decisions and must be unique"));
                continue;
            }
            Some(id) => id.clone(),
            None => {
                bad("id", "every rule needs an id (it names the rule in decisions, events and `policy explain`)".into());
                continue;
            }
        };
        ids.push(id.clone());
        let Some(action) = action(&r, &mut bad) else {
            continue;
        };
        let when = r.when.clone().unwrap_or_else(|| "true".into());
        let from_server = match r.from.as_deref() {
            None | Some("agent") => false,
            Some("server") => true,
            Some(other) => {
                bad("from", format!("\"{other}\" is not a sender; use \"agent\" (the default: what agents send) or \"server\" (requests upstreams send agents: sampling, elicitation, roots)"));
                continue;
            }
        };
        match Rule::new(id, r.description.clone(), when, action) {
            Ok(mut rule) => {
                rule.from_server = from_server;
                if from_server && !matches!(rule.action, Action::Allow | Action::Deny { .. } | Action::RateLimit { .. }) {
                    bad("action", format!("a `from = \"server\"` rule can `allow`, `deny` or `rate_limit` a server's request (not `{}`); detection's mask rules already apply to it", rule.action.name()));
                } else if from_server && rule.uses.response {
                    bad("when", "a `from = \"server\"` rule decides the server's request itself: read its `method`, `args` (its params) and `request.findings`, not `response`".into());
                } else if rule.uses.response && !matches!(rule.action, Action::Allow | Action::Deny { .. }) {
                    bad("action", format!("a rule that looks at `response` decides answers, so it can only `allow` or `deny` (not `{}`)", rule.action.name()));
                } else if matches!(rule.action, Action::Mask { .. }) && (rule.uses.request || rule.uses.response) {
                    bad("when", "a mask rule decides what detection masks before it runs, so it cannot look at this message's findings; use `session.findings` (earlier messages) instead".into());
                } else {
                    rules.push(rule);
                }
            }
            Err(e) => bad("when", e),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let digest = blake3::hash(text.as_bytes()).to_hex().to_string();
    Ok(Policy::new(source.to_owned(), default, zone, rules, digest))
}

fn action(r: &RuleFile, bad: &mut dyn FnMut(&str, String)) -> Option<Action> {
    let name = r.action.as_deref().unwrap_or("");
    let mut unused = |key: &str, set: bool| {
        if set {
            bad(key, format!("`{key}` does not apply to action \"{name}\"; remove it"));
        }
    };
    let (deny, mask, approval, limit) = (name == "deny", name == "mask", name == "require_approval", name == "rate_limit");
    unused("reason", r.reason.is_some() && !deny);
    unused("direction", r.direction.is_some() && !mask);
    unused("categories", !r.categories.is_empty() && !mask);
    unused("kinds", !r.kinds.is_empty() && !mask);
    unused("strategy", r.strategy.is_some() && !mask);
    unused("approvers", !r.approvers.is_empty() && !approval);
    unused("timeout", r.timeout.is_some() && !approval);
    unused("rate", r.rate.is_some() && !limit);
    unused("per", r.per.is_some() && !limit);
    unused("burst", r.burst.is_some() && !limit);
    unused("key", !r.key.is_empty() && !limit);
    Some(match name {
        "allow" => Action::Allow,
        "deny" => Action::Deny {
            reason: r.reason.clone().unwrap_or_else(|| format!("the gateway's policy (rule \"{}\") does not allow this call", r.id.as_deref().unwrap_or(""))),
        },
        "mask" => {
            let direction = match r.direction.as_deref() {
                None | Some("response") => MaskDirection::Response,
                Some("request") => MaskDirection::Request,
                Some("both") => MaskDirection::Both,
                Some(d) => {
                    bad("direction", format!("\"{d}\" is not a direction; use \"request\", \"response\" or \"both\""));
                    return None;
                }
            };
            let mut categories = Vec::new();
            for c in &r.categories {
                match c.as_str() {
                    "pii" => categories.push(Category::Pii),
                    "secret" => categories.push(Category::Secret),
                    "injection" => categories.push(Category::Injection),
                    "poisoning" => categories.push(Category::Poisoning),
                    _ => bad("categories", format!("\"{c}\" is not a category; use \"pii\", \"secret\", \"injection\" or \"poisoning\"")),
                }
            }
            let strategy = match r.strategy.as_deref() {
                None => None,
                Some(s) => match Strategy::parse(s) {
                    Some(st) => Some(st),
                    None => {
                        bad("strategy", format!("\"{s}\" is not a mask strategy; use \"redact\", \"partial\", \"fingerprint\", \"placeholder\" or \"remove\""));
                        return None;
                    }
                },
            };
            Action::Mask { direction, categories, kinds: r.kinds.clone(), strategy }
        }
        "require_approval" => {
            if r.approvers.is_empty() {
                bad("approvers", "name the groups whose members may approve these calls, e.g. approvers = [\"security\"]".into());
                return None;
            }
            let timeout = match r.timeout.as_deref() {
                None => std::time::Duration::from_secs(300),
                Some(t) => match super::duration::parse(t) {
                    Ok(d) if !d.is_zero() => d,
                    _ => {
                        bad("timeout", format!("\"{t}\" is not a duration; write e.g. \"90s\", \"5m\""));
                        return None;
                    }
                },
            };
            Action::RequireApproval { approvers: r.approvers.clone(), timeout }
        }
        "rate_limit" => {
            let Some(rate) = r.rate.filter(|n| *n > 0) else {
                bad("rate", "give the calls allowed per period, e.g. rate = 10 and per = \"1m\"".into());
                return None;
            };
            let per = match super::duration::parse(r.per.as_deref().unwrap_or("1s")) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    bad("per", format!("\"{}\" is not a duration; write e.g. \"1s\", \"1m\"", r.per.as_deref().unwrap_or("")));
                    return None;
                }
            };
            let mut key = LimitKey::default();
            let parts = if r.key.is_empty() { vec!["identity".to_string(), "tool".to_string()] } else { r.key.clone() };
            for k in &parts {
                match k.as_str() {
                    "identity" => key.identity = true,
                    "tool" => key.tool = true,
                    "route" => key.route = true,
                    "session" => key.session = true,
                    _ => bad("key", format!("\"{k}\" is not a key part; use \"identity\", \"tool\", \"route\" or \"session\"")),
                }
            }
            let burst = f64::from(r.burst.unwrap_or(rate).max(1));
            let text = format!("{rate} per {} for each {}", r.per.as_deref().unwrap_or("1s"), parts.join(" and "));
            Action::RateLimit { per_sec: f64::from(rate) / per.as_secs_f64(), burst, key, text }
        }
        "" => {
            bad("action", "every rule needs an action: \"allow\", \"deny\", \"mask\", \"require_approval\" or \"rate_limit\"".into());
            return None;
        }
        other => {
            bad("action", format!("\"{other}\" is not an action; use \"allow\", \"deny\", \"mask\", \"require_approval\" or \"rate_limit\""));
            return None;
        }
    })
}

/// Compile `[policy]` of the main config: the issues name the policy file and the rule.
pub(super) fn compile(p: Option<&PolicyRef>, file: Option<&Path>, add: &mut dyn FnMut(String, String)) -> Option<Arc<Policy>> {
    let p = p?;
    let path = match (file.and_then(Path::parent), p.file.is_relative()) {
        (Some(dir), true) => dir.join(&p.file),
        _ => p.file.clone(),
    };
    match load(&path) {
        Ok(policy) => Some(Arc::new(policy)),
        Err(problems) => {
            for (at, msg) in problems {
                add(format!("policy.file → {}: {at}", path.display()), msg);
            }
            None
        }
    }
}
