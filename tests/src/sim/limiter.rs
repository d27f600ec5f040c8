//! Token-bucket rate limiter, one bucket per credential (capacity = rate, refill rate/s).

use std::collections::HashMap;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub(crate) struct Limiter {
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    /// Take one token from `key`'s bucket; `false` when empty. A `rate` of 0 never limits.
    pub fn try_acquire(&mut self, key: &str, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let cap = f64::from(rate);
        let now = Instant::now();
        let b = self
            .buckets
            .entry(key.to_string())
            .or_insert(Bucket { tokens: cap, last: now });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * cap).min(cap);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_empty() {
        let mut l = Limiter::default();
        let ok = (0..15).filter(|_| l.try_acquire("k", 10)).count();
        assert!((10..=11).contains(&ok), "{ok}");
        assert!(l.try_acquire("other", 10));
        assert!((0..100).all(|_| l.try_acquire("k", 0)));
    }
}
