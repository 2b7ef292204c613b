//! The masker over JSON: any JSON document scanned and masked with every strategy stays valid
//! JSON (that no found value survives is `masked_json_is_valid_and_clean` in `detect/json.rs`).
//! One scanner and one set of walk buffers serve every input, as on a core of the gateway.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::detect::engine::{Engine, Scanner};
use sluice::detect::json::{Buffers, Walk};
use sluice::detect::mask::{Masker, Plan, Strategy};
use sluice::detect::rules::{default_dir, load_dir};
use std::cell::RefCell;
use std::sync::OnceLock;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::compile(load_dir(&default_dir()).unwrap()).unwrap())
}

thread_local! {
    static STATE: RefCell<(Scanner, Buffers)> = RefCell::new((engine().scanner().unwrap(), Buffers::default()));
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
    let mut found = Vec::new();
    STATE.with_borrow_mut(|(sc, bufs)| walk.run(sc, bufs, &mut v, &mut found));
    let out = simd_json::to_string(&v).unwrap();
    let _: serde_json::Value = serde_json::from_str(&out).expect("masked output is valid JSON");
});
