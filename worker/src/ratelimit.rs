//! The App API rate limit shared by every worker: a token bucket in Postgres (`take_token`),
//! so that adding workers never adds 429s. A 429 blocks the bucket for everyone for its
//! Retry-After (`block_bucket`). Within one process, callers queue on a mutex so that only one
//! of them polls the database at a time.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

/// Bucket name of the App API budget.
pub const APP_API_KEY: &str = "cio_app_api";

pub struct RateLimiter {
    pool: Option<PgPool>,
    key: String,
    rate: f64,
    capacity: f64,
    local: Mutex<()>,
}

impl RateLimiter {
    /// A shared bucket of `rate` tokens/s. Its burst is half a second's worth, so that the
    /// Customer.io side (which allows a full second's burst) always keeps slack for jitter.
    pub fn shared(pool: PgPool, key: &str, rate: f64) -> Self {
        Self {
            pool: Some(pool),
            key: key.to_string(),
            rate,
            capacity: (rate / 2.0).max(1.0),
            local: Mutex::new(()),
        }
    }

    /// No limit at all (the simulator unthrottled, or tests of the client alone).
    pub fn unlimited() -> Self {
        Self {
            pool: None,
            key: String::new(),
            rate: 0.0,
            capacity: 0.0,
            local: Mutex::new(()),
        }
    }

    /// Waits for a token; returns how long it waited.
    pub async fn acquire(&self) -> Result<Duration, sqlx::Error> {
        let Some(pool) = &self.pool else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        let _turn = self.local.lock().await;
        loop {
            let wait: f64 = sqlx::query_scalar("select take_token($1, $2, $3)")
                .bind(&self.key)
                .bind(self.rate)
                .bind(self.capacity)
                .fetch_one(pool)
                .await?;
            if wait <= 0.0 {
                let waited = started.elapsed();
                metrics::histogram!("cio_rate_limiter_wait_seconds").record(waited.as_secs_f64());
                return Ok(waited);
            }
            tokio::time::sleep(Duration::from_secs_f64(wait.min(5.0))).await;
        }
    }

    /// Pauses every worker for `pause` (a 429's Retry-After, or a default).
    pub async fn block(&self, pause: Duration) -> Result<(), sqlx::Error> {
        if let Some(pool) = &self.pool {
            sqlx::query("select block_bucket($1, $2)")
                .bind(&self.key)
                .bind(pause.as_secs_f64())
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}
