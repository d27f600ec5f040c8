//! A monotonic clock in milliseconds since the process started, cheap enough to read on every
//! read of a socket and to keep in atomics.

use std::{sync::OnceLock, time::Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process.
pub fn millis() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
