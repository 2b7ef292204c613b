//! Data-driven chain rule tests: every `analyzer/chains/tests/*.toml` names a rule and its
//! cases — events in, the evidence of each expected alert out (near misses expect none). The
//! events go through the same decoding as ingestion; the rule runs through DataFusion.

use sluice_analyzer::{chains, ingest::Codec, query};
use std::path::Path;

const T0: i64 = 1_795_000_000_000_000;

/// A test event (short form) as a full event document.
fn event(e: &toml::Value) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("v".into(), 1.into());
    o.insert("instance".into(), "test".into());
    let t = e.get("t").and_then(|t| t.as_float().or_else(|| t.as_integer().map(|i| i as f64))).unwrap_or(0.0);
    o.insert("ts".into(), (T0 + (t * 1e6) as i64).into());
    let tbl = e.as_table().expect("an event is a table");
    for (k, v) in tbl {
        let v = serde_json::to_value(v).expect("TOML to JSON");
        match k.as_str() {
            "t" => {}
            "subject" => {
                o.insert("identity".into(), serde_json::json!({ "subject": v }));
            }
            "findings" => {
                let fs: Vec<serde_json::Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        let mut f = f.clone();
                        for (key, default) in [("rule", "test.rule"), ("severity", "high"), ("path", "/x"), ("action", "mask")] {
                            f.as_object_mut().expect("a finding is a table").entry(key).or_insert(default.into());
                        }
                        f
                    })
                    .collect();
                o.insert("findings".into(), fs.into());
            }
            "decision" => {
                let mut d = v.clone();
                d.as_object_mut().expect("a decision is a table").entry("stage").or_insert("policy".into());
                o.insert("decision".into(), d);
            }
            "approval" => {
                let mut a = v.clone();
                a.as_object_mut().expect("an approval is a table").entry("args_digest").or_insert("".into());
                o.insert("approval".into(), a);
            }
            _ => {
                o.insert(k.clone(), v);
            }
        }
    }
    serde_json::Value::Object(o)
}

#[tokio::test]
async fn every_chain_rule_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("chains/tests");
    let rules = chains::load(true, &[]).unwrap();
    let mut covered = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    for f in files {
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let id = doc["rule"].as_str().unwrap();
        let rule = rules.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("{}: no rule {id}", f.display()));
        covered.insert(id.to_owned());
        for case in doc["case"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let docs: Vec<Vec<u8>> = case["events"].as_array().unwrap().iter().map(|e| serde_json::to_vec(&event(e)).unwrap()).collect();
            let batch = Codec::default().decode(&docs).unwrap_or_else(|e| panic!("{}: {name}: {e:#}", f.display()));
            let ctx = query::context_in_memory(vec![batch]).await.unwrap();
            let got = chains::run_rule(&ctx, rule).await.unwrap_or_else(|e| panic!("{}: {name}: {e:#}", f.display()));
            let mut got: Vec<Vec<String>> = got.into_iter().map(|a| a.evidence).collect();
            let mut want: Vec<Vec<String>> =
                case["alerts"].as_array().unwrap().iter().map(|a| a.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect()).collect();
            got.sort();
            want.sort();
            if got != want {
                failures.push(format!("{} / {name}: expected {want:?}, got {got:?}", f.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let all: std::collections::BTreeSet<String> = rules.iter().map(|r| r.id.clone()).collect();
    assert_eq!(covered, all, "every built-in rule has cases");
}

#[test]
fn rule_files_need_their_header() {
    let e = chains::parse("-- id: x\n-- severity: extreme\n-- summary: s\nSELECT 1", "bad.sql").unwrap_err();
    assert!(e.to_string().contains("bad.sql") && e.to_string().contains("extreme"), "{e}");
    let e = chains::parse("SELECT 1", "none.sql").unwrap_err();
    assert!(e.to_string().contains("-- id:"), "{e}");
}

/// Continuous mode runs the rules while a session is still going: a probing incident seen
/// first with three refused calls and later with a fourth keeps its alert id (the rule names
/// the incident), while rules without `incident` keep ids derived from their evidence.
#[tokio::test]
async fn a_growing_incident_keeps_its_alert_id() {
    let rules = chains::load(true, &[]).unwrap();
    let probing = rules.iter().find(|r| r.id == "probing").unwrap();
    let refused = |n: usize| -> Vec<Vec<u8>> {
        (1..=n)
            .flat_map(|i| {
                let q = format!(r#"{{ id = "q{i}", t = {i}, kind = "request", session = "s1", subject = "a", direction = "request", method = "tools/call", tool = "rm", rpc_id = "{i}", payload = {{ path = "/{i}" }} }}"#);
                let d = format!(r#"{{ id = "d{i}", t = {i}, kind = "decision", session = "s1", subject = "a", direction = "request", method = "tools/call", tool = "rm", rpc_id = "{i}", decision = {{ action = "deny" }} }}"#);
                [q, d].map(|e| serde_json::to_vec(&event(&toml::from_str::<toml::Value>(&format!("e = {e}")).unwrap()["e"])).unwrap())
            })
            .collect()
    };
    let mut ids = Vec::new();
    for n in [3, 4] {
        let ctx = query::context_in_memory(vec![Codec::default().decode(&refused(n)).unwrap()]).await.unwrap();
        let got = chains::run_rule(&ctx, probing).await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].evidence.len(), n);
        ids.push(got[0].id.clone());
    }
    assert_eq!(ids[0], ids[1]);
}
