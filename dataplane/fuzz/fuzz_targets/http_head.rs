//! Request and response heads: never panic; a head that parses at once parses identically
//! when fed in two pieces.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::http::{body, Head, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_head_bytes: 4096 };
    let mut whole = Head::default();
    if let Ok(Some(n)) = whole.parse_request(data, limits) {
        let _ = body::request_body_kind(&whole);
        let mut again = Head::default();
        for split in [n / 2, n.saturating_sub(1)] {
            assert_eq!(again.parse_request(&data[..split], limits).ok().flatten(), None);
            assert_eq!(again.parse_request(data, limits), Ok(Some(n)));
            assert_eq!(again.target(), whole.target());
        }
    }
    let mut resp = Head::default();
    if let Ok(Some(_)) = resp.parse_response(data, limits) {
        let _ = body::response_body_kind(&resp, "GET");
    }
});
