//! Detection benchmarks: raw scan throughput of the full rule pack on realistic tool output,
//! the whole response path (parse → normalise → scan → mask → serialise) at 1, 2, 4 and 10 KB
//! and 1 MB of text and 10 KB of database rows (many keys; each size a series of different
//! answers taken in turn), and the same rules through
//! `regex::RegexSet` (+ `find_iter` for the offsets) as the baseline. Run: `cargo bench -p
//! sluice-benches --bench scan`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::detect::engine::Engine;
use sluice::detect::json::{Buffers, Walk};
use sluice::detect::mask::{Masker, Plan};
use sluice::detect::rules::{default_dir, load_dir};
use sluice::jsonrpc;
use simd_json::prelude::*;
use sluice_benches::{corpus_text, mcp_responses, mcp_rows_series};
use std::hint::black_box;

fn engine() -> Engine {
    Engine::compile(load_dir(&default_dir()).expect("rule packs")).expect("compile")
}

/// The pack's patterns through the regex crate (the ones it accepts), case flags carried over.
fn regex_baseline(e: &Engine) -> (regex::RegexSet, Vec<regex::Regex>, usize) {
    let mut pats = Vec::new();
    let mut skipped = 0;
    for l in e.rules() {
        for p in &l.rule.patterns {
            let p = if l.rule.caseless { format!("(?i:{p})") } else { p.clone() };
            match regex::Regex::new(&p) {
                Ok(_) => pats.push(p),
                Err(_) => skipped += 1,
            }
        }
    }
    let set = regex::RegexSet::new(&pats).expect("regex set");
    let each = pats.iter().map(|p| regex::Regex::new(p).expect("regex")).collect();
    (set, each, skipped)
}

fn raw_scan(c: &mut Criterion) {
    let e = engine();
    let mut sc = e.scanner().expect("scratch");
    let text = corpus_text(1 << 20);
    let (set, each, skipped) = regex_baseline(&e);
    eprintln!("regex baseline: {} patterns, {skipped} the regex crate does not accept", each.len());
    let mut g = c.benchmark_group("raw_scan_1MiB");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(20);
    let mut out = Vec::new();
    g.bench_function("hyperscan", |b| {
        b.iter(|| {
            out.clear();
            e.scan(&mut sc, black_box(&text), &mut out);
            black_box(out.len())
        })
    });
    g.sample_size(10);
    g.bench_function("regex_set", |b| {
        b.iter(|| {
            let mut n = 0;
            for i in set.matches(black_box(&text)).iter() {
                n += each[i].find_iter(&text).count();
            }
            black_box(n)
        })
    });
    g.finish();
}

/// How many different answers of each size the whole-path benchmark takes in turn.
const ANSWERS: usize = 64;

fn whole_path(c: &mut Criterion) {
    let e = engine();
    let mut sc = e.scanner().expect("scratch");
    let masker = Masker::new([9; 32], "[MASKED]");
    let strategies = e.default_strategies();
    let all = |_: u32| true;
    let walk = Walk { engine: &e, mask: Some(Plan { masker: &masker, strategies: &strategies, mask_rule: &all }), skip_binary: true };
    let mut bufs = Buffers::default();
    let mut g = c.benchmark_group("whole_path");
    for (label, size, rows) in [("1KB", 1024, false), ("2KB", 2048, false), ("4KB", 4096, false), ("10KB", 10 * 1024, false), ("1MB", 1 << 20, false), ("rows_10KB", 10 * 1024, true)] {
        // A series of different answers, taken in turn: a core's table of clean short leaves
        // then remembers only what answers repeat (`"type": "text"`), not a whole answer.
        let n = if size > 100_000 { 1 } else { ANSWERS };
        let bodies = if rows { mcp_rows_series(size, n) } else { mcp_responses(size, n) };
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        g.throughput(Throughput::Bytes((bytes / n) as u64));
        g.sample_size(if size > 100_000 { 20 } else { 100 });
        let mut scratch = Vec::with_capacity(bytes / n * 2);
        let mut found = Vec::new();
        let mut outbuf = Vec::with_capacity(bytes / n * 2);
        let mut next = 0;
        g.bench_with_input(BenchmarkId::new("parse_scan_mask_serialise", label), &bodies, |b, bodies| {
            b.iter(|| {
                // The gateway's path for a buffered response: `jsonrpc::parse` (parse and
                // classify), the detection stage's walk of `result` (a fresh request: no
                // carry-over), `jsonrpc::encode`.
                let body = &bodies[next];
                next = (next + 1) % bodies.len();
                scratch.clear();
                scratch.extend_from_slice(body);
                let mut parsed = jsonrpc::parse(&mut scratch).expect("JSON-RPC");
                found.clear();
                for v in parsed.values.iter_mut() {
                    if let Some(result) = v.get_mut("result") {
                        bufs.carry.clear();
                        walk.run_carry(&mut sc, &mut bufs, result, &mut found);
                    }
                }
                outbuf.clear();
                jsonrpc::encode(&parsed.values, parsed.batch, &mut outbuf);
                black_box(outbuf.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, raw_scan, whole_path);
criterion_main!(benches);
