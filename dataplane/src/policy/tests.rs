use super::*;
use crate::config::policy::parse;
use crate::identity::Identity;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn policy(text: &str) -> Policy {
    parse(text, Path::new("test.toml")).unwrap_or_else(|p| panic!("{p:?}"))
}

fn who(sub: &str, groups: &[&str]) -> Identity {
    Identity { subject: sub.into(), groups: groups.iter().map(|g| g.to_string()).collect(), agent_type: Some("claude".into()), via: "jwt", claims: None }
}

fn call<'a>(id: Option<&'a Identity>, tool: &'a str) -> Facts<'a> {
    let mut f = Facts::new("tools/call");
    f.identity = id;
    f.tool = Some(tool);
    f
}

fn args(text: &str) -> simd_json::BorrowedValue<'static> {
    let bytes: &'static mut [u8] = Box::leak(text.as_bytes().to_vec().into_boxed_slice());
    simd_json::to_borrowed_value(bytes).unwrap()
}

const BASIC: &str = r#"
[[rule]]
id = "admins"
when = '"admins" in identity.groups'
action = "allow"

[[rule]]
id = "no-rm"
when = 'tool.name == "rm"'
action = "deny"
reason = "rm is never allowed"

[[rule]]
id = "eng-reads"
when = '"eng" in identity.groups && tool.annotations.readOnlyHint'
action = "allow"

[[rule]]
id = "small-transfers"
when = 'tool.name == "transfer" && args.amount <= 100'
action = "allow"

[[rule]]
id = "big-transfers"
when = 'tool.name == "transfer"'
action = "require_approval"
approvers = ["finance"]
timeout = "2m"
"#;

#[test]
fn first_deciding_rule_wins_in_file_order() {
    let p = policy(BASIC);
    let admin = who("root", &["admins"]);
    // `admins` comes before `no-rm`.
    assert_eq!(p.decide(&call(Some(&admin), "rm"), None).label(), "allow by admins");
    let eng = who("alice", &["eng"]);
    assert_eq!(p.decide(&call(Some(&eng), "rm"), None).label(), "deny by no-rm");
    let d = p.decide(&call(Some(&eng), "rm"), None);
    assert_eq!(d.outcome, Outcome::Deny { reason: "rm is never allowed".into() });
}

#[test]
fn default_is_deny_and_says_who_and_what() {
    let p = policy(BASIC);
    let eng = who("alice", &["eng"]);
    let d = p.decide(&call(Some(&eng), "write_file"), None);
    assert_eq!(d.rule, None);
    let Outcome::Deny { reason } = d.outcome else { panic!("{d:?}") };
    assert!(reason.contains("`alice`") && reason.contains("`write_file`") && reason.contains("default is deny"), "{reason}");
    let p = policy(&format!("default = \"allow\"\n{BASIC}"));
    assert_eq!(p.decide(&call(Some(&eng), "write_file"), None).label(), "allow by default");
}

#[test]
fn annotations_default_to_the_mcp_spec_when_unknown() {
    let p = policy(BASIC);
    let eng = who("alice", &["eng"]);
    let mut f = call(Some(&eng), "search");
    // Unknown tool: readOnlyHint is false (MCP default) → not allowed by eng-reads.
    assert_eq!(p.decide(&f, None).label(), "deny by default");
    f.annotations = Some(Annotations { read_only: Some(true), ..Default::default() });
    assert_eq!(p.decide(&f, None).label(), "allow by eng-reads");
}

#[test]
fn arguments_decide_and_a_failed_condition_is_the_safer_outcome() {
    let p = policy(BASIC);
    let eng = who("alice", &["eng"]);
    let small = args(r#"{"amount": 50}"#);
    let big = args(r#"{"amount": 5000}"#);
    let none = args(r#"{"to": "x"}"#);
    let mut f = call(Some(&eng), "transfer");
    f.args = Some(&small);
    assert_eq!(p.decide(&f, None).label(), "allow by small-transfers");
    f.args = Some(&big);
    let d = p.decide(&f, None);
    assert_eq!(d.outcome, Outcome::RequireApproval { approvers: vec!["finance".into()], timeout: Duration::from_secs(120) });
    // `args.amount` missing: the allow rule errors and does not match; approval still applies.
    f.args = Some(&none);
    let mut trace = Vec::new();
    assert_eq!(p.decide(&f, Some(&mut trace)).label(), "require_approval by big-transfers");
    assert!(trace.iter().any(|(i, s)| p.rules[*i].id == "small-transfers" && matches!(s, Step::Error { matched: false, .. })), "{trace:?}");
    // A deny whose condition fails counts as matching.
    let q = policy("[[rule]]\nid = \"d\"\nwhen = 'args.size > 10'\naction = \"deny\"\n[[rule]]\nid = \"a\"\naction = \"allow\"\n");
    f.args = Some(&none);
    assert_eq!(q.decide(&f, None).label(), "deny by d");
}

#[test]
fn findings_of_the_request_are_inputs() {
    let p = policy(
        "[[rule]]\nid = \"no-secrets\"\nwhen = '\"secret\" in request.findings.categories'\naction = \"deny\"\n[[rule]]\nid = \"rest\"\naction = \"allow\"\n",
    );
    let f = call(None, "echo");
    assert_eq!(p.decide(&f, None).label(), "allow by rest");
    let rec = crate::detect::hook::Recorded {
        direction: crate::hooks::Direction::Request,
        rule: "secret.aws".into(),
        kind: "aws_access_key_id".into(),
        category: crate::detect::rules::Category::Secret,
        severity: crate::detect::rules::Severity::High,
        path: "/key".into(),
        action: crate::config::detect::Action::Mask,
        message_id: None,
        fingerprint: None,
        encoding: None,
    };
    let all = [rec];
    let mut f = call(None, "echo");
    f.request = FindingFacts { all: &all, direction: crate::hooks::Direction::Request };
    assert_eq!(p.decide(&f, None).label(), "deny by no-secrets");
    // The same finding in the other direction is not a request finding.
    f.request = FindingFacts { all: &all, direction: crate::hooks::Direction::Response };
    assert_eq!(p.decide(&f, None).label(), "allow by rest");
}

#[test]
fn tools_list_hides_only_what_can_never_be_called() {
    let p = policy(BASIC);
    let eng = who("alice", &["eng"]);
    let mut f = call(Some(&eng), "rm");
    assert!(!p.lists(&f, None), "denied outright");
    f.tool = Some("transfer");
    assert!(p.lists(&f, None), "allowed for some arguments");
    f.tool = Some("write_file");
    assert!(!p.lists(&f, None), "nothing allows it");
    f.tool = Some("search");
    f.annotations = Some(Annotations { read_only: Some(true), ..Default::default() });
    assert!(p.lists(&f, None));
    // An argument-dependent deny does not hide a tool another rule allows.
    let q = policy("[[rule]]\nid = \"d\"\nwhen = 'args.path.startsWith(\"/etc\")'\naction = \"deny\"\n[[rule]]\nid = \"a\"\naction = \"allow\"\n");
    assert!(q.lists(&call(None, "read_file"), None));
}

#[test]
fn rate_limit_counts_per_identity_and_tool_then_refuses_with_a_wait() {
    let p = policy("[[rule]]\nid = \"budget\"\nwhen = 'method == \"tools/call\"'\naction = \"rate_limit\"\nrate = 2\nper = \"1h\"\n[[rule]]\nid = \"all\"\naction = \"allow\"\n");
    let a = who("a", &[]);
    let b = who("b", &[]);
    assert_eq!(p.decide(&call(Some(&a), "x"), None).label(), "allow by all");
    assert_eq!(p.decide(&call(Some(&a), "x"), None).label(), "allow by all");
    let d = p.decide(&call(Some(&a), "x"), None);
    let Outcome::RateLimited { retry_after } = d.outcome else { panic!("{d:?}") };
    assert!(retry_after > Duration::from_secs(1700) && retry_after <= Duration::from_secs(1800), "{retry_after:?}");
    // Another tool, another identity: their own buckets.
    assert_eq!(p.decide(&call(Some(&a), "y"), None).label(), "allow by all");
    assert_eq!(p.decide(&call(Some(&b), "x"), None).label(), "allow by all");
    // Listing does not take tokens.
    assert!(p.lists(&call(Some(&b), "x"), None));
    assert_eq!(p.decide(&call(Some(&b), "x"), None).label(), "allow by all");
}

#[test]
fn time_is_in_the_policy_zone() {
    let p = policy("timezone = \"America/New_York\"\n[[rule]]\nid = \"office\"\nwhen = 'time.hour >= 9 && time.hour < 17 && time.weekday >= 1 && time.weekday <= 5'\naction = \"allow\"\n");
    let mut f = call(None, "x");
    // 2026-11-23 is a Monday; 15:00 UTC is 10:00 in New York (EST, UTC-5).
    f.now = SystemTime::from(chrono::DateTime::parse_from_rfc3339("2026-11-23T15:00:00Z").unwrap());
    assert_eq!(p.decide(&f, None).label(), "allow by office");
    // 09:00 UTC is 04:00 in New York.
    f.now = SystemTime::from(chrono::DateTime::parse_from_rfc3339("2026-11-23T09:00:00Z").unwrap());
    assert_eq!(p.decide(&f, None).label(), "deny by default");
    // Saturday.
    f.now = SystemTime::from(chrono::DateTime::parse_from_rfc3339("2026-11-21T15:00:00Z").unwrap());
    assert_eq!(p.decide(&f, None).label(), "deny by default");
}

#[test]
fn session_state_and_claims_are_inputs() {
    let p = policy(
        "[[rule]]\nid = \"tainted\"\nwhen = '\"pii\" in session.findings.categories && tool.name == \"send_email\"'\naction = \"deny\"\n\
         [[rule]]\nid = \"budget\"\nwhen = 'session.calls >= 3'\naction = \"deny\"\n\
         [[rule]]\nid = \"tenant\"\nwhen = 'identity.claims.tenant == \"acme\"'\naction = \"allow\"\n",
    );
    let mut id = who("a", &[]);
    id.claims = Some(std::sync::Arc::new(serde_json::json!({"tenant": "acme"})));
    let st = SessionFacts { calls: 1, findings: 1, kinds: vec!["email".into()], categories: vec!["pii"] };
    let mut f = call(Some(&id), "send_email");
    f.session = Some(&st);
    assert_eq!(p.decide(&f, None).label(), "deny by tainted");
    f.tool = Some("search");
    assert_eq!(p.decide(&f, None).label(), "allow by tenant");
    assert!(p.reads("session") && p.reads("identity") && !p.reads("args") && !p.reads("nope"));
    let st3 = SessionFacts { calls: 3, ..Default::default() };
    f.session = Some(&st3);
    assert_eq!(p.decide(&f, None).label(), "deny by budget");
}

#[test]
fn mask_rules_name_kinds_categories_and_strategy() {
    let p = policy(
        "[[rule]]\nid = \"contractors\"\nwhen = '\"contractors\" in identity.groups'\naction = \"mask\"\ncategories = [\"pii\"]\nstrategy = \"redact\"\n\
         [[rule]]\nid = \"emails-in\"\nwhen = 'true'\naction = \"mask\"\ndirection = \"request\"\nkinds = [\"email\"]\n\
         [[rule]]\nid = \"all\"\naction = \"allow\"\n",
    );
    let c = who("c", &["contractors"]);
    let mut out = Vec::new();
    p.masks(&call(Some(&c), "x"), true, &mut out);
    assert_eq!(out.iter().map(|i| p.rules[*i].id.as_str()).collect::<Vec<_>>(), ["contractors"]);
    use crate::detect::rules::Category;
    assert_eq!(p.mask_for(&out, "phone", Category::Pii), Some(Some(crate::detect::mask::Strategy::Redact)));
    assert_eq!(p.mask_for(&out, "aws", Category::Secret), None);
    p.masks(&call(Some(&c), "x"), false, &mut out);
    assert_eq!(out.iter().map(|i| p.rules[*i].id.as_str()).collect::<Vec<_>>(), ["emails-in"]);
    assert_eq!(p.mask_for(&out, "email", Category::Pii), Some(None));
    assert_eq!(p.mask_for(&out, "phone", Category::Pii), None);
    // Mask rules never decide a call.
    assert_eq!(p.decide(&call(Some(&c), "x"), None).label(), "allow by all");
}

#[test]
fn response_rules_decide_answers_only() {
    let p = policy("[[rule]]\nid = \"keys-out\"\nwhen = 'response.findings.count > 0 && \"secret\" in response.findings.categories'\naction = \"deny\"\nreason = \"the answer held a credential\"\n[[rule]]\nid = \"all\"\naction = \"allow\"\n");
    let f = call(None, "x");
    assert_eq!(p.decide(&f, None).label(), "allow by all");
    assert_eq!(p.decide_response(&f, None), None);
}

#[test]
fn every_problem_in_a_policy_file_is_reported_with_its_rule() {
    let text = r#"
default = "maybe"
timezone = "Mars/Olympus"
[[rule]]
id = "a"
when = 'tool.name == '
action = "allow"
[[rule]]
id = "a"
action = "allow"
[[rule]]
id = "b"
when = 'secrets.count > 0'
action = "allow"
[[rule]]
id = "c"
action = "launch"
[[rule]]
id = "d"
action = "mask"
when = 'request.findings.count > 0'
[[rule]]
id = "e"
action = "require_approval"
[[rule]]
id = "f"
action = "rate_limit"
rate = 5
per = "soon"
[[rule]]
id = "g"
action = "allow"
reason = "x"
[[rule]]
id = "h"
when = 'response.findings.count > 0'
action = "require_approval"
approvers = ["x"]
"#;
    let problems = parse(text, Path::new("p.toml")).unwrap_err();
    let at: Vec<&str> = problems.iter().map(|(a, _)| a.as_str()).collect();
    for want in [
        "default",
        "timezone",
        "rule[0] (\"a\").when",
        "rule[1] (\"a\").id",
        "rule[2] (\"b\").when",
        "rule[3] (\"c\").action",
        "rule[4] (\"d\").when",
        "rule[5] (\"e\").approvers",
        "rule[6] (\"f\").per",
        "rule[7] (\"g\").reason",
        "rule[8] (\"h\").action",
    ] {
        assert!(at.contains(&want), "{want} missing from {problems:#?}");
    }
    let b = &problems.iter().find(|(a, _)| a == "rule[2] (\"b\").when").unwrap().1;
    assert!(b.contains("`secrets`") && b.contains("identity"), "{b}");
}

#[test]
fn a_tool_whose_definition_changed_can_be_held_for_a_human() {
    let p = policy(
        r#"
default = "allow"
[[rule]]
id = "changed-tools-need-a-reviewer"
when = 'method == "tools/call" && tool.pin_changed'
action = "require_approval"
approvers = ["security"]
"#,
    );
    let eng = who("alice", &["eng"]);
    let mut f = call(Some(&eng), "daily_fact");
    assert_eq!(p.decide(&f, None).label(), "allow by default");
    f.pin_changed = true;
    assert_eq!(p.decide(&f, None).label(), "require_approval by changed-tools-need-a-reviewer");
}

#[test]
fn from_server_rules_decide_only_requests_the_upstream_sends_and_never_agent_calls() {
    let p = policy(
        r#"
[[rule]]
id = "no-sampling"
from = "server"
when = 'method == "sampling/createMessage" && upstream == "untrusted"'
action = "deny"
reason = "no model for this server"
[[rule]]
id = "catch-all"
from = "server"
action = "allow"
[[rule]]
id = "everything-else"
action = "deny"
"#,
    );
    assert!(p.has_server_rules());
    let mut f = Facts::new("sampling/createMessage");
    f.upstream = "untrusted";
    let d = p.decide_server(&f, None).unwrap();
    assert_eq!((d.rule.as_deref(), d.outcome.name()), (Some("no-sampling"), "deny"));
    f.upstream = "trusted";
    assert_eq!(p.decide_server(&f, None).unwrap().rule.as_deref(), Some("catch-all"));
    // An agent's call is decided by the agent rules alone (a server rule matching everything
    // does not allow it) …
    let agent = call(None, "rm");
    assert_eq!(p.decide(&agent, None).rule.as_deref(), Some("everything-else"));
    // … and without server rules, server requests pass undecided, as before they existed.
    assert!(policy(BASIC).decide_server(&Facts::new("elicitation/create"), None).is_none());
    // What a server rule may do, and read.
    let bad = parse(
        r#"
[[rule]]
id = "x"
from = "server"
action = "require_approval"
approvers = ["a"]
[[rule]]
id = "y"
from = "client"
action = "allow"
[[rule]]
id = "z"
from = "server"
when = 'response.findings.count > 0'
action = "deny"
"#,
        Path::new("p.toml"),
    )
    .unwrap_err();
    let at: Vec<&str> = bad.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(at, ["rule[0] (\"x\").action", "rule[1] (\"y\").from", "rule[2] (\"z\").when"], "{bad:?}");
}
