//! Time-ordered identifiers (ULID layout: 48-bit milliseconds, 80 random bits, Crockford
//! base32), so that ids sort by creation time in logs, events and the archive.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_le_bytes());
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    if let Ok(b) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(&b);
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([7; 8]))
}

/// splitmix64: fast, per-thread, not for secrets (ids are not secrets; session ids chosen by
/// upstream servers are used for routing, these only name records).
fn next_random() -> u64 {
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A new 26-character time-ordered id.
pub fn new_id() -> String {
    new_id_at(SystemTime::now())
}

/// A new id ordered by `at` (a caller that also stamps the record reads the clock once).
pub fn new_id_at(at: SystemTime) -> String {
    let ms = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let rand = ((next_random() as u128) << 16 | (next_random() as u128 & 0xFFFF)) & ((1u128 << 80) - 1);
    let v = (ms & ((1u128 << 48) - 1)) << 80 | rand;
    let mut out = String::with_capacity(26);
    push_base32(&mut out, v);
    out
}

/// Append `v` as 26 Crockford base32 characters (the top 2 of its 130 bits are zero).
pub fn push_base32(out: &mut String, v: u128) {
    for i in 0..26u32 {
        out.push(ALPHABET[((v >> (125 - 5 * i)) & 31) as usize] as char);
    }
}

/// The value of 26 Crockford base32 characters as written by [`push_base32`] (upper case,
/// no substitutes), or `None`.
pub fn parse_base32(s: &str) -> Option<u128> {
    if s.len() != 26 {
        return None;
    }
    let mut v: u128 = 0;
    let mut bad = 0u8;
    for b in s.bytes() {
        let d = DIGIT[b as usize];
        bad |= d;
        v = v << 5 | (d & 31) as u128;
    }
    // A byte outside the alphabet, or a first character above 7: it holds the top 3 bits
    // only (26 × 5 = 130 > 128).
    (bad < 32 && DIGIT[s.as_bytes()[0] as usize] <= 7).then_some(v)
}

/// Each byte's base32 value, or 0x80 for a byte outside [`ALPHABET`].
const DIGIT: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Fill `buf` from the kernel's random source (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) {
    // SAFETY: getrandom(2) writes at most `buf.len()` bytes into the valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, buf.len() as isize, "getrandom failed");
}

/// A random key made once per process, for keys a deployment did not configure: they stay the
/// same across configuration reloads (a key made per load would change fingerprints and end
/// every session at each reload), and only a restart changes them. `purpose` separates the keys
/// derived from it.
pub fn process_key(purpose: &str) -> [u8; 32] {
    static ROOT: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let mut k = [0u8; 32];
        random_bytes(&mut k);
        k
    });
    blake3::derive_key(purpose, root)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = super::new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_id();
        assert_eq!(a.len(), 26);
        assert!(a < b, "{a} {b}");
        let many: std::collections::HashSet<_> = (0..10_000).map(|_| super::new_id()).collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn base32_round_trips_and_refuses_what_it_does_not_write() {
        for v in [0u128, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            let mut s = String::new();
            super::push_base32(&mut s, v);
            assert_eq!(super::parse_base32(&s), Some(v), "{s}");
        }
        let mut s = String::new();
        super::push_base32(&mut s, u128::MAX);
        assert_eq!(&s[..1], "7");
        for bad in ["8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0000000000000000000000000I", "000000000000000000000000a0", "0000000000000000000000000", "000000000000000000000000000", "00000000000000000000000\u{e9}"] {
            assert_eq!(super::parse_base32(bad), None, "{bad}");
        }
    }

    #[test]
    fn process_keys_are_stable_and_separated_by_purpose() {
        let a = super::process_key("sluice test a");
        assert_eq!(a, super::process_key("sluice test a"), "one key per purpose for the whole process");
        assert_ne!(a, super::process_key("sluice test b"));
    }
}
