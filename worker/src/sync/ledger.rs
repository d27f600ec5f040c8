//! The event lifecycle, for a whole batch at a time: start (record the attempt in `webhook_events`
//! and claim the sync), finish (status, user, log lines and the finished claim, inside the
//! transaction of the effects), fail (`retrying` or `dead` with the reason) and release.
//!
//! Coalescing: a sync of a contact that *started* after a webhook was received satisfies that
//! webhook, so identical commands waiting in the queue do not each spend Customer.io calls.
//! Commands are identical when action, contact and parameters (role, tags, send_notification)
//! are; that is their claim key in `contact_syncs`. Before syncing, a command claims its key: if a
//! finished sync of that key started after the webhook arrived, the webhook is satisfied by it; if
//! one is running, the command waits for it; else it takes a lease and syncs. Times compare the
//! ingress's `received_at` with the database clock, with a margin for clock skew between hosts.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use shared::command::SyncV1;
use sqlx::{postgres::types::PgInterval, PgConnection, PgPool};
use uuid::Uuid;

use crate::events::{EventLog, LogColumns};

/// How long a claimed sync may run before another worker may take over.
pub const LEASE: Duration = Duration::from_secs(60);

/// Allowance for clocks differing between the ingress and the database hosts: a webhook counts
/// as satisfied only by a sync that started this much after it was received.
pub const CLOCK_SKEW_MARGIN: chrono::Duration = chrono::Duration::milliseconds(500);

/// An event's status, stored as its snake_case name in `webhook_events.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Processing,
    Succeeded,
    NoUser,
    ContactNotFound,
    Rejected,
    Retrying,
    Dead,
}

impl EventStatus {
    /// After these an event is finished, and a redelivery changes nothing.
    pub const FINAL: [EventStatus; 4] = [
        EventStatus::Succeeded,
        EventStatus::NoUser,
        EventStatus::ContactNotFound,
        EventStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Processing => "processing",
            EventStatus::Succeeded => "succeeded",
            EventStatus::NoUser => "no_user",
            EventStatus::ContactNotFound => "contact_not_found",
            EventStatus::Rejected => "rejected",
            EventStatus::Retrying => "retrying",
            EventStatus::Dead => "dead",
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            EventStatus::Processing,
            EventStatus::Succeeded,
            EventStatus::NoUser,
            EventStatus::ContactNotFound,
            EventStatus::Rejected,
            EventStatus::Retrying,
            EventStatus::Dead,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown event status {s:?}"))
    }
}

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
        cmd.contact.email.folded(),
        cmd.contact.cio_id.as_deref().unwrap_or("-"),
        cmd.role.as_deref().unwrap_or("-"),
        tags,
        cmd.send_notification
    )
}

/// A claimed sync: recorded by [`finish`] with the outcome, or given up by [`release`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: String,
    pub started_at: DateTime<Utc>,
}

/// Where a command stands after a claim step.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// A redelivery of an event that had already finished with this status.
    AlreadyDone(EventStatus),
    /// A sync of the same command that started after this webhook arrived did the work.
    Satisfied { by: Uuid, status: EventStatus },
    /// Another sync of the same command is running now.
    Busy,
    /// This command syncs.
    Claimed(Claim),
}

/// What [`start`] needs of a command.
pub struct Starting<'a> {
    pub cmd: &'a SyncV1,
    pub key_label: Option<&'a str>,
}

/// Starts (`record`: counts an attempt in `webhook_events`) or re-claims (a command that found its
/// key busy) every command of a batch, in one round trip. One `(attempts, verdict)` per command,
/// in order.
pub async fn start(pool: &PgPool, commands: &[Starting<'_>], record: bool) -> Result<Vec<(i32, Verdict)>, sqlx::Error> {
    type Row = (
        i32,
        String,
        i32,
        Option<String>,
        Option<Uuid>,
        Option<String>,
        Option<DateTime<Utc>>,
    );
    let keys: Vec<String> = commands.iter().map(|c| key(c.cmd)).collect();
    let finals: Vec<&str> = EventStatus::FINAL.iter().map(|s| s.as_str()).collect();
    let margin = PgInterval::try_from(CLOCK_SKEW_MARGIN.to_std().expect("positive")).expect("small interval");
    let rows: Vec<Row> = sqlx::query_as("select * from start_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(commands.iter().map(|c| c.cmd.event_id).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.cmd.action.as_str()).collect::<Vec<_>>())
        .bind(
            commands
                .iter()
                .map(|c| c.cmd.contact.email.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(commands.iter().map(|c| c.cmd.received_at).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.key_label).collect::<Vec<_>>())
        .bind(&keys)
        .bind(margin)
        .bind(LEASE.as_secs_f64())
        .bind(&finals)
        .bind(record)
        .fetch_all(pool)
        .await?;
    let mut out: Vec<Option<(i32, Verdict)>> = vec![None; commands.len()];
    for (idx, status, attempts, verdict, by, by_status, started) in rows {
        let i = (idx - 1) as usize;
        let status = parse_status(&status)?;
        let v = match verdict.as_deref() {
            None => Verdict::AlreadyDone(status),
            Some("satisfied") => Verdict::Satisfied {
                by: by.unwrap_or_default(),
                status: by_status
                    .as_deref()
                    .map(parse_status)
                    .transpose()?
                    .unwrap_or(EventStatus::Succeeded),
            },
            Some("busy") => Verdict::Busy,
            Some(_) => Verdict::Claimed(Claim {
                key: keys[i].clone(),
                started_at: started.unwrap_or_else(Utc::now),
            }),
        };
        out[i] = Some((attempts, v));
    }
    out.into_iter()
        .map(|v| v.ok_or_else(|| sqlx::Error::Protocol("start_events skipped a command".into())))
        .collect()
}

fn parse_status(s: &str) -> Result<EventStatus, sqlx::Error> {
    s.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))
}

/// An event to close with its outcome.
pub struct Closing<'a> {
    pub log: &'a mut EventLog,
    pub status: EventStatus,
    pub user_id: Option<i64>,
    /// The reason of a `rejected` event.
    pub error: Option<String>,
    /// The sync's claim, recorded as finished.
    pub claim: Option<&'a Claim>,
    /// When the sync's data was read, if earlier than the claim (a shared snapshot).
    pub data_from: Option<DateTime<Utc>>,
}

/// Records the outcomes, writes the gathered log lines and records the finished claims, for every
/// event given, in one statement inside the transaction that made their effects.
pub async fn finish(conn: &mut PgConnection, events: &mut [Closing<'_>]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut logs = LogColumns::default();
    let (mut ids, mut statuses, mut users, mut errors) = (vec![], vec![], vec![], vec![]);
    let (mut keys, mut claim_events, mut claim_statuses, mut started, mut claimed) =
        (vec![], vec![], vec![], vec![], vec![]);
    for e in events.iter_mut() {
        let id = e.log.event_id();
        ids.push(id);
        statuses.push(e.status.as_str());
        users.push(e.user_id);
        errors.push(e.error.clone());
        if let Some(c) = e.claim {
            keys.push(c.key.clone());
            claim_events.push(id);
            claim_statuses.push(e.status.as_str());
            started.push(e.data_from.map_or(c.started_at, |d| d.min(c.started_at)));
            claimed.push(c.started_at);
        }
        e.log.drain_into(&mut logs);
    }
    sqlx::query(
        "with ev as (
             select * from unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[]) as t(event_id, status, user_id, error)
         ), finished as (
             update webhook_events w set status = ev.status, user_id = coalesce(ev.user_id, w.user_id),
                 finished_at = now(), last_error = ev.error, updated_at = now()
             from ev where w.event_id = ev.event_id
         ), claims as (
             select * from unnest($5::text[], $6::uuid[], $7::text[], $8::timestamptz[], $9::timestamptz[])
                 as c(key, event_id, status, started_at, claimed_at)
         ), synced as (
             update contact_syncs s set
                 last_started_at = greatest(coalesce(s.last_started_at, c.started_at), c.started_at),
                 last_event_id = case when c.started_at >= coalesce(s.last_started_at, c.started_at)
                                      then c.event_id else s.last_event_id end,
                 last_status = case when c.started_at >= coalesce(s.last_started_at, c.started_at)
                                    then c.status else s.last_status end,
                 running_until = case when s.running_started_at = c.claimed_at then null else s.running_until end,
                 running_event_id = case when s.running_started_at = c.claimed_at then null else s.running_event_id end,
                 running_started_at = case when s.running_started_at = c.claimed_at then null else s.running_started_at end
             from claims c where s.key = c.key
         )
         insert into event_log (event_id, at, level, message, context)
         select e, a, l, m, nullif(c, 'null'::jsonb)
         from unnest($10::uuid[], $11::timestamptz[], $12::text[], $13::text[], $14::jsonb[]) as t(e, a, l, m, c)",
    )
    .bind(ids)
    .bind(statuses)
    .bind(users)
    .bind(errors)
    .bind(keys)
    .bind(claim_events)
    .bind(claim_statuses)
    .bind(started)
    .bind(claimed)
    .bind(logs.event_id)
    .bind(logs.at)
    .bind(logs.level)
    .bind(logs.message)
    .bind(logs.context)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives claims up after a failure, so that a waiting duplicate can sync at once.
pub async fn release(pool: &PgPool, claims: &[&Claim]) {
    if claims.is_empty() {
        return;
    }
    let r = sqlx::query(
        "update contact_syncs s set running_until = null, running_started_at = null, running_event_id = null
         from unnest($1::text[], $2::timestamptz[]) as c(key, claimed_at)
         where s.key = c.key and s.running_started_at = c.claimed_at",
    )
    .bind(claims.iter().map(|c| c.key.clone()).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.started_at).collect::<Vec<_>>())
    .execute(pool)
    .await;
    if let Err(e) = r {
        tracing::warn!(
            "could not release {} sync claim(s) ({e}); they expire with their lease",
            claims.len()
        );
    }
}

/// A failed event: `retrying` or `dead`, with its reason.
pub struct Failing<'a> {
    pub cmd: &'a SyncV1,
    pub log: &'a mut EventLog,
    pub status: EventStatus,
    pub error: String,
}

/// Records failures with their reasons and flushes their log lines, in one statement. An event
/// whose start was never recorded (the database was down then) is recorded now.
pub async fn fail(pool: &PgPool, events: &mut [Failing<'_>]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut logs = LogColumns::default();
    let (mut ids, mut actions, mut emails, mut received, mut statuses, mut errors) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for e in events.iter_mut() {
        ids.push(e.cmd.event_id);
        actions.push(e.cmd.action.as_str());
        emails.push(e.cmd.contact.email.as_str());
        received.push(e.cmd.received_at);
        statuses.push(e.status.as_str());
        errors.push(e.error.clone());
        e.log.drain_into(&mut logs);
    }
    sqlx::query(
        "with ev as (
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])
                 as t(event_id, action, email, received_at, status, error)
         ), failed as (
             insert into webhook_events as w (event_id, action, email, status, attempts, received_at, last_error,
                                              first_failed_at, last_failed_at, finished_at)
             select event_id, action, email, status, 1, received_at, error, now(), now(),
                    case when status = 'dead' then now() end
             from ev
             on conflict (event_id) do update set status = excluded.status, last_error = excluded.last_error,
                 updated_at = now(), first_failed_at = coalesce(w.first_failed_at, now()), last_failed_at = now(),
                 finished_at = excluded.finished_at
         )
         insert into event_log (event_id, at, level, message, context)
         select e, a, l, m, nullif(c, 'null'::jsonb)
         from unnest($7::uuid[], $8::timestamptz[], $9::text[], $10::text[], $11::jsonb[]) as t(e, a, l, m, c)",
    )
    .bind(ids)
    .bind(actions)
    .bind(emails)
    .bind(received)
    .bind(statuses)
    .bind(errors)
    .bind(logs.event_id)
    .bind(logs.at)
    .bind(logs.level)
    .bind(logs.message)
    .bind(logs.context)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_as_written() {
        for s in [
            EventStatus::Processing,
            EventStatus::Succeeded,
            EventStatus::NoUser,
            EventStatus::ContactNotFound,
            EventStatus::Rejected,
            EventStatus::Retrying,
            EventStatus::Dead,
        ] {
            assert_eq!(s.as_str().parse::<EventStatus>(), Ok(s));
        }
        assert!("finished".parse::<EventStatus>().is_err());
    }
}
