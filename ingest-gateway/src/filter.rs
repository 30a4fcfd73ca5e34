//! A Bloom filter of submission index keys, so that a new instanceID can be distinguished
//! from a known one without a store lookup.
//!
//! The bits are atomic words, so every request inserts and tests keys without a lock. The
//! filter never forgets a key and never reports an inserted key as absent. A key it never
//! saw is reported as maybe present at about the configured false positive rate, as long as
//! it holds no more keys than it was sized for.
//!
//! The k bit positions come from two 64-bit hashes combined as `h1 + i * h2` (double
//! hashing), which keeps the false positive rate of k independent hashes at the cost of two.
//! The hashers have random keys per process, since the filter lives only in memory, so
//! crafted keys cannot aim at one region of the filter.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// Maximum number of hash functions, whatever the requested rate. 16 gives a rate of about
/// 1.5e-5, and more only costs time on every lookup.
const MAX_HASHES: u32 = 16;

/// A fixed-size Bloom filter of strings, shared by reference between threads.
#[derive(Debug)]
pub struct KeyFilter {
    words: Box<[AtomicU64]>,
    bit_count: u64,
    hash_count: u32,
    first: RandomState,
    second: RandomState,
}

impl KeyFilter {
    /// Creates an empty filter sized for `expected_keys` keys at `false_positive_rate`
    /// (between 0 and 1, exclusive, which the configuration validates).
    pub fn new(expected_keys: u64, false_positive_rate: f64) -> Self {
        let keys = expected_keys.max(1) as f64;
        let rate = false_positive_rate.clamp(f64::MIN_POSITIVE, 0.5);
        let ln2 = std::f64::consts::LN_2;

        // The optimal size is -n ln p / (ln 2)^2 bits, with (m / n) ln 2 hash functions.
        let bits = (-keys * rate.ln() / (ln2 * ln2)).ceil().max(64.0);
        let word_count = (bits / 64.0).ceil() as usize;
        let bit_count = word_count as u64 * 64;
        let hash_count = ((bit_count as f64 / keys) * ln2).round() as u32;

        Self {
            words: (0..word_count).map(|_| AtomicU64::new(0)).collect(),
            bit_count,
            hash_count: hash_count.clamp(1, MAX_HASHES),
            first: RandomState::new(),
            second: RandomState::new(),
        }
    }

    /// Adds a key.
    pub fn insert(&self, key: &str) {
        for bit in self.positions(key) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// Returns false when the key was certainly never inserted, true when it may have been.
    pub fn may_contain(&self, key: &str) -> bool {
        self.positions(key).all(|bit| {
            self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }

    /// Returns the size of the bit array in bytes.
    pub fn size_bytes(&self) -> usize {
        self.words.len() * 8
    }

    fn positions(&self, key: &str) -> impl Iterator<Item = u64> + use<> {
        let start = self.first.hash_one(key);
        // An odd step is never a multiple of the even bit count, so the positions of one
        // key never collapse into one.
        let step = self.second.hash_one(key) | 1;
        let bit_count = self.bit_count;
        (0..u64::from(self.hash_count))
            .map(move |i| start.wrapping_add(i.wrapping_mul(step)) % bit_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_always_reported() {
        let filter = KeyFilter::new(1_000, 0.01);
        let keys: Vec<String> = (0..5_000).map(|i| format!("org/uuid:{i}")).collect();
        for key in &keys {
            filter.insert(key);
        }
        for key in &keys {
            assert!(filter.may_contain(key), "{key} was inserted");
        }
    }

    #[test]
    fn empty_filter_reports_nothing() {
        let filter = KeyFilter::new(1_000, 0.01);
        assert!(!filter.may_contain("org/uuid:1"));
        assert!(!filter.may_contain(""));
    }

    #[test]
    fn false_positive_rate_stays_near_target() {
        let filter = KeyFilter::new(10_000, 0.01);
        for i in 0..10_000 {
            filter.insert(&format!("org/known:{i}"));
        }
        let trials = 100_000;
        let false_positives = (0..trials)
            .filter(|i| filter.may_contain(&format!("org/unknown:{i}")))
            .count();
        // The expected count is 1,000, and three times that still fails a broken hash layout.
        assert!(
            false_positives < 3 * trials / 100,
            "{false_positives} of {trials} unknown keys reported as present"
        );
    }

    #[test]
    fn size_follows_keys_and_rate() {
        let filter = KeyFilter::new(1_000_000, 0.01);
        // 9.59 bits per key at 1%.
        assert!((1_190_000..1_210_000).contains(&filter.size_bytes()));
        assert_eq!(filter.hash_count, 7);
        assert_eq!(KeyFilter::new(0, 0.01).size_bytes(), 8);
    }

    #[test]
    fn filter_is_shared_between_threads() {
        let filter = KeyFilter::new(10_000, 0.01);
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let filter = &filter;
                scope.spawn(move || {
                    for i in 0..1_000 {
                        filter.insert(&format!("org/{thread}:{i}"));
                    }
                });
            }
        });
        for thread in 0..4 {
            for i in 0..1_000 {
                assert!(filter.may_contain(&format!("org/{thread}:{i}")));
            }
        }
    }
}
