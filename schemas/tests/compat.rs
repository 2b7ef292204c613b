//! Schema evolution checks. `fixtures/vN.jsonl` holds events as version N wrote them and
//! `fixtures/vN.schema.json` its JSON Schema; both are frozen when N is released. The current
//! code must read every fixture of every version, and may only add optional fields.
//! `event.schema.json` (what outside consumers use) must match the code:
//! `SLUICE_BLESS=1 cargo test -p sluice-schema` rewrites it after a deliberate change.

use serde_json::Value;
use sluice_schema::{event, Kind, OwnedEvent, VERSION};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn versions() -> Vec<u16> {
    let mut v: Vec<u16> = std::fs::read_dir(dir().join("fixtures"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix('v')?.strip_suffix(".jsonl")?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn there_is_a_frozen_fixture_for_every_version_up_to_the_current() {
    assert_eq!(versions(), (1..=VERSION).collect::<Vec<_>>(), "add fixtures/v{VERSION}.jsonl and v{VERSION}.schema.json when bumping VERSION");
}

#[test]
fn events_written_by_every_earlier_version_still_read_without_loss() {
    for v in versions() {
        let text = std::fs::read_to_string(dir().join(format!("fixtures/v{v}.jsonl"))).unwrap();
        let mut kinds = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let e: OwnedEvent = serde_json::from_str(line).unwrap_or_else(|err| panic!("v{v} line {}: {err}", n + 1));
            assert_eq!(e.v, v, "line {}", n + 1);
            assert_ne!(e.kind, Kind::Other, "v{v} line {}: a kind this version wrote is unknown now", n + 1);
            kinds.insert(e.kind);
            // Nothing a known field held is dropped: re-encoding gives the same JSON value.
            let again: Value = serde_json::to_value(&e).unwrap();
            let orig: Value = serde_json::from_str(line).unwrap();
            assert_eq!(again, orig, "v{v} line {}", n + 1);
        }
        assert!(kinds.len() >= 16, "fixtures/v{v}.jsonl should cover every kind, has {}", kinds.len());
    }
}

/// Compares a frozen schema with the current one: every property keeps its name and type, and
/// nothing optional became required.
fn only_additions(old: &Value, new: &Value, defs_old: &Value, defs_new: &Value, at: &str, problems: &mut Vec<String>) {
    let resolve = |v: &Value, defs: &Value| -> Value {
        match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
            Some(name) => defs[name].clone(),
            None => v.clone(),
        }
    };
    let (old, new) = (resolve(old, defs_old), resolve(new, defs_new));
    if old.get("type") != new.get("type") && old.get("type").is_some() {
        problems.push(format!("{at}: type changed from {} to {}", old["type"], new["type"]));
    }
    let req = |v: &Value| v.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
    for r in req(&new) {
        if !req(&old).contains(&r) {
            problems.push(format!("{at}: {r} became required"));
        }
    }
    if let Some(props) = old.get("properties").and_then(Value::as_object) {
        for (k, ov) in props {
            match new.get("properties").and_then(|p| p.get(k)) {
                Some(nv) => only_additions(ov, nv, defs_old, defs_new, &format!("{at}.{k}"), problems),
                None => problems.push(format!("{at}.{k}: removed")),
            }
        }
    }
    for key in ["items", "anyOf", "oneOf"] {
        if let (Some(o), Some(n)) = (old.get(key), new.get(key)) {
            if let (Some(oa), Some(na)) = (o.as_array(), n.as_array()) {
                for (i, (a, b)) in oa.iter().zip(na).enumerate() {
                    only_additions(a, b, defs_old, defs_new, &format!("{at}.{key}[{i}]"), problems);
                }
            } else {
                only_additions(o, n, defs_old, defs_new, &format!("{at}.{key}"), problems);
            }
        }
    }
}

#[test]
fn the_current_schema_only_adds_to_every_frozen_one() {
    let new = event::json_schema();
    for v in versions() {
        let old: Value = serde_json::from_str(&std::fs::read_to_string(dir().join(format!("fixtures/v{v}.schema.json"))).unwrap()).unwrap();
        let mut problems = Vec::new();
        only_additions(&old, &new, &old["$defs"], &new["$defs"], "$", &mut problems);
        assert!(problems.is_empty(), "incompatible with v{v}: {problems:#?}");
    }
}

#[test]
fn the_published_schema_file_matches_the_code() {
    let path = dir().join("event.schema.json");
    let want = serde_json::to_string_pretty(&event::json_schema()).unwrap() + "\n";
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
        if !dir().join(format!("fixtures/v{VERSION}.schema.json")).exists() {
            std::fs::write(dir().join(format!("fixtures/v{VERSION}.schema.json")), &want).unwrap();
        }
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "schemas/event.schema.json is stale: run `SLUICE_BLESS=1 cargo test -p sluice-schema` and commit it");
}
