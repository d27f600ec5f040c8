//! Overview data: queue depths and consumers, the shared App API budget (how long a worker would
//! wait for a token now), the outbox backlog, and events per minute by outcome over the last hour.

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{broker::Broker, events::STATUSES, ConsoleError};
use crate::{dlq, ratelimit::APP_API_KEY};

/// Minutes shown by the chart.
pub const MINUTES: usize = 60;

#[derive(Debug, Clone, Serialize)]
pub struct Queues {
    /// Commands waiting for a worker.
    pub commands: u32,
    /// Workers consuming the commands queue.
    pub consumers: u32,
    /// Commands waiting out a retry delay (all tiers).
    pub retries: u32,
    pub dead: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimiter {
    /// App API requests/s shared by all workers.
    pub rate: f64,
    /// Tokens in the bucket now (refilled at `rate` per second, up to half a second's worth).
    pub tokens: f64,
    /// Seconds a worker asking now would wait for a token (0: none).
    pub wait_seconds: f64,
    /// Set while a 429's Retry-After pauses every worker.
    pub paused_until: Option<DateTime<Utc>>,
}

/// Events received in one minute, by their status now.
#[derive(Debug, Clone, Serialize)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    /// Counts in the order of [`STATUSES`].
    pub counts: Vec<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Absent when RabbitMQ could not be asked (the page says so).
    pub queues: Option<Queues>,
    pub rate_limiter: RateLimiter,
    pub outbox_pending: i64,
    pub outbox_dead: i64,
    /// The statuses in the order of each minute's `counts`.
    pub statuses: Vec<String>,
    /// The last [`MINUTES`] minutes, oldest first, the current minute last.
    pub per_minute: Vec<Minute>,
}

async fn queues(broker: &Broker) -> anyhow::Result<Queues> {
    let ch = broker.channel().await?;
    let names = &broker.names;
    let commands = dlq::queue_info(&ch, &names.commands_queue()).await?;
    let mut retries = 0;
    for (tier, variant, _) in shared::topology::retry_slots() {
        retries += dlq::queue_depth(&ch, &names.retry_queue(&format!("{tier}.{variant}"))).await?;
    }
    let dead = dlq::queue_depth(&ch, &names.dead_queue()).await?;
    let _ = ch.close(200, "done".into()).await;
    Ok(Queues {
        commands: commands.message_count(),
        consumers: commands.consumer_count(),
        retries,
        dead,
    })
}

/// The bucket's state computed as `take_token` would, without taking a token.
async fn rate_limiter(pool: &PgPool, rate: f64) -> Result<RateLimiter, ConsoleError> {
    type Bucket = (f64, DateTime<Utc>, Option<DateTime<Utc>>, DateTime<Utc>);
    let row: Option<Bucket> =
        sqlx::query_as("select tokens, updated_at, blocked_until, clock_timestamp() from rate_limits where key = $1")
            .bind(APP_API_KEY)
            .fetch_optional(pool)
            .await?;
    let capacity = (rate / 2.0).max(1.0);
    let Some((tokens, updated, blocked, now)) = row else {
        return Ok(RateLimiter {
            rate,
            tokens: capacity,
            wait_seconds: 0.0,
            paused_until: None,
        });
    };
    let paused_until = blocked.filter(|b| *b > now);
    let elapsed = (now - updated).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
    let available = (tokens + elapsed * rate).min(capacity);
    let refill = if available >= 1.0 {
        0.0
    } else {
        (1.0 - available) / rate
    };
    let pause = paused_until.map_or(0.0, |b| (b - now).num_milliseconds() as f64 / 1000.0);
    Ok(RateLimiter {
        rate,
        tokens: available.max(0.0),
        wait_seconds: pause.max(refill),
        paused_until,
    })
}

async fn per_minute(pool: &PgPool) -> Result<Vec<Minute>, ConsoleError> {
    let now: DateTime<Utc> = sqlx::query_scalar("select now()").fetch_one(pool).await?;
    let last = now.duration_trunc(Duration::minutes(1)).expect("a minute divides time");
    let first = last - Duration::minutes(MINUTES as i64 - 1);
    let rows: Vec<(DateTime<Utc>, String, i64)> = sqlx::query_as(
        "select date_trunc('minute', received_at), status, count(*) from webhook_events
         where received_at >= $1 group by 1, 2",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    Ok((0..MINUTES as i64)
        .map(|i| {
            let minute = first + Duration::minutes(i);
            let counts = STATUSES
                .iter()
                .map(|s| {
                    rows.iter()
                        .filter(|(m, st, _)| *m == minute && st == s)
                        .map(|r| r.2)
                        .sum()
                })
                .collect();
            Minute { minute, counts }
        })
        .collect())
}

pub async fn load(pool: &PgPool, broker: &Broker, app_rate: f64) -> Result<Overview, ConsoleError> {
    let queues = match queues(broker).await {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!("console: cannot read the queues: {e:#}");
            None
        }
    };
    let (outbox_pending, outbox_dead): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'pending'), count(*) filter (where status = 'dead')
         from outbox where status in ('pending', 'dead')",
    )
    .fetch_one(pool)
    .await?;
    Ok(Overview {
        queues,
        rate_limiter: rate_limiter(pool, app_rate).await?,
        outbox_pending,
        outbox_dead,
        statuses: STATUSES.iter().map(|s| s.to_string()).collect(),
        per_minute: per_minute(pool).await?,
    })
}
