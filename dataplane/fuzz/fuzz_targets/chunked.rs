//! Chunked decoding: never panics, and feeding byte by byte gives what feeding at once gives.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::http::body::{decode_all, ChunkedDecoder, Decoded};

fuzz_target!(|data: &[u8]| {
    let whole = decode_all(data);
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut result = Ok(None);
    for (i, b) in data.iter().enumerate() {
        match dec.decode(std::slice::from_ref(b)) {
            Ok((_, Decoded::Data(r))) => out.extend_from_slice(&data[i..i + 1][r]),
            Ok((_, Decoded::Done)) => {
                result = Ok(Some(std::mem::take(&mut out)));
                break;
            }
            Ok((_, Decoded::NeedMore)) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    assert_eq!(whole.is_ok(), result.is_ok());
    if let (Ok(Some(a)), Ok(Some(b))) = (&whole, &result) {
        assert_eq!(a, b);
    }
});
