//! The record of each webhook: its `webhook_events` row (status, attempts, errors) and its ordered,
//! human-readable `event_log`, in the spirit of WP Fusion's logs. Every line is also emitted
//! through `tracing` with the event id, so process logs and the table tell the same story.
//! Nothing secret is ever passed here: callers log what happened, never a password or a key.

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::command::SyncV1;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Statuses after which an event is finished and a redelivery changes nothing.
pub const FINAL_STATUSES: [&str; 4] = ["succeeded", "no_user", "contact_not_found", "rejected"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Notice,
    Warning,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Notice => "notice",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

struct Line {
    at: DateTime<Utc>,
    level: Level,
    message: String,
    context: Option<Value>,
}

/// The log lines as the columns `unnest` takes: times, levels, messages, contexts.
type Columns = (Vec<DateTime<Utc>>, Vec<&'static str>, Vec<String>, Vec<Value>);

/// Lines gathered while an event is processed, written in the same transaction as its effects.
pub struct EventLog {
    event_id: Uuid,
    lines: Vec<Line>,
}

impl EventLog {
    pub fn new(event_id: Uuid) -> Self {
        Self {
            event_id,
            lines: Vec::new(),
        }
    }

    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    pub fn push(&mut self, level: Level, message: impl Into<String>, context: Option<Value>) {
        let message = message.into();
        let id = self.event_id;
        match level {
            Level::Info | Level::Notice => tracing::info!(event_id = %id, "{message}"),
            Level::Warning => tracing::warn!(event_id = %id, "{message}"),
            Level::Error => tracing::error!(event_id = %id, "{message}"),
        }
        self.lines.push(Line {
            at: Utc::now(),
            level,
            message,
            context,
        });
    }

    pub fn info(&mut self, m: impl Into<String>) {
        self.push(Level::Info, m, None);
    }
    pub fn notice(&mut self, m: impl Into<String>) {
        self.push(Level::Notice, m, None);
    }
    pub fn warning(&mut self, m: impl Into<String>) {
        self.push(Level::Warning, m, None);
    }
    pub fn error(&mut self, m: impl Into<String>) {
        self.push(Level::Error, m, None);
    }

    /// The gathered lines as columns (and forgets them).
    fn take_columns(&mut self) -> Columns {
        let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for l in self.lines.drain(..) {
            cols.0.push(l.at);
            cols.1.push(l.level.as_str());
            cols.2.push(l.message);
            cols.3.push(l.context.unwrap_or(Value::Null));
        }
        cols
    }

    /// Writes the gathered lines (and forgets them).
    pub async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.lines.is_empty() {
            return Ok(());
        }
        let (at, level, message, context) = self.take_columns();
        sqlx::query(
            "insert into event_log (event_id, at, level, message, context)
             select $1, a, l, m, nullif(c, 'null'::jsonb)
             from unnest($2::timestamptz[], $3::text[], $4::text[], $5::jsonb[]) as t(a, l, m, c)",
        )
        .bind(self.event_id)
        .bind(at)
        .bind(level)
        .bind(message)
        .bind(context)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// A finished coalescing claim to record with the outcome (see `sync::coalesce`).
pub struct ClaimDone<'a> {
    pub key: &'a str,
    /// When the claim was taken (identifies it).
    pub claimed_at: DateTime<Utc>,
    /// When the sync's data was read (the claim time, or earlier for a shared snapshot).
    pub started_at: DateTime<Utc>,
}

/// Records the final outcome, writes the gathered log lines and, for a claimed sync, records it
/// as finished — in one statement, inside the transaction that made the event's effects.
pub async fn finish(
    conn: &mut PgConnection,
    event_id: Uuid,
    status: &str,
    user_id: Option<i64>,
    log: &mut EventLog,
    claim: Option<ClaimDone<'_>>,
) -> Result<(), sqlx::Error> {
    let (at, level, message, context) = log.take_columns();
    sqlx::query(
        "with finished as (
             update webhook_events set status = $2, user_id = coalesce($3, user_id), finished_at = now(),
                 last_error = case when $2 = 'rejected' then last_error else null end, updated_at = now()
             where event_id = $1
         ), synced as (
             update contact_syncs set
                 last_started_at = greatest(coalesce(last_started_at, $9), $9),
                 last_event_id = case when $9 >= coalesce(last_started_at, $9) then $1 else last_event_id end,
                 last_status = case when $9 >= coalesce(last_started_at, $9) then $2 else last_status end,
                 running_until = case when running_started_at = $10 then null else running_until end,
                 running_event_id = case when running_started_at = $10 then null else running_event_id end,
                 running_started_at = case when running_started_at = $10 then null else running_started_at end
             where key = $8
         )
         insert into event_log (event_id, at, level, message, context)
         select $1, a, l, m, nullif(c, 'null'::jsonb)
         from unnest($4::timestamptz[], $5::text[], $6::text[], $7::jsonb[]) as t(a, l, m, c)",
    )
    .bind(event_id)
    .bind(status)
    .bind(user_id)
    .bind(at)
    .bind(level)
    .bind(message)
    .bind(context)
    .bind(claim.as_ref().map(|c| c.key))
    .bind(claim.as_ref().map(|c| c.started_at))
    .bind(claim.as_ref().map(|c| c.claimed_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failure (`retrying` or `dead`) with its reason, and flushes the log lines.
pub async fn fail(
    pool: &PgPool,
    log: &mut EventLog,
    cmd: Option<&SyncV1>,
    status: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(cmd) = cmd {
        sqlx::query(
            "insert into webhook_events (event_id, action, email, status, attempts, received_at)
             values ($1, $2, $3, 'processing', 1, $4) on conflict (event_id) do nothing",
        )
        .bind(cmd.event_id)
        .bind(cmd.action.as_str())
        .bind(&cmd.contact.email)
        .bind(cmd.received_at)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "update webhook_events set status = $2, last_error = $3, updated_at = now(),
             first_failed_at = coalesce(first_failed_at, now()), last_failed_at = now(),
             finished_at = case when $2 = 'dead' then now() else null end
         where event_id = $1",
    )
    .bind(log.event_id())
    .bind(status)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    log.flush(&mut tx).await?;
    tx.commit().await
}
