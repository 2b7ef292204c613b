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
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let rand = ((next_random() as u128) << 16 | (next_random() as u128 & 0xFFFF)) & ((1u128 << 80) - 1);
    let v = (ms & ((1u128 << 48) - 1)) << 80 | rand;
    let mut out = [0u8; 26];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as u32;
        *c = ALPHABET[((v >> shift) & 31) as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
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
}
