//! The per-request cost of the session ids agents hold (`session::Ids`): opening the id a
//! request carries (every request of a session) and minting one for an answer that names the
//! upstream's session (`initialize`; servers that repeat the header on every answer); and the
//! identity told to an upstream (`forward_identity`): an assertion signed afresh, one reused
//! from the worker's cache, and the `headers` form; a new session when the store is full; and
//! an identity provider's answer held for the caller (token exchange, introspection); a
//! caller's JWT verified, and taken again from the verified-token cache.
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

fn forward_identity(c: &mut Criterion) {
    use sluice::identity::forward::{write_headers, Cache, Signer};
    use sluice::identity::Identity;
    // RFC 8032 test 1's secret key in PKCS#8 PEM.
    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    let signer = std::sync::Arc::new(Signer::from_pem(pem, "https://sluice.example".into(), std::time::Duration::from_secs(300)).expect("key"));
    let who = Identity { subject: "support-agent".into(), groups: vec!["support".into(), "readers".into()], agent_type: Some("assistant".into()), via: "jwt", claims: None };
    let session = sluice::ids::new_id();
    let mut g = c.benchmark_group("forward_identity");
    g.bench_function("sign", |b| b.iter(|| signer.sign(black_box(&who), Some(&session), "https://tickets.internal", std::time::SystemTime::now())));
    let mut cache = Cache::default();
    g.bench_function("cached", |b| b.iter(|| cache.assertion(black_box(&signer), "https://tickets.internal", black_box(&who), Some(&session))));
    let mut out = Vec::with_capacity(512);
    g.bench_function("headers", |b| {
        b.iter(|| {
            out.clear();
            write_headers(&mut out, black_box(&who), Some(&session));
        })
    });
    g.finish();
}

/// A new session when the store is full (`sessions.max_sessions` of 100,000): one is evicted
/// to make room — what every `initialize` costs while a gateway is at capacity.
fn store_at_capacity(c: &mut Criterion) {
    use sluice::session::{Session, Store};
    const MAX: usize = 100_000;
    let st = Store::default();
    for i in 0..MAX {
        st.insert(Session::new(&format!("s-{i}"), "r"), MAX);
    }
    let mut n = 0u64;
    c.bench_function("sessions/insert_at_capacity_100k", |b| {
        b.iter(|| {
            n += 1;
            st.insert(Session::new(&format!("new-{n}"), "r"), MAX);
        })
    });
    // The same with authenticated owners (1,000 callers): each insert also counts its
    // session in, and the evicted one out, for `sessions.max_per_caller`.
    let st = Store::default();
    let owned = |id: String, i: u64| {
        let mut s = Session::new(&id, "r");
        s.owner = Some(format!("agent-{}", i % 1000));
        s
    };
    for i in 0..MAX as u64 {
        st.insert(owned(format!("s-{i}"), i), MAX);
    }
    let mut n = 0u64;
    c.bench_function("sessions/insert_at_capacity_100k_owned", |b| {
        b.iter(|| {
            n += 1;
            st.insert(owned(format!("new-{n}"), n), MAX);
        })
    });
}

/// What a call pays when the identity provider's answer for its caller is held
/// (`oauth_token_exchange`, `[identity.introspection]`): the caller's token hashed (blake3) and
/// looked up in its shard — an 800-byte access token, 10,000 callers' answers held.
fn offload_held(c: &mut Criterion) {
    use sluice::offload::{Cache, Lookup};
    use std::sync::Arc;
    let cache: Arc<Cache<Arc<String>>> = Cache::new(1024, 65_536);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    cache.run("bench-offload", 1, Arc::new(move |input, _| (Ok(Arc::new(format!("answer for {}", input.len()))), Some(until))));
    let token = |i: usize| format!("{i:08}{}", "x".repeat(792));
    for i in 0..10_000 {
        loop {
            match cache.lookup(&token(i), None) {
                Lookup::Ready(_) => break,
                Lookup::Wait(_) => std::thread::yield_now(),
                Lookup::Failed(f) => panic!("{}", f.reason),
            }
        }
    }
    let held = token(4242);
    c.bench_function("offload/lookup_held_800B_token_10k_held", |b| b.iter(|| matches!(cache.lookup(black_box(&held), None), Lookup::Ready(_))));
}

/// A caller's JWT on every call: verified (EdDSA signature, claims), and the same token taken
/// again from the verified-token cache.
fn jwt(c: &mut Criterion) {
    use sluice::identity::{forward::Signer, jwks::Jwks, Identity, JwtCheck, Verified};
    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    let signer = Signer::from_pem(pem, "https://idp.example".into(), std::time::Duration::from_secs(3600)).expect("key");
    let j = JwtCheck {
        jwks: Jwks::with_keys("https://idp.example".into(), serde_json::from_value(signer.jwks()).expect("jwks")),
        audience: vec!["https://gw.example/mcp".into()],
        algorithms: vec![jsonwebtoken::Algorithm::EdDSA],
        skew_secs: 60,
        subject_claim: "sub".into(),
        groups_claim: "groups".into(),
        agent_type_claim: None,
        verified: Verified::default(),
    };
    let who = Identity { subject: "support-agent".into(), groups: vec!["support".into(), "readers".into()], agent_type: Some("assistant".into()), via: "jwt", claims: None };
    let token = signer.sign(&who, Some(&sluice::ids::new_id()), "https://gw.example/mcp", std::time::SystemTime::now());
    let mut g = c.benchmark_group("identity");
    g.bench_function("jwt_verify_eddsa", |b| b.iter(|| j.verify(black_box(&token)).is_ok()));
    g.bench_function("jwt_verified_before", |b| b.iter(|| j.check(black_box(&token)).is_ok()));
    g.finish();
}

criterion_group!(benches, ids, forward_identity, store_at_capacity, offload_held, jwt);
criterion_main!(benches);
