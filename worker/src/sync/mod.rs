//! The pipeline: a batch of commands in, one settlement per command out. Production (`consumer`)
//! and the tests both call [`process`]; a single command is a batch of one.
//!
//! 1. **Start** ([`ledger`]): one round trip records every event's attempt and claims its sync;
//!    a redelivered finished event changes nothing, a duplicate already satisfied is closed, and a
//!    duplicate whose twin is running waits for it (bounded).
//! 2. **Read** ([`bulk_read`], [`snapshot`]): the claimed commands' contacts from Customer.io,
//!    batched when that saves calls, before any transaction (no lock is held across the network);
//!    new users' passwords are hashed here too.
//! 3. **Write** ([`write`]): users, meta, segments, outbox rows, event logs and outcomes of the whole
//!    batch in one transaction of a few set-based statements. Contacts are locked in one global
//!    order, so that many `add`s for one contact on many workers give exactly one user; the unique
//!    indexes are the backstop. If the transaction fails, each command is written on its own, so
//!    one bad command cannot fail the others.
//! 4. **Settle**: failures are recorded (`retrying` with the delay, or `dead`) in one statement.

pub mod bulk_read;
pub mod ledger;
pub mod snapshot;
pub mod store;
mod users;
mod write;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures_util::{stream, StreamExt};
use serde_json::json;
use shared::{
    command::{Action, SyncV1},
    topology::{self, RetrySlot, RETRY_TIERS},
};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    cio::{types::Customer, CioClient, CioError, PersonRef},
    events::{EventLog, Level},
    fieldmap::{FieldMap, Mapped},
    password::{Hasher, Prepared},
    secretbox::SecretBox,
};
use ledger::{Claim, EventStatus, Verdict};
use store::{Lookup, UserRow};

/// Password return settings (`RETURN_PASSWORD_FIELD` and `SECRETS_KEY`).
#[derive(Clone)]
pub struct PasswordReturn {
    pub field: String,
    pub secrets: SecretBox,
}

/// Everything the pipeline needs, shared by all batches of a worker.
pub struct SyncCtx {
    pub pool: PgPool,
    pub cio: CioClient,
    pub field_map: FieldMap,
    pub default_role: String,
    pub password_length: usize,
    pub password_return: Option<PasswordReturn>,
    pub mail_enabled: bool,
    /// Woken after a commit that queued outbox rows, so that delivery starts at once.
    pub outbox_wakeup: Arc<Notify>,
    /// Segment membership snapshots (batched segment reads).
    pub snapshots: snapshot::Snapshots,
    /// Password hashing, at most one per core at a time.
    pub hasher: Hasher,
    /// Customer.io calls one batch makes at once when it reads contact by contact.
    pub parallel: usize,
    /// Attempts of one command before it is dead-lettered.
    pub max_attempts: u32,
}

/// A command to process, with what its delivery says about it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub cmd: SyncV1,
    /// This delivery's attempt, from 1.
    pub attempt: u32,
    /// The label of the access key the webhook came with.
    pub key_label: Option<String>,
}

/// How an event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        user_id: i64,
        created: bool,
    },
    NoUser,
    ContactNotFound,
    Rejected(String),
    /// A redelivery of an event that had already finished with this status.
    AlreadyDone(EventStatus),
    /// Coalesced: a sync of the same command that started after this webhook arrived did the work.
    Satisfied {
        by: Uuid,
        status: EventStatus,
    },
}

impl Outcome {
    pub fn status(&self) -> EventStatus {
        match self {
            Outcome::Succeeded { .. } => EventStatus::Succeeded,
            Outcome::NoUser => EventStatus::NoUser,
            Outcome::ContactNotFound => EventStatus::ContactNotFound,
            Outcome::Rejected(_) => EventStatus::Rejected,
            Outcome::AlreadyDone(s) | Outcome::Satisfied { status: s, .. } => *s,
        }
    }
}

/// Why an event could not finish now.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Worth retrying later (Customer.io 429/5xx/timeouts, database trouble).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Needs an operator first (e.g. Customer.io refused the credentials); parked in the DLQ.
    Permanent { reason: String },
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. } | Failure::Permanent { reason } => reason,
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Transient {
            reason: format!("database error: {e}"),
            retry_after: None,
        }
    }
}

impl From<CioError> for Failure {
    fn from(e: CioError) -> Self {
        if e.is_transient() {
            Failure::Transient {
                retry_after: e.retry_after(),
                reason: e.to_string(),
            }
        } else {
            Failure::Permanent { reason: e.to_string() }
        }
    }
}

/// What the consumer does with a delivery once its command was processed (already recorded in
/// the database).
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Finished: acknowledge.
    Done(Outcome),
    /// Failed for now: publish to this delayed-retry slot, then acknowledge.
    Retry { reason: String, slot: RetrySlot },
    /// Failed for good (or out of attempts): publish to the dead-letter queue, then acknowledge.
    Dead { reason: String },
}

/// A command being processed, and everything learnt about it on the way.
struct Job {
    inc: Incoming,
    log: EventLog,
    claim: Option<Claim>,
    /// The end, once known: an outcome to record, or a failure.
    end: Option<Result<Outcome, Failure>>,
    /// Whether the outcome still has to be written (`finish`).
    unwritten: bool,
    customer: Option<Customer>,
    mapped: Mapped,
    cio_id: Option<String>,
    /// Lower-cased addresses the user may have.
    emails: Vec<String>,
    /// The user found before the reads (`None`: none yet).
    existing: Option<UserRow>,
    segments: BTreeSet<i64>,
    /// The segments for the log ("VIP, Trial", or "none").
    segment_label: String,
    /// When the segment data was read, if before the claim (a shared snapshot).
    data_from: Option<DateTime<Utc>>,
    password: Option<Prepared>,
}

impl Job {
    fn new(inc: Incoming) -> Self {
        let log = EventLog::new(inc.cmd.event_id);
        Job {
            inc,
            log,
            claim: None,
            end: None,
            unwritten: false,
            customer: None,
            mapped: Mapped::default(),
            cio_id: None,
            emails: Vec::new(),
            existing: None,
            segments: BTreeSet::new(),
            segment_label: String::new(),
            data_from: None,
            password: None,
        }
    }

    fn cmd(&self) -> &SyncV1 {
        &self.inc.cmd
    }

    fn live(&self) -> bool {
        self.end.is_none()
    }

    /// Ends the event with an outcome that is written with the batch.
    fn close(&mut self, outcome: Outcome) {
        self.end = Some(Ok(outcome));
        self.unwritten = true;
    }

    fn fail(&mut self, f: Failure) {
        self.end = Some(Err(f));
        self.unwritten = false;
    }

    fn not_found(&mut self) {
        let m = format!(
            "Contact {} was not found in Customer.io (404)",
            self.cmd().contact.email
        );
        self.log.notice(m);
        self.close(Outcome::ContactNotFound);
    }

    fn no_user(&mut self) {
        self.no_user_line();
        self.close(Outcome::NoUser);
    }

    fn no_user_line(&mut self) {
        let m = format!(
            "{} webhook received but no matching user found for contact {}",
            self.cmd().action,
            self.cmd().contact.email
        );
        self.log.notice(m);
    }

    /// How Customer.io is asked about this contact.
    fn person(&self) -> PersonRef {
        self.cio_id
            .as_deref()
            .map(PersonRef::cio_id)
            .unwrap_or_else(|| PersonRef::email(self.cmd().contact.email.as_str()))
    }

    fn lookup(&self) -> Lookup {
        Lookup {
            cio_id: self.cio_id.clone(),
            emails: self.emails.clone(),
        }
    }
}

/// Processes a batch of commands; one settlement per command, in order. Never panics.
pub async fn process(ctx: &SyncCtx, batch: Vec<Incoming>) -> Vec<Settlement> {
    let mut jobs: Vec<Job> = batch.into_iter().map(Job::new).collect();
    let deadline = tokio::time::Instant::now() + ledger::LEASE + Duration::from_secs(5);
    let mut pause = Duration::from_millis(20);
    let mut round: Vec<usize> = (0..jobs.len()).collect();
    let mut first = true;
    while !round.is_empty() {
        let busy = claim(ctx, &mut jobs, &round, first).await;
        first = false;
        let claimed: Vec<usize> = round
            .iter()
            .copied()
            .filter(|&i| jobs[i].claim.is_some() && jobs[i].live())
            .collect();
        sync(ctx, &mut jobs, &claimed).await;
        write::close_remaining(ctx, &mut jobs, &round).await;
        if !busy.is_empty() && claimed.is_empty() {
            // Only duplicates of syncs running elsewhere are left: wait for them (bounded).
            if tokio::time::Instant::now() >= deadline {
                for &i in &busy {
                    jobs[i].fail(Failure::Transient {
                        reason: "another sync of this contact is still running".into(),
                        retry_after: None,
                    });
                }
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        round = busy;
    }
    settle(ctx, jobs).await
}

/// Starts (first round) or re-claims the given jobs; returns those whose sync is running elsewhere.
async fn claim(ctx: &SyncCtx, jobs: &mut [Job], round: &[usize], first: bool) -> Vec<usize> {
    let starting: Vec<ledger::Starting> = round
        .iter()
        .map(|&i| ledger::Starting {
            cmd: &jobs[i].inc.cmd,
            key_label: jobs[i].inc.key_label.as_deref(),
        })
        .collect();
    let verdicts = match ledger::start(&ctx.pool, &starting, first).await {
        Ok(v) => v,
        Err(e) => {
            let f = Failure::from(e);
            for &i in round {
                jobs[i].fail(f.clone());
            }
            return Vec::new();
        }
    };
    let mut busy = Vec::new();
    for (&i, (attempts, verdict)) in round.iter().zip(verdicts) {
        let job = &mut jobs[i];
        if first && !matches!(verdict, Verdict::AlreadyDone(_)) {
            let suffix = if attempts > 1 {
                format!(" (attempt {attempts})")
            } else {
                String::new()
            };
            let m = format!(
                "Received {} webhook for contact {}{suffix}",
                job.cmd().action,
                job.cmd().contact.email
            );
            job.log.info(m);
        }
        match verdict {
            Verdict::AlreadyDone(status) => job.end = Some(Ok(Outcome::AlreadyDone(status))),
            Verdict::Satisfied { by, status } => {
                job.log.info(format!(
                    "Already done by event {by} ({status}), a sync of this contact that started after this webhook was received"
                ));
                job.close(Outcome::Satisfied { by, status });
            }
            Verdict::Busy => busy.push(i),
            Verdict::Claimed(c) => job.claim = Some(c),
        }
    }
    busy
}

/// Reads the claimed jobs' contacts, then writes them.
async fn sync(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    if claimed.is_empty() {
        return;
    }
    read_attributes(ctx, jobs, claimed).await;
    if let Err(f) = find_existing(ctx, jobs, claimed).await {
        for &i in claimed {
            if jobs[i].live() {
                jobs[i].fail(f.clone());
            }
        }
        return;
    }
    read_segments(ctx, jobs, claimed).await;
    hash_passwords(ctx, jobs, claimed).await;
    let ready: Vec<usize> = claimed.iter().copied().filter(|&i| jobs[i].live()).collect();
    write::users(ctx, jobs, &ready).await;
}

/// Attributes of the `update` and `add` contacts, mapped through the field map.
async fn read_attributes(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    for &i in claimed {
        let job = &mut jobs[i];
        job.cio_id = job.cmd().contact.cio_id.clone();
        job.emails = vec![job.cmd().contact.email.folded()];
    }
    let contacts: Vec<usize> = claimed
        .iter()
        .copied()
        .filter(|&i| jobs[i].cmd().action != Action::UpdateTags)
        .collect();
    let people: Vec<PersonRef> = contacts.iter().map(|&i| jobs[i].person()).collect();
    let reads = bulk_read::attributes(ctx, &people, ctx.parallel).await;
    for (&i, read) in contacts.iter().zip(reads) {
        let job = &mut jobs[i];
        match read {
            Err(f) => job.fail(f),
            Ok(None) => job.not_found(),
            Ok(Some(customer)) => {
                let mapped = ctx.field_map.apply(&customer.attributes);
                let (text, context) = describe(&mapped);
                job.log.push(
                    Level::Info,
                    format!("Loaded meta data from Customer.io: {text}"),
                    Some(context),
                );
                job.cio_id = customer.cio_id().or_else(|| job.cmd().contact.cio_id.clone());
                for e in [users::customer_email(&customer, &mapped)].into_iter().flatten() {
                    let e = e.to_lowercase();
                    if !job.emails.contains(&e) {
                        job.emails.push(e);
                    }
                }
                job.customer = Some(customer);
                job.mapped = mapped;
            }
        }
    }
}

/// Looks for the users before spending segment calls or hashing passwords (one statement);
/// `update` and `update_tags` without a user end here.
async fn find_existing(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) -> Result<(), Failure> {
    let live: Vec<usize> = claimed.iter().copied().filter(|&i| jobs[i].live()).collect();
    let lookups: Vec<Lookup> = live.iter().map(|&i| jobs[i].lookup()).collect();
    let mut conn = ctx.pool.acquire().await?;
    let found = store::find_users(&mut conn, &lookups, false).await?;
    for (&i, user) in live.iter().zip(found) {
        let job = &mut jobs[i];
        match (job.cmd().action, user) {
            (Action::Add, u) => job.existing = u,
            (_, None) => job.no_user(),
            (Action::UpdateTags, Some(u)) => {
                job.cio_id = u.cio_id.clone().or_else(|| job.cio_id.take());
                job.existing = Some(u);
            }
            (Action::Update, Some(u)) => job.existing = Some(u),
        }
    }
    Ok(())
}

/// Segment ids and their names: from the URL's `tags`, a shared membership snapshot when that
/// saves calls, else one call per contact.
async fn read_segments(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    let live: Vec<usize> = claimed.iter().copied().filter(|&i| jobs[i].live()).collect();
    let mut asking = Vec::new();
    for &i in &live {
        match jobs[i].cmd().tags.clone() {
            Some(tags) => jobs[i].segments = tags.into_iter().collect(),
            None => asking.push(i),
        }
    }
    let snap = match snapshot_for(ctx, jobs, &asking).await {
        Ok(s) => s,
        Err(f) => {
            tracing::warn!(
                commands = asking.len(),
                "membership snapshot failed ({}); reading one by one",
                f.reason()
            );
            None
        }
    };
    let from_snapshot = match &snap {
        Some(s) => {
            let contacts: Vec<(Option<&str>, &str)> = asking
                .iter()
                .map(|&i| (jobs[i].cio_id.as_deref(), jobs[i].cmd().contact.email.as_str()))
                .collect();
            match s.memberships(&ctx.pool, &contacts).await {
                Ok(sets) => Some(sets),
                Err(e) => {
                    tracing::warn!("reading the membership snapshot failed ({e}); reading one by one");
                    None
                }
            }
        }
        None => None,
    };
    match (from_snapshot, &snap) {
        (Some(sets), Some(s)) => {
            for (&i, set) in asking.iter().zip(sets) {
                jobs[i].segments = set;
                jobs[i].data_from = Some(s.taken_at);
            }
        }
        _ => {
            let people: Vec<PersonRef> = asking.iter().map(|&i| jobs[i].person()).collect();
            let reads = bulk_read::person_segments(ctx, &people, ctx.parallel).await;
            for (&i, read) in asking.iter().zip(reads) {
                match read {
                    Err(f) => jobs[i].fail(f),
                    Ok(None) => jobs[i].not_found(),
                    Ok(Some(set)) => jobs[i].segments = set,
                }
            }
        }
    }
    label_segments(ctx, jobs, &live, snap.as_ref().filter(|_| !asking.is_empty())).await;
}

/// The shared membership snapshot, when the batch's segment reads cost more calls than one.
async fn snapshot_for(ctx: &SyncCtx, jobs: &[Job], asking: &[usize]) -> Result<Option<snapshot::Snapshot>, Failure> {
    if asking.len() < 2 {
        return Ok(None);
    }
    let newest = asking
        .iter()
        .map(|&i| jobs[i].cmd().received_at)
        .max()
        .expect("not empty");
    let fresh = ctx.snapshots.known_fresh(newest).await;
    let known: i64 = sqlx::query_scalar("select count(*) from segments")
        .fetch_one(&ctx.pool)
        .await?;
    if !bulk_read::snapshot_worth_it(asking.len(), known as usize, fresh) {
        return Ok(None);
    }
    ctx.snapshots.fresh(&ctx.pool, &ctx.cio, newest).await
}

/// Names the live jobs' segments for the log: from the snapshot's catalogue, else the cached one.
async fn label_segments(ctx: &SyncCtx, jobs: &mut [Job], live: &[usize], snap: Option<&snapshot::Snapshot>) {
    let live: Vec<usize> = live.iter().copied().filter(|&i| jobs[i].live()).collect();
    let mut unnamed: BTreeSet<i64> = BTreeSet::new();
    for &i in &live {
        let by_snapshot = jobs[i].cmd().tags.is_none() && snap.is_some();
        for id in &jobs[i].segments {
            if !(by_snapshot && snap.is_some_and(|s| s.name(*id).is_some())) {
                unnamed.insert(*id);
            }
        }
    }
    let names = if unnamed.is_empty() {
        Default::default()
    } else {
        match bulk_read::segment_names(ctx, &unnamed).await {
            Ok(n) => n,
            Err(f) => {
                for &i in &live {
                    jobs[i].fail(f.clone());
                }
                return;
            }
        }
    };
    for &i in &live {
        let job = &mut jobs[i];
        let by_snapshot = job.cmd().tags.is_none() && snap.is_some();
        job.segment_label = if job.segments.is_empty() {
            "none".to_string()
        } else {
            job.segments
                .iter()
                .map(|id| {
                    let from_snap = snap.filter(|_| by_snapshot).and_then(|s| s.name(*id));
                    from_snap
                        .map(str::to_string)
                        .or_else(|| names.get(id).cloned())
                        .unwrap_or_else(|| format!("(Unknown Segment: {id})"))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
    }
}

/// Hashes the passwords of the users `add`s are about to create (bounded by the hasher).
async fn hash_passwords(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    let creating: Vec<(usize, Option<String>)> = claimed
        .iter()
        .copied()
        .filter(|&i| jobs[i].live() && jobs[i].cmd().action == Action::Add && jobs[i].existing.is_none())
        .map(|i| {
            (
                i,
                jobs[i]
                    .mapped
                    .get(crate::fieldmap::UserField::UserPass)
                    .map(str::to_string),
            )
        })
        .collect();
    let hashed: Vec<(usize, anyhow::Result<Prepared>)> = stream::iter(creating)
        .map(|(i, mapped)| async move { (i, ctx.hasher.prepare(mapped.as_deref(), ctx.password_length).await) })
        .buffer_unordered(ctx.parallel.max(1))
        .collect()
        .await;
    for (i, r) in hashed {
        match r {
            Ok(p) => jobs[i].password = Some(p),
            Err(e) => jobs[i].fail(Failure::Transient {
                reason: e.to_string(),
                retry_after: None,
            }),
        }
    }
}

/// A readable summary of the mapped attributes for the event log (the password is never in it).
fn describe(mapped: &Mapped) -> (String, serde_json::Value) {
    let parts: Vec<String> = mapped.loaded.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let ctx: serde_json::Map<String, serde_json::Value> =
        mapped.loaded.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let text = if parts.is_empty() {
        "no mapped fields".to_string()
    } else {
        parts.join(", ")
    };
    (text, serde_json::Value::Object(ctx))
}

/// Records the failures (`retrying` with the delay, or `dead`), releases their claims, and says
/// what the consumer does with each delivery.
async fn settle(ctx: &SyncCtx, mut jobs: Vec<Job>) -> Vec<Settlement> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut failing = Vec::new();
    let mut released = Vec::new();
    for job in jobs.iter_mut() {
        let attempt = job.inc.attempt.max(1);
        let settlement = match job.end.take().unwrap_or_else(|| {
            Err(Failure::Transient {
                reason: "the command was not processed".into(),
                retry_after: None,
            })
        }) {
            Ok(outcome) => Settlement::Done(outcome),
            Err(Failure::Transient { reason, retry_after }) if attempt < ctx.max_attempts => {
                // A 429's Retry-After is a floor; the tiers still grow so that a long storm backs off.
                let wanted = retry_after.unwrap_or_default().max(retry_delay(attempt));
                let slot = topology::retry_slot(wanted, rand::random::<u8>() as usize);
                job.log.warning(format!(
                    "{reason}; retrying in about {} (attempt {attempt} of {})",
                    human(slot.delay),
                    ctx.max_attempts
                ));
                Settlement::Retry { reason, slot }
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Transient { reason, .. } => format!("gave up after {attempt} attempts: {reason}"),
                    Failure::Permanent { reason } => reason,
                };
                job.log.error(format!(
                    "{reason}. The command is parked in the dead-letter queue; fix the cause, then `worker dlq replay {}`",
                    job.cmd().event_id
                ));
                Settlement::Dead { reason }
            }
        };
        if !matches!(settlement, Settlement::Done(_)) {
            if let Some(c) = &job.claim {
                released.push(c);
            }
        }
        out.push(settlement);
    }
    ledger::release(&ctx.pool, &released).await;
    for (job, s) in jobs.iter_mut().zip(&out) {
        let (status, error) = match s {
            Settlement::Done(_) => continue,
            Settlement::Retry { reason, .. } => (EventStatus::Retrying, reason.clone()),
            Settlement::Dead { reason } => (EventStatus::Dead, reason.clone()),
        };
        failing.push(ledger::Failing {
            cmd: &job.inc.cmd,
            log: &mut job.log,
            status,
            error,
        });
    }
    if let Err(e) = ledger::fail(&ctx.pool, &mut failing).await {
        tracing::warn!("could not record {} failure(s) in the database: {e}", failing.len());
    }
    out
}

/// The delay before attempt `attempt + 1`: the tiers in order, then the longest.
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_TIERS[(attempt.saturating_sub(1) as usize).min(RETRY_TIERS.len() - 1)].1
}

/// "0.8s", "13s", "8m", "1h 18m": a delay for the event log.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{:.1}s", s).replace(".0s", "s")
    } else if s < 120.0 {
        format!("{}s", s.round())
    } else if s < 3600.0 {
        format!("{}m", (s / 60.0).round())
    } else {
        format!("{}h {}m", (s / 3600.0).floor(), ((s % 3600.0) / 60.0).round())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_read_well_in_the_log() {
        assert_eq!(human(Duration::from_millis(800)), "0.8s");
        assert_eq!(human(Duration::from_secs(1)), "1s");
        assert_eq!(human(Duration::from_secs(13)), "13s");
        assert_eq!(human(Duration::from_secs(480)), "8m");
        assert_eq!(human(Duration::from_secs(4680)), "1h 18m");
    }

    #[test]
    fn retry_delays_grow_through_the_tiers() {
        let secs: Vec<u64> = (1..=7).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 10, 60, 600, 3600, 3600, 3600]);
    }
}
