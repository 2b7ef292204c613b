//! JSON-RPC classification: never panics; whatever parses re-encodes to JSON that parses and
//! classifies the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::jsonrpc;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let Ok(body) = jsonrpc::parse(&mut buf) else { return };
    let mut out = Vec::new();
    jsonrpc::encode(&body.values, body.batch, &mut out);
    let again = jsonrpc::parse(&mut out).expect("re-encoded body parses");
    assert_eq!(again.infos, body.infos);
});
