//! The labelled corpus (`tests/corpus/*.jsonl`, built by `tests/corpus/generate.py`):
//! precision and recall per kind over planted values, and false positives over benign tool
//! outputs (goal: at most 2 documents in 1,000). `cargo test --test corpus -- --nocapture`
//! prints the report.

use sluice::detect::engine::Engine;
use sluice::detect::rules::{default_dir, load_dir};
use std::collections::{BTreeMap, BTreeSet};

#[derive(serde::Deserialize)]
struct Doc {
    id: String,
    text: String,
    #[serde(default)]
    kinds: Vec<String>,
}

fn load(name: &str) -> Vec<Doc> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn precision_recall_and_false_positive_rate() {
    let engine = Engine::compile(load_dir(&default_dir()).unwrap()).unwrap();
    let mut sc = engine.scanner().unwrap();
    let kinds_in = |sc: &mut _, text: &str| -> BTreeSet<String> {
        let mut f = Vec::new();
        engine.scan(sc, text, &mut f);
        f.iter().map(|f| engine.meta()[f.rule as usize].kind.clone()).collect()
    };
    // kind → (true positives, false positives, false negatives)
    let mut by_kind: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    let labelled = load("labelled.jsonl");
    for d in &labelled {
        let got = kinds_in(&mut sc, &d.text);
        let want: BTreeSet<String> = d.kinds.iter().cloned().collect();
        for k in want.union(&got) {
            let e = by_kind.entry(k.clone()).or_default();
            match (want.contains(k), got.contains(k)) {
                (true, true) => e.0 += 1,
                (false, true) => e.1 += 1,
                (true, false) => e.2 += 1,
                _ => {}
            }
        }
    }
    let benign = load("benign.jsonl");
    let mut fp_docs = Vec::new();
    for d in &benign {
        let got = kinds_in(&mut sc, &d.text);
        for k in &got {
            by_kind.entry(k.clone()).or_default().1 += 1;
        }
        if !got.is_empty() {
            fp_docs.push(format!("{}: {got:?}", d.id));
        }
    }
    println!("{:<28} {:>5} {:>5} {:>5} {:>9} {:>7}", "kind", "tp", "fp", "fn", "precision", "recall");
    let mut failures = Vec::new();
    for (k, (tp, fp, fnn)) in &by_kind {
        let p = f64::from(*tp) / f64::from((tp + fp).max(1));
        let r = f64::from(*tp) / f64::from((tp + fnn).max(1));
        println!("{k:<28} {tp:>5} {fp:>5} {fnn:>5} {p:>9.3} {r:>7.3}");
        if *tp + *fnn > 0 && (p < 0.95 || r < 0.95) {
            failures.push(format!("{k}: precision {p:.3}, recall {r:.3}"));
        }
    }
    let per_mille = fp_docs.len() as f64 * 1000.0 / benign.len() as f64;
    println!("benign documents with any finding: {} of {} ({per_mille:.2} per 1,000)", fp_docs.len(), benign.len());
    assert!(labelled.len() >= 200 && benign.len() >= 1000, "corpus too small");
    assert!(per_mille <= 2.0, "false positives above 2/1000:\n{}", fp_docs.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
