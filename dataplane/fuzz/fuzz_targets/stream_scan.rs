//! Streamed masking: any bytes, split at a fuzzer-chosen point, give the same masked output
//! as the same bytes in one chunk (an invisible-character run split by a chunk boundary is
//! still one run, judged by the characters around it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::detect::engine::Engine;
use sluice::detect::mask::{Masker, Plan};
use sluice::detect::rules::{default_dir, load_dir};
use sluice::detect::stream::mask_chunks;
use std::sync::OnceLock;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::compile(load_dir(&default_dir()).unwrap()).unwrap())
}

fn run(chunks: &[&[u8]]) -> Vec<u8> {
    let e = engine();
    let masker = Masker::new([5; 32], "[MASKED]");
    let strategies = e.default_strategies();
    let plan = Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true };
    mask_chunks(e, Some(plan), chunks).unwrap().0
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let at = data[0] as usize % data.len();
    let body = &data[1..];
    let at = at.min(body.len());
    assert_eq!(run(&[body]), run(&[&body[..at], &body[at..]]));
});
