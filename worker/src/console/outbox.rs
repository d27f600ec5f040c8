//! Outbox data: counts by kind and status, the pending and dead rows (newest first, keyset
//! pages), and retrying a dead row. The `secret` column (a sealed password) is never selected.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool, QueryBuilder};
use uuid::Uuid;

use super::ConsoleError;

pub const KINDS: [&str; 2] = ["password_return", "welcome_email"];
/// The statuses the Outbox page lists ("open" = pending or dead).
pub const LISTED: [&str; 2] = ["pending", "dead"];
pub const PAGE: i64 = 50;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub recipient: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub event_id: Uuid,
    pub user_id: i64,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, kind, status, recipient, attempts, next_attempt_at, last_error, event_id, user_id, created_at, sent_at";

#[derive(Debug, Default, Clone, Deserialize)]
pub struct OutboxQuery {
    pub kind: Option<String>,
    /// `pending`, `dead`, or empty for both.
    pub status: Option<String>,
    /// List rows with ids below this (the `next` of the previous page).
    pub before: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindCounts {
    pub kind: String,
    pub pending: i64,
    pub dead: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxPage {
    pub kind: Option<String>,
    pub status: Option<String>,
    pub counts: Vec<KindCounts>,
    pub rows: Vec<OutboxRow>,
    pub next: Option<i64>,
}

fn one_of(field: &str, v: &Option<String>, allowed: &[&str]) -> Result<Option<String>, ConsoleError> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) if allowed.contains(&s) => Ok(Some(s.to_string())),
        Some(_) => Err(ConsoleError::BadRequest(format!(
            "{field}: one of {}",
            allowed.join(", ")
        ))),
    }
}

pub async fn list(pool: &PgPool, query: &OutboxQuery) -> Result<OutboxPage, ConsoleError> {
    let kind = one_of("kind", &query.kind, &KINDS)?;
    let status = one_of("status", &query.status, &LISTED)?;
    let mut q = QueryBuilder::new(format!("select {COLUMNS} from outbox where "));
    match &status {
        Some(s) => q.push("status = ").push_bind(s.clone()),
        None => q.push("status in ('pending', 'dead')"),
    };
    if let Some(k) = &kind {
        q.push(" and kind = ").push_bind(k.clone());
    }
    if let Some(b) = query.before {
        q.push(" and id < ").push_bind(b);
    }
    q.push(" order by id desc limit ").push_bind(PAGE + 1);
    let mut rows: Vec<OutboxRow> = q.build_query_as().fetch_all(pool).await?;
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let found: Vec<(String, String, i64)> =
        sqlx::query_as("select kind, status, count(*) from outbox where status in ('pending', 'dead') group by 1, 2")
            .fetch_all(pool)
            .await?;
    let n = |k: &str, s: &str| found.iter().find(|r| r.0 == k && r.1 == s).map_or(0, |r| r.2);
    let counts = KINDS
        .iter()
        .map(|k| KindCounts {
            kind: k.to_string(),
            pending: n(k, "pending"),
            dead: n(k, "dead"),
        })
        .collect();
    Ok(OutboxPage {
        kind,
        status,
        counts,
        rows,
        next,
    })
}

/// The outbox rows of one event.
pub async fn for_event(pool: &PgPool, event_id: Uuid) -> Result<Vec<OutboxRow>, ConsoleError> {
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "select {COLUMNS} from outbox where event_id = $1 order by id"
    )))
    .bind(event_id)
    .fetch_all(pool)
    .await?)
}

/// What retrying a row did.
#[derive(Debug, Clone, Serialize)]
pub struct Retried {
    pub id: i64,
    /// False when the row was not dead (already retried, sent, or unknown): nothing changed.
    pub retried: bool,
}

/// Puts one dead row back to pending (the worker's own replay, for exactly this row).
pub async fn retry(pool: &PgPool, id: i64) -> Result<Retried, ConsoleError> {
    let n = crate::outbox::replay(pool, &[id]).await?;
    Ok(Retried { id, retried: n == 1 })
}
