//! Choosing among weighted destinations and endpoints: plain functions of
//! their inputs, with randomness and hash keys passed in.
//!
//! The sticky canary uses weighted rendezvous hashing: every candidate gets a
//! score from the key and its own name, scaled by its weight, and the highest
//! score wins. A key keeps its candidate for as long as the weights stay; when
//! a weight grows, only keys that now score higher on the grown candidate
//! move, and they move to it. Going from 90/10 to 80/20 therefore moves about
//! a tenth of the keys, all from v1 to v2, which a modulo or ring split over
//! the whole weight range cannot promise.

/// A stable 64-bit hash of bytes (FNV-1a, then a SplitMix64 finalizer to
/// spread the bits). Stable across processes, builds and versions, so a
/// restarted proxy keeps every session where it was.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finalizer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks one of `candidates` (name, weight) for `key` by weighted rendezvous
/// hashing. A weight of 0 is never picked; `None` when all are 0.
///
/// ```
/// use mesh_core::balance::{hash_key, sticky_pick};
/// let key = hash_key(b"session-42");
/// let first = sticky_pick([("v1", 90), ("v2", 10)], key);
/// assert_eq!(first, sticky_pick([("v1", 90), ("v2", 10)], key)); // always the same
/// assert_eq!(sticky_pick([("v1", 0), ("v2", 0)], key), None);
/// ```
pub fn sticky_pick<'a>(
    candidates: impl IntoIterator<Item = (&'a str, u32)>,
    key: u64,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (name, weight)) in candidates.into_iter().enumerate() {
        if weight == 0 {
            continue;
        }
        let h = mix(key ^ hash_key(name.as_bytes()));
        // A uniform draw in (0, 1): 53 random bits, never 0 nor 1.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(weight) / -u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Power of two choices: of two candidates drawn at random, the one with
/// fewer requests in flight (the first on a tie).
pub fn p2c(in_flight: &[usize], a: usize, b: usize) -> usize {
    if in_flight[b] < in_flight[a] { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Pinned: a change here would move every sticky session.
        assert_eq!(hash_key(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash_key(b"abc"), hash_key(b"abc"));
        assert_ne!(hash_key(b"abc"), hash_key(b"abd"));
    }

    #[test]
    fn sticky_split_follows_weights_and_moves_minimally() {
        let keys: Vec<u64> = (0..20_000u32)
            .map(|i| hash_key(format!("user-{i}").as_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| sticky_pick([("v1", 90), ("v2", 10)], *k).unwrap())
            .collect();
        let after: Vec<usize> = keys
            .iter()
            .map(|k| sticky_pick([("v1", 80), ("v2", 20)], *k).unwrap())
            .collect();
        let v2_before = before.iter().filter(|s| **s == 1).count();
        assert!((1_700..=2_300).contains(&v2_before), "{v2_before}");
        let moved: Vec<(usize, usize)> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        assert!(moved.iter().all(|m| *m == (0, 1)), "only v1 → v2 moves");
        let share = moved.len() as f64 / keys.len() as f64;
        assert!((0.09..=0.11).contains(&share), "{share}");
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        assert_eq!(p2c(&[3, 1], 0, 1), 1);
        assert_eq!(p2c(&[1, 3], 0, 1), 0);
        assert_eq!(p2c(&[2, 2], 1, 0), 1);
    }
}

/// Slow start (DestinationRule `loadBalancer.warmup`, Envoy's slow start
/// mode): an endpoint that joined a destination `age` ago, less than
/// `window`, is picked with its weight scaled by
/// `max(min_weight, (max(age, 1 s) / window) ^ (1 / aggression))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// How long slow start lasts.
    pub window: std::time::Duration,
    /// The smallest share of its weight an endpoint gets (0 to 1).
    pub min_weight: f64,
    /// The ramp's shape: 1 is linear.
    pub aggression: f64,
}

impl SlowStart {
    /// The share of its weight an endpoint that joined `age` ago gets:
    /// 1 once the window has passed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_core::balance::SlowStart;
    /// let s = SlowStart { window: Duration::from_secs(100), min_weight: 0.1, aggression: 1.0 };
    /// assert_eq!(s.factor(Duration::from_secs(0)), 0.1); // the floor
    /// assert!((s.factor(Duration::from_secs(50)) - 0.5).abs() < 1e-9);
    /// assert_eq!(s.factor(Duration::from_secs(100)), 1.0);
    /// ```
    pub fn factor(&self, age: std::time::Duration) -> f64 {
        if age >= self.window || self.window.is_zero() {
            return 1.0;
        }
        let time = age.as_secs_f64().max(1.0) / self.window.as_secs_f64();
        let ramp = time.powf(1.0 / self.aggression.max(f64::MIN_POSITIVE));
        ramp.max(self.min_weight).min(1.0)
    }
}
