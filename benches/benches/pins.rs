//! What tool pinning adds to a `tools/list` answer: the digest of each tool as listed
//! (canonical JSON, blake3) and the comparison with the upstream's pins when nothing changed —
//! for a listing of 50 tools shaped like real servers' (description, input schema with a few
//! properties, annotations). A `tools/call` only reads an atomic while nothing is blocked.
//! Run: `cargo bench -p sluice-benches --bench pins`.

use criterion::{criterion_group, criterion_main, Criterion};
use simd_json::prelude::*;
use sluice::pins::{Listed, Store};
use std::hint::black_box;

fn listing() -> Vec<u8> {
    let tools: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            serde_json::json!({
                "name": format!("tool_{i}"),
                "description": format!("Search the issue tracker {i} for tickets matching a query; returns id, title, status and assignee of each. Use filters to narrow by project or label."),
                "inputSchema": {"type": "object", "properties": {
                    "query": {"type": "string", "description": "free text"},
                    "project": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100}
                }, "required": ["query"]},
                "annotations": {"readOnlyHint": true, "openWorldHint": false}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": tools}})).unwrap()
}

fn pins(c: &mut Criterion) {
    let bytes = listing();
    let mut g = c.benchmark_group("pins");
    g.bench_function("digest_50_tools", |b| {
        let mut buf = bytes.clone();
        let v = simd_json::to_borrowed_value(&mut buf).unwrap();
        let tools = v.get("result").and_then(|r| r.get("tools")).and_then(|t| t.as_array()).unwrap();
        let mut canon = Vec::new();
        b.iter(|| {
            let mut n = 0u8;
            for t in tools {
                canon.clear();
                sluice::events::record::canonical(t, &mut canon);
                n ^= blake3::hash(&canon).as_bytes()[0];
            }
            black_box(n)
        })
    });
    g.bench_function("compare_50_tools_unchanged", |b| {
        let store = Store::default();
        let listed: Vec<Listed<'_>> = (0..50).map(|i| Listed { name: Box::leak(format!("tool_{i}").into_boxed_str()), digest: format!("{i:064x}"), description: "" }).collect();
        store.observe("tracker", &listed, true);
        b.iter(|| black_box(store.observe(black_box("tracker"), &listed, true)))
    });
    g.finish();
}

criterion_group!(benches, pins);
criterion_main!(benches);
