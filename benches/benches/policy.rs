//! Policy evaluation per call: a 100-rule policy shaped like a real deployment (per-tool
//! allows by group, argument checks, finding checks, session and time rules, rate limits),
//! decided for a call that only the 97th rule decides (nearly every rule is tried), plus a
//! call the first rules decide and a `tools/list` entry. Facts → CEL context → rules, the
//! whole per-call cost. Target: ≤ 5 µs with 100 rules.
//! Run: `cargo bench -p sluice-benches --bench policy`.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::identity::Identity;
use sluice::policy::{Annotations, Facts, SessionFacts};
use std::hint::black_box;
use std::path::Path;

fn hundred_rules() -> String {
    let mut t = String::from("default = \"deny\"\ntimezone = \"Europe/Berlin\"\n");
    t.push_str("[[rule]]\nid = \"protocol\"\nwhen = 'method in [\"initialize\", \"ping\", \"tools/list\"] || method.startsWith(\"notifications/\")'\naction = \"allow\"\n");
    t.push_str("[[rule]]\nid = \"no-secrets\"\nwhen = 'method == \"tools/call\" && \"secret\" in request.findings.categories'\naction = \"deny\"\n");
    t.push_str("[[rule]]\nid = \"budget\"\nwhen = 'method == \"tools/call\"'\naction = \"rate_limit\"\nrate = 1000000\nper = \"1s\"\n");
    for i in 0..30 {
        t.push_str(&format!("[[rule]]\nid = \"deny-path-{i}\"\nwhen = 'tool.name == \"files_{i}\" && args.path.startsWith(\"/etc\")'\naction = \"deny\"\n"));
    }
    for i in 0..30 {
        t.push_str(&format!(
            "[[rule]]\nid = \"allow-{i}\"\nwhen = 'tool.name == \"tool_{i}\" && (\"team_{i}\" in identity.groups || identity.sub == \"svc-{i}\")'\naction = \"allow\"\n"
        ));
    }
    for i in 0..20 {
        t.push_str(&format!(
            "[[rule]]\nid = \"office-{i}\"\nwhen = 'tool.name == \"ops_{i}\" && time.hour >= 8 && time.hour < 18 && \"ops\" in identity.groups'\naction = \"allow\"\n"
        ));
    }
    for i in 0..13 {
        t.push_str(&format!(
            "[[rule]]\nid = \"session-{i}\"\nwhen = 'tool.name == \"send_{i}\" && \"pii\" in session.findings.categories'\naction = \"deny\"\n"
        ));
    }
    t.push_str("[[rule]]\nid = \"destructive\"\nwhen = 'method == \"tools/call\" && tool.annotations.destructiveHint && !(\"ops\" in identity.groups)'\naction = \"deny\"\n");
    t.push_str("[[rule]]\nid = \"big-args\"\nwhen = 'method == \"tools/call\" && size(args) > 50'\naction = \"deny\"\n");
    t.push_str("[[rule]]\nid = \"eng\"\nwhen = 'method == \"tools/call\" && \"eng\" in identity.groups && !tool.annotations.destructiveHint'\naction = \"allow\"\n");
    t.push_str("[[rule]]\nid = \"rest\"\nwhen = 'identity.authenticated'\naction = \"deny\"\n");
    t
}

fn bench(c: &mut Criterion) {
    let text = hundred_rules();
    let p = sluice::config::policy::parse(&text, Path::new("bench.toml")).expect("policy");
    assert_eq!(p.rules.len(), 100);
    let who = Identity {
        subject: "alice@example.com".into(),
        groups: vec!["eng".into(), "staff".into(), "berlin".into(), "oncall".into(), "readers".into()],
        agent_type: Some("claude-code".into()),
        via: "jwt",
        claims: None,
    };
    let mut buf = br#"{"query":"quarterly revenue by region","limit":50,"filters":{"region":"emea","year":2026}}"#.to_vec();
    let args = simd_json::to_borrowed_value(&mut buf).expect("json");
    let session = SessionFacts { calls: 12, findings: 2, kinds: vec!["email".into()], categories: vec!["pii"] };
    let mut late = Facts::new("tools/call");
    late.identity = Some(&who);
    late.route = "mcp";
    late.upstream = "search";
    late.tool = Some("search");
    late.annotations = Some(Annotations { read_only: Some(true), destructive: Some(false), ..Default::default() });
    late.args = Some(&args);
    late.session = Some(&session);
    assert_eq!(p.decide(&late, None).label(), "allow by eng");
    c.bench_function("policy/100 rules/decided by rule 99 of 100", |b| b.iter(|| black_box(p.decide(black_box(&late), None))));
    let mut early = Facts::new("tools/list");
    early.identity = Some(&who);
    assert_eq!(p.decide(&early, None).label(), "allow by protocol");
    c.bench_function("policy/100 rules/decided by rule 1", |b| b.iter(|| black_box(p.decide(black_box(&early), None))));
    c.bench_function("policy/100 rules/tools-list entry", |b| b.iter(|| black_box(p.lists(black_box(&late), None))));
    // The same call against 100 rules none of which names a tool or method: every condition
    // is evaluated (the cost without the tool/method index).
    let mut t = String::new();
    for i in 0..99 {
        t.push_str(&format!("[[rule]]\nid = \"r{i}\"\nwhen = '\"team_{i}\" in identity.groups && args.limit > {i}'\naction = \"allow\"\n"));
    }
    t.push_str("[[rule]]\nid = \"eng\"\nwhen = '\"eng\" in identity.groups'\naction = \"allow\"\n");
    let q = sluice::config::policy::parse(&t, Path::new("flat.toml")).expect("policy");
    assert_eq!(q.decide(&late, None).label(), "allow by eng");
    c.bench_function("policy/100 unindexed rules/decided by rule 100", |b| b.iter(|| black_box(q.decide(black_box(&late), None))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
