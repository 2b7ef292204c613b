//! The normaliser: any UTF-8 input; every range of whole normalised characters maps back to a
//! valid, ordered range of whole original characters, and invisible-character runs lie on
//! character boundaries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::detect::{invisible, normalize::normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let n = normalize(src);
    let t = &n.text;
    let mut starts: Vec<usize> = t.char_indices().map(|(i, _)| i).collect();
    starts.push(t.len());
    for w in starts.windows(2) {
        let (os, oe) = n.original(w[0], w[1]);
        assert!(os < oe && oe <= src.len() && src.is_char_boundary(os) && src.is_char_boundary(oe));
    }
    invisible::find(src, |_, s, e| assert!(s < e && src.is_char_boundary(s) && src.is_char_boundary(e)));
});
