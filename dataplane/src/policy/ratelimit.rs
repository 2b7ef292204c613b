//! Token buckets of the `rate_limit` rules, shared by every worker.
//!
//! Split into [`SHARDS`] shards by key hash: a worker locks one shard for the few tens of
//! nanoseconds a refill-and-take needs; there is no global lock. Each shard keeps at most
//! [`MAX_PER_SHARD`] buckets; when full, buckets that have refilled completely (idle ones
//! carry no state worth keeping) are dropped first. Buckets live as long as the compiled
//! policy: a reload starts them full.

use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SHARDS: usize = 32;
const MAX_PER_SHARD: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct Buckets {
    shards: Vec<Mutex<HashMap<(usize, u64), Bucket>>>,
    hasher: RandomState,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }
}

impl Buckets {
    pub fn hasher(&self) -> &RandomState {
        &self.hasher
    }

    /// Take one token from rule `rule`'s bucket `key`; `Err(wait)` when it is empty.
    pub fn take(&self, rule: usize, key: u64, per_sec: f64, burst: f64) -> Result<(), Duration> {
        self.take_at(rule, key, per_sec, burst, Instant::now())
    }

    fn take_at(&self, rule: usize, key: u64, per_sec: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let mut shard = self.shards[(key as usize ^ rule) % SHARDS].lock();
        if shard.len() >= MAX_PER_SHARD && !shard.contains_key(&(rule, key)) {
            shard.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst);
            if shard.len() >= MAX_PER_SHARD {
                // Every bucket is in use: forget the one idle longest.
                if let Some(k) = shard.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                    shard.remove(&k);
                }
            }
        }
        let b = shard.entry((rule, key)).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_at_rate() {
        let b = Buckets::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take_at(0, 7, 2.0, 3.0, t0).is_ok());
        }
        let wait = b.take_at(0, 7, 2.0, 3.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another key and another rule have their own buckets.
        assert!(b.take_at(0, 8, 2.0, 3.0, t0).is_ok());
        assert!(b.take_at(1, 7, 2.0, 3.0, t0).is_ok());
        // Half a second later one token is back, not more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take_at(0, 7, 2.0, 3.0, t1).is_ok());
        assert!(b.take_at(0, 7, 2.0, 3.0, t1).is_err());
    }

    #[test]
    fn a_full_shard_forgets_idle_buckets_not_busy_ones() {
        let b = Buckets::default();
        let t0 = Instant::now();
        // Fill one shard (keys that map to shard 0) with drained buckets, oldest first.
        let keys: Vec<u64> = (0..).map(|i: u64| i * SHARDS as u64).take(MAX_PER_SHARD).collect();
        let at = |i: usize| t0 + Duration::from_micros(i as u64);
        for (i, k) in keys.iter().enumerate() {
            b.take_at(0, *k, 1.0, 1.0, at(i)).unwrap();
        }
        // One more key: nothing has refilled, so the longest idle bucket goes; the shard stays bounded.
        let late = at(MAX_PER_SHARD);
        b.take_at(0, keys[MAX_PER_SHARD - 1] + SHARDS as u64, 1.0, 1.0, late).unwrap();
        assert_eq!(b.shards[0].lock().len(), MAX_PER_SHARD);
        assert!(!b.shards[0].lock().contains_key(&(0, keys[0])));
        // The most recently used bucket is kept and still refuses.
        assert!(b.take_at(0, keys[MAX_PER_SHARD - 1], 1.0, 1.0, late).is_err());
    }
}
