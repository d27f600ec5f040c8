//! Throttled log lines: a line that could repeat on every request (a broker outage, a flood of
//! wrong keys) is written at most once a second, with the number of lines skipped since.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::millis;

#[derive(Default)]
pub struct Throttle {
    next: AtomicU64,
    skipped: AtomicU64,
}

impl Throttle {
    /// `Some(skipped)` when a line may be written now, `None` when it is to be skipped.
    pub fn allow(&self) -> Option<u64> {
        let now = millis();
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_then_silence_counting_what_was_skipped() {
        let t = Throttle::default();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        assert_eq!(t.skipped.load(Ordering::Relaxed), 2);
    }
}
