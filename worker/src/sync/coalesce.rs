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
    Ok(to_verdict(&verdict, event, status, started, key))
}

/// Records the attempt in `webhook_events` and takes one claim step, in one round trip.
/// `Err(status)` when the event had already finished with `status`.
pub async fn start_event(pool: &PgPool, cmd: &SyncV1) -> Result<(i32, Result<Verdict, String>), sqlx::Error> {
    type Row = (
        String,
        i32,
        Option<String>,
        Option<Uuid>,
        Option<String>,
        Option<DateTime<Utc>>,
    );
    let key = key(cmd);
    let (status, attempts, verdict, by, by_status, started): Row =
        sqlx::query_as("select * from start_event($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(cmd.event_id)
            .bind(cmd.action.as_str())
            .bind(&cmd.contact.email)
            .bind(cmd.received_at)
            .bind(&crate::events::FINAL_STATUSES[..])
            .bind(&key)
            .bind(cmd.received_at + CLOCK_SKEW_MARGIN)
            .bind(LEASE.as_secs_f64())
            .fetch_one(pool)
            .await?;
    let Some(verdict) = verdict else {
        return Ok((attempts, Err(status)));
    };
    Ok((attempts, Ok(to_verdict(&verdict, by, by_status, started, key))))
}

fn to_verdict(
    verdict: &str,
    by: Option<Uuid>,
    status: Option<String>,
    started: Option<DateTime<Utc>>,
    key: String,
) -> Verdict {
    match verdict {
        "satisfied" => Verdict::Satisfied {
            by: by.unwrap_or_default(),
            status: status.unwrap_or_else(|| "succeeded".into()),
        },
        "busy" => Verdict::Busy,
        _ => Verdict::Claimed(Claim {
            key,
            started_at: started.unwrap_or_else(Utc::now),
        }),
    }
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

/// Records a finished claim that has no event of its own (a membership snapshot), in the
/// transaction of its effects. Commands record theirs with their outcome (`events::finish`).
pub async fn complete(
    conn: &mut PgConnection,
    claim: &Claim,
    data_from: Option<DateTime<Utc>>,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    let done = crate::events::ClaimDone {
        key: &claim.key,
        claimed_at: claim.started_at,
        started_at: data_from.map_or(claim.started_at, |d| d.min(claim.started_at)),
    };
    crate::events::finish(
        conn,
        id,
        "succeeded",
        None,
        &mut crate::events::EventLog::new(id),
        Some(done),
    )
    .await
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
