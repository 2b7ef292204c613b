//! SSE parsing: never panics, events are the same at every split point, and the raw bytes of
//! the events never exceed the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::sse::Parser;

fuzz_target!(|data: &[u8]| {
    let mut p = Parser::new(1 << 16);
    let mut whole = Vec::new();
    if p.feed(data, &mut whole).is_err() {
        return;
    }
    let split = data.len() / 3;
    let mut q = Parser::new(1 << 16);
    let mut parts = Vec::new();
    q.feed(&data[..split], &mut parts).unwrap();
    q.feed(&data[split..], &mut parts).unwrap();
    assert_eq!(whole.iter().map(|e| &e.data).collect::<Vec<_>>(), parts.iter().map(|e| &e.data).collect::<Vec<_>>());
    assert!(whole.iter().map(|e| e.raw.len()).sum::<usize>() <= data.len());
});
