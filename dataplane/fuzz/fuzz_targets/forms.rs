//! Request URLs, form bodies and multipart uploads, as the gateway splits them for inspection:
//! never panics; unchanged, each rebuilds byte for byte; with every text changed, the rebuilt
//! input splits into as many parts, holding exactly the new texts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use simd_json::prelude::*;
use simd_json::BorrowedValue;
use sluice::detect::multipart::Multipart;
use sluice::detect::url::Target;
use std::borrow::Cow;

/// Every string below `v` (and every object key, with `keys`) with `!` appended, as masking
/// might change them.
fn change(v: &mut BorrowedValue<'_>, keys: bool) {
    match v {
        BorrowedValue::String(s) => *s = Cow::Owned(format!("{s}!")),
        BorrowedValue::Array(a) => a.iter_mut().for_each(|x| change(x, keys)),
        BorrowedValue::Object(o) => {
            let members: Vec<_> = o.drain().collect();
            for (k, mut x) in members {
                change(&mut x, keys);
                o.insert(if keys { Cow::Owned(format!("{k}!")) } else { k }, x);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let t = Target::parse(text);
        let mut v = t.value();
        assert_eq!(t.rebuild(&v), text);
        let url = v.get_mut("url").unwrap();
        change(url.get_mut("path").unwrap(), true);
        change(url.get_mut("query").unwrap(), true);
        let out = t.rebuild(&v);
        assert_eq!(simd_json::to_string(&Target::parse(&out).value()).unwrap(), simd_json::to_string(&v).unwrap());

        let f = Target::form(text);
        let mut v = f.params_value();
        assert_eq!(f.rebuild_form(&v), text);
        change(&mut v, true);
        let out = f.rebuild_form(&v);
        assert_eq!(simd_json::to_string(&Target::form(&out).params_value()).unwrap(), simd_json::to_string(&v).unwrap());
    }
    if let Ok(m) = Multipart::parse(data, "XyZ") {
        let mut v = m.value();
        assert_eq!(m.rebuild(&v), data);
        // Contents only: a field name is rewritten inside its header, where an arbitrary name
        // (one holding a quote, say) would not read back the same; masked names hold no quote.
        change(&mut v, false);
        let out = m.rebuild(&v);
        let again = Multipart::parse(&out, "XyZ").expect("a rebuilt form splits again");
        assert_eq!(simd_json::to_string(&again.value()).unwrap(), simd_json::to_string(&v).unwrap());
    }
});
