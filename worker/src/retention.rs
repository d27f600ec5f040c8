//! Retention and erasure of the worker's own records: `worker prune` (and, with `RETENTION_DAYS`,
//! `worker run` once a day) deletes finished events, their log lines and idle coalescing rows older
//! than a cutoff; `worker erase` deletes one person's events, log lines and coalescing rows.
//!
//! Deletes run in batches of [`BATCH`] rows, one short transaction each, so no statement holds
//! locks for long. Users, their metadata and the outbox belong to the application and are never
//! touched; an event whose outbox rows are still pending is kept (the outbox names the event it
//! came from), and so is an event a worker is still processing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};
use tokio_util::sync::CancellationToken;

use crate::sync::ledger::EventStatus;

/// Rows deleted per statement.
pub const BATCH: i64 = 1000;

/// How long after `worker run` starts the first scheduled prune runs, and the time between two.
pub const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(60);
pub const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What a prune removed (and what it had to keep).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub events: u64,
    pub log_lines: u64,
    pub claims: u64,
    /// Finished events older than the cutoff kept because their outbox rows are still pending.
    pub kept_for_outbox: u64,
}

/// What an erasure removed (and what it had to keep).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub events: u64,
    pub log_lines: u64,
    pub claims: u64,
    /// The person's events kept because their outbox rows are still pending.
    pub kept_for_outbox: u64,
    /// The person's events kept because a worker is processing or retrying them.
    pub kept_in_flight: u64,
}

fn final_statuses() -> Vec<&'static str> {
    EventStatus::FINAL.iter().map(|s| s.as_str()).collect()
}

/// The statement deleting a batch of events chosen by `pick` (a query returning `event_id`s) and
/// their log lines; it returns (events, log lines) deleted.
fn delete_events_sql(pick: &str) -> String {
    format!(
        "with doomed as materialized ({pick}),
              lines as (delete from event_log where event_id in (select event_id from doomed) returning 1),
              events as (delete from webhook_events where event_id in (select event_id from doomed) returning 1)
         select (select count(*) from events), (select count(*) from lines)"
    )
}

/// Runs one batch after another until a batch deletes fewer than [`BATCH`] rows (by the first
/// count); returns both counts summed over the batches.
async fn in_batches<F, Fut>(mut batch: F) -> Result<(u64, u64), sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(u64, u64), sqlx::Error>>,
{
    let mut total = (0, 0);
    loop {
        let (rows, also) = batch().await?;
        total = (total.0 + rows, total.1 + also);
        if rows < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Pending outbox work names the event it came from: such events are kept.
const NO_PENDING_OUTBOX: &str =
    "not exists (select 1 from outbox o where o.event_id = w.event_id and o.status = 'pending')";

/// Deletes finished events that finished before `cutoff`, their log lines, and coalescing rows
/// untouched since `cutoff` (not running), batch by batch.
pub async fn prune(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Pruned, sqlx::Error> {
    let finals = final_statuses();
    let mut out = Pruned::default();
    let sql = delete_events_sql(&format!(
        "select w.event_id from webhook_events w
          where w.finished_at < $1 and w.status = any($2) and {NO_PENDING_OUTBOX}
          limit $3"
    ));
    (out.events, out.log_lines) = in_batches(|| async {
        let (events, lines): (i64, i64) = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(cutoff)
            .bind(&finals)
            .bind(BATCH)
            .fetch_one(pool)
            .await?;
        Ok((events as u64, lines as u64))
    })
    .await?;
    (out.claims, _) = in_batches(|| async {
        let n = sqlx::query(
            "delete from contact_syncs where key in (
                 select key from contact_syncs
                  where greatest(last_started_at, running_started_at, running_until) < $1
                  limit $2)",
        )
        .bind(cutoff)
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        Ok((n, 0))
    })
    .await?;
    out.kept_for_outbox = sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
        "select count(*) from webhook_events w
          where w.finished_at < $1 and w.status = any($2) and not ({NO_PENDING_OUTBOX})"
    )))
    .bind(cutoff)
    .bind(&finals)
    .fetch_one(pool)
    .await? as u64;
    Ok(out)
}

/// Deletes the events of `email` (matched as users are: `fold_email`), their log lines and the
/// coalescing rows of the address, batch by batch. Events still in flight or with pending outbox
/// rows are kept and counted.
pub async fn erase(pool: &PgPool, email: &str) -> Result<Erased, sqlx::Error> {
    let mut out = Erased::default();
    let in_flight = [EventStatus::Processing.as_str(), EventStatus::Retrying.as_str()];
    let sql = delete_events_sql(&format!(
        "select w.event_id from webhook_events w
          where fold_email(w.email) = fold_email($1) and w.status <> all($2) and {NO_PENDING_OUTBOX}
          limit $3"
    ));
    (out.events, out.log_lines) = in_batches(|| async {
        let (events, lines): (i64, i64) = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(email)
            .bind(&in_flight[..])
            .bind(BATCH)
            .fetch_one(pool)
            .await?;
        Ok((events as u64, lines as u64))
    })
    .await?;
    // The coalescing key is `action|folded e-mail|…`; a row whose lease is running is left alone.
    (out.claims, _) = in_batches(|| async {
        let n = sqlx::query(
            "delete from contact_syncs where key in (
                 select key from contact_syncs
                  where split_part(key, '|', 2) = fold_email($1)
                    and (running_until is null or running_until < now())
                  limit $2)",
        )
        .bind(email)
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        Ok((n, 0))
    })
    .await?;
    let (pending, flying): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "select count(*) filter (where not ({NO_PENDING_OUTBOX})),
                count(*) filter (where w.status = any($2))
           from webhook_events w where fold_email(w.email) = fold_email($1)"
    )))
    .bind(email)
    .bind(&in_flight[..])
    .fetch_one(pool)
    .await?;
    out.kept_for_outbox = pending as u64;
    out.kept_in_flight = flying as u64;
    Ok(out)
}

/// `worker run` with `RETENTION_DAYS`: prunes `first` after the start ([`FIRST_PRUNE_AFTER`]),
/// then every [`PRUNE_EVERY`], until `shutdown`.
pub async fn run_daily(pool: PgPool, days: u32, first: Duration, shutdown: CancellationToken) {
    let mut wait = first;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = PRUNE_EVERY;
        let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
        let pruned = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = prune(&pool, cutoff) => r,
        };
        match pruned {
            Ok(p) => tracing::info!(
                events = p.events,
                log_lines = p.log_lines,
                claims = p.claims,
                kept_for_outbox = p.kept_for_outbox,
                "pruned records older than RETENTION_DAYS={days}"
            ),
            Err(e) => tracing::warn!("pruning records older than RETENTION_DAYS={days} failed: {e} (next try in 24 h)"),
        }
    }
}
