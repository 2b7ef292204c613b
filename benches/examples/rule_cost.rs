//! Which rules cost the most: scan ~1 MiB of corpus text with a database of one rule at a time
//! and print the throughput, slowest first (a tool for rule authors; the raw-scan benchmark
//! measures the whole pack). Run: `cargo run --release -p sluice-benches --example rule_cost`.

use sluice::detect::engine::Engine;
use sluice::detect::rules::{default_dir, load_dir};
use sluice_benches::corpus_text;
use std::time::Instant;

fn main() {
    let text = corpus_text(1 << 20);
    let rules = load_dir(&default_dir()).expect("packs");
    let mut rows = Vec::new();
    for l in &rules {
        let e = Engine::compile(vec![l.clone()]).expect("compile");
        let mut sc = e.scanner().expect("scratch");
        let mut out = Vec::new();
        e.scan(&mut sc, &text, &mut out);
        let t = Instant::now();
        let n = 5;
        for _ in 0..n {
            out.clear();
            e.scan(&mut sc, &text, &mut out);
        }
        let mbs = (text.len() * n) as f64 / t.elapsed().as_secs_f64() / 1e6;
        rows.push((mbs, l.rule.id.clone(), out.len()));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (mbs, id, n) in rows {
        println!("{mbs:>10.1} MB/s  {n:>6} findings  {id}");
    }
}
