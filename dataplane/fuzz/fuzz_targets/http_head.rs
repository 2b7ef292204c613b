//! Request and response heads: never panic; a head that parses at once parses identically
//! when fed in two pieces. Its `Host` check never panics, and its target's canonical path is a
//! fixed point without dot or empty segments.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::http::{body, origin::Hosts, path, Head, Limits};

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
        let _ = Hosts::default().check(&whole);
        if let Ok(Some(c)) = path::canonical(whole.target()) {
            assert_eq!(path::canonical(&c), Ok(None), "{c}");
            let p = c.split('?').next().unwrap_or("");
            let segs: Vec<&str> = p.split('/').skip(1).collect();
            assert!(p.starts_with('/') && segs.iter().rev().skip(1).all(|s| !s.is_empty() && *s != "." && *s != ".."), "{c}");
            whole.set_target(&c);
            assert_eq!(whole.target(), c);
        }
    }
    let mut resp = Head::default();
    if let Ok(Some(_)) = resp.parse_response(data, limits) {
        let _ = body::response_body_kind(&resp, "GET");
    }
});
