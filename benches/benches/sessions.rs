//! The per-request cost of the session ids agents hold (`session::Ids`): opening the id a
//! request carries (every request of a session) and minting one for an answer that names the
//! upstream's session (`initialize`; servers that repeat the header on every answer).
//! Run: `cargo bench -p sluice-benches --bench sessions`.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::session::Ids;
use std::hint::black_box;

fn ids(c: &mut Criterion) {
    let ids = Ids::from_material(b"0123456789abcdef0123456789abcdef");
    let gid = sluice::ids::new_id();
    // A UUID, as the official SDK servers choose.
    let upstream = "3f2c8a1e-9b7d-4c55-8e21-6d0f4a9b7c13";
    let held = ids.mint("tools", Some("support-agent"), &gid, upstream);
    let mut g = c.benchmark_group("session_ids");
    g.bench_function("open", |b| b.iter(|| ids.open(black_box("tools"), black_box(Some("support-agent")), black_box(&held)).is_ok()));
    g.bench_function("open_refused", |b| b.iter(|| ids.open(black_box("tools"), black_box(Some("intern-agent")), black_box(&held)).is_err()));
    g.bench_function("mint", |b| b.iter(|| ids.mint(black_box("tools"), black_box(Some("support-agent")), black_box(&gid), black_box(upstream))));
    g.finish();
}

criterion_group!(benches, ids);
criterion_main!(benches);
