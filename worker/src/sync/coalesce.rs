//! Coalescing duplicate webhooks (issue 6): a sync of a contact that *started* after a webhook was
//! received satisfies that webhook, so identical commands waiting in the queue do not each spend
//! Customer.io calls.
//!
//! Commands are identical when action, contact and parameters (role, tags, send_notification) are.
//! Before syncing, a command claims its key (`claim_sync`): if a finished sync of that key started
//! after the webhook arrived, the webhook is satisfied by it; if one is running, the command waits
//! for it; else it claims a lease and syncs. The claim is recorded as finished in the transaction
//! that writes the sync's effects, or released on failure. Times compare the ingress's
//! `received_at` with the database clock, with a margin for clock skew between hosts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::command::SyncV1;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// How long a claimed sync may run before another worker may take over.
pub const LEASE: Duration = Duration::from_secs(60);

/// Allowance for clocks differing between the ingress and the database hosts: a webhook counts
/// as satisfied only by a sync that started this much after it was received.
pub const CLOCK_SKEW_MARGIN: chrono::Duration = chrono::Duration::milliseconds(500);

/// The coalescing key of a command.
pub fn key(cmd: &SyncV1) -> String {
    let tags = cmd
        .tags
        .as_ref()
        .map(|t| t.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "-".into());
    format!(
        "{}|{}|{}|{}|{}|{}",
        cmd.action,
        cmd.contact.email.to_lowercase(),
        cmd.contact.cio_id.as_deref().unwrap_or("-"),
        cmd.role.as_deref().unwrap_or("-"),
        tags,
        cmd.send_notification
    )
}

/// A claimed sync: recorded by [`complete`] or [`release`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: String,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum Verdict {
    Satisfied { by: Uuid, status: String },
    Busy,
    Claimed(Claim),
}

pub async fn claim(pool: &PgPool, cmd: &SyncV1) -> Result<Verdict, sqlx::Error> {
    claim_key(pool, key(cmd), cmd.received_at, cmd.event_id).await
}

/// The protocol for any shared piece of work identified by `key` (also membership snapshots).
pub async fn claim_key(
    pool: &PgPool,
    key: String,
    received_at: DateTime<Utc>,
    claimer: Uuid,
) -> Result<Verdict, sqlx::Error> {
    let (verdict, event, status, started): (String, Option<Uuid>, Option<String>, Option<DateTime<Utc>>) =
        sqlx::query_as("select * from claim_sync($1, $2, $3, $4)")
            .bind(&key)
            .bind(received_at + CLOCK_SKEW_MARGIN)
            .bind(LEASE.as_secs_f64())
            .bind(claimer)
            .fetch_one(pool)
            .await?;
    Ok(match verdict.as_str() {
        "satisfied" => Verdict::Satisfied {
            by: event.unwrap_or_default(),
            status: status.unwrap_or_else(|| "succeeded".into()),
        },
        "busy" => Verdict::Busy,
        _ => Verdict::Claimed(Claim {
            key,
            started_at: started.unwrap_or_else(Utc::now),
        }),
    })
}

/// Claims, waiting while another sync of the same key runs (bounded by the lease).
pub async fn claim_waiting(pool: &PgPool, cmd: &SyncV1) -> Result<Verdict, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + LEASE + Duration::from_secs(5);
    let mut pause = Duration::from_millis(20);
    loop {
        match claim(pool, cmd).await? {
            Verdict::Busy if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            other => return Ok(other),
        }
    }
}

/// Records the finished sync (in the transaction of its effects). `data_from` is when the data it
/// used was read from Customer.io, if earlier than the claim (a shared membership snapshot).
pub async fn complete(
    conn: &mut PgConnection,
    claim: &Claim,
    data_from: Option<DateTime<Utc>>,
    event_id: Uuid,
    status: &str,
) -> Result<(), sqlx::Error> {
    let effective = data_from.map_or(claim.started_at, |d| d.min(claim.started_at));
    sqlx::query(
        "update contact_syncs set
             last_started_at = greatest(coalesce(last_started_at, $2), $2),
             last_event_id = case when $2 >= coalesce(last_started_at, $2) then $3 else last_event_id end,
             last_status = case when $2 >= coalesce(last_started_at, $2) then $4 else last_status end,
             running_until = case when running_started_at = $5 then null else running_until end,
             running_event_id = case when running_started_at = $5 then null else running_event_id end,
             running_started_at = case when running_started_at = $5 then null else running_started_at end
         where key = $1",
    )
    .bind(&claim.key)
    .bind(effective)
    .bind(event_id)
    .bind(status)
    .bind(claim.started_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives the claim up after a failure, so that a waiting duplicate can sync at once.
pub async fn release(pool: &PgPool, claim: &Claim) {
    let r = sqlx::query(
        "update contact_syncs set running_until = null, running_started_at = null, running_event_id = null
         where key = $1 and running_started_at = $2",
    )
    .bind(&claim.key)
    .bind(claim.started_at)
    .execute(pool)
    .await;
    if let Err(e) = r {
        tracing::warn!("could not release the sync claim ({e}); it expires with its lease");
    }
}
