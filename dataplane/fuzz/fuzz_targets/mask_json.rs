//! The masker over JSON: any JSON document scanned and masked with every strategy stays valid
//! JSON of the same shape — every object keeps its members (keys with findings are renamed,
//! never merged), every array its length. That no found value survives is
//! `masked_json_is_valid_and_clean` in `detect/json.rs`.
//! One scanner and one set of walk buffers serve every input, as on a core of the gateway.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::detect::engine::{Engine, Scanner};
use sluice::detect::json::{Buffers, Walk};
use sluice::detect::mask::{Masker, Plan, Strategy};
use sluice::detect::rules::{default_dir, load_dir};
use simd_json::BorrowedValue;
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
    let before = shape(&v);
    let walk = Walk { engine: e, mask: Some(Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true }), skip_binary: data[0] / 5 % 2 == 0 };
    let mut found = Vec::new();
    STATE.with_borrow_mut(|(sc, bufs)| walk.run(sc, bufs, &mut v, &mut found));
    let out = simd_json::to_string(&v).unwrap();
    let _: serde_json::Value = serde_json::from_str(&out).expect("masked output is valid JSON");
    let mut out = out.into_bytes();
    let again = simd_json::to_borrowed_value(&mut out).expect("masked output parses again");
    assert_eq!(shape(&again), before, "masking changed the document's shape");
});

/// The document's tree with the leaves left out: member counts and array lengths (an object's
/// members in sorted order, since a large object's order is its hash table's).
fn shape(v: &BorrowedValue<'_>) -> String {
    match v {
        BorrowedValue::Object(m) => {
            let mut members: Vec<String> = m.values().map(shape).collect();
            members.sort_unstable();
            format!("{{{}}}", members.join(","))
        }
        BorrowedValue::Array(a) => format!("[{}]", a.iter().map(shape).collect::<Vec<_>>().join(",")),
        _ => ".".into(),
    }
}
