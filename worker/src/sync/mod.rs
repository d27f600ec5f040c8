//! Handling one command (DESIGN §4): pull the contact from Customer.io, then write the user, meta,
//! segments, outbox rows, event log and event status in one transaction.
//!
//! The Customer.io calls happen before the transaction (no lock is held across the network). The
//! transaction takes an advisory lock on the contact (its cio_id, else its e-mail), so that many
//! `add`s for one contact on many workers give exactly one user; the unique indexes are the
//! backstop, and a violation is a transient failure whose retry finds the user.

pub mod coalesce;
pub mod prefetch;
mod segments;
pub mod snapshot;
pub mod store;
mod users;

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use serde_json::json;
use shared::command::{Action, SyncV1};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    cio::{types::Customer, CioClient, CioError, PersonRef},
    events::{self, EventLog},
    fieldmap::{FieldMap, Mapped, UserField},
    secretbox::SecretBox,
};

/// Password return settings (`RETURN_PASSWORD_FIELD` and `SECRETS_KEY`).
#[derive(Clone)]
pub struct PasswordReturn {
    pub field: String,
    pub secrets: SecretBox,
}

/// Everything a sync needs, shared by all in-flight commands of a worker.
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
    /// The latest segment membership snapshot (batched reads).
    pub snapshots: snapshot::Snapshots,
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
    AlreadyDone(String),
    /// Coalesced: a sync of the same command that started after this webhook arrived did the work.
    Satisfied {
        by: Uuid,
        status: String,
    },
}

impl Outcome {
    pub fn status(&self) -> &str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::NoUser => "no_user",
            Outcome::ContactNotFound => "contact_not_found",
            Outcome::Rejected(_) => "rejected",
            Outcome::AlreadyDone(s) | Outcome::Satisfied { status: s, .. } => s,
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

/// How a command starts: finished already, waiting for a running duplicate, or ours to sync.
pub enum Start {
    Done(Outcome),
    Busy,
    Go(coalesce::Claim),
}

/// Records the event and tries to claim its sync (without waiting).
pub async fn start(ctx: &SyncCtx, cmd: &SyncV1, log: &mut EventLog) -> Result<Start, Failure> {
    let (attempt, verdict) = match coalesce::start_event(&ctx.pool, cmd).await? {
        (_, Err(status)) => return Ok(Start::Done(Outcome::AlreadyDone(status))),
        (attempt, Ok(v)) => (attempt, v),
    };
    let suffix = if attempt > 1 {
        format!(" (attempt {attempt})")
    } else {
        String::new()
    };
    log.info(format!(
        "Received {} webhook for contact {}{suffix}",
        cmd.action, cmd.contact.email
    ));
    self::verdict(ctx, cmd, log, verdict).await
}

async fn verdict(ctx: &SyncCtx, cmd: &SyncV1, log: &mut EventLog, v: coalesce::Verdict) -> Result<Start, Failure> {
    Ok(match v {
        coalesce::Verdict::Busy => Start::Busy,
        coalesce::Verdict::Claimed(c) => Start::Go(c),
        coalesce::Verdict::Satisfied { by, status } => {
            log.info(format!(
                "Already done by event {by} ({status}), a sync of this contact that started after this webhook was received"
            ));
            let mut job = Job {
                ctx,
                cmd,
                log,
                claim: None,
                pre: None,
            };
            Start::Done(job.finish_without_user(Outcome::Satisfied { by, status }).await?)
        }
    })
}

/// Waits for a running duplicate to finish, then takes its result or claims the sync.
pub async fn wait_turn(ctx: &SyncCtx, cmd: &SyncV1, log: &mut EventLog) -> Result<Start, Failure> {
    match coalesce::claim_waiting(&ctx.pool, cmd).await? {
        coalesce::Verdict::Busy => Err(Failure::Transient {
            reason: "another sync of this contact is still running".into(),
            retry_after: None,
        }),
        v => verdict(ctx, cmd, log, v).await,
    }
}

/// Processes one command: start, wait for a running duplicate if there is one, sync.
pub async fn handle(ctx: &SyncCtx, cmd: &SyncV1, log: &mut EventLog) -> Result<Outcome, Failure> {
    let claim = match start(ctx, cmd, log).await? {
        Start::Done(o) => return Ok(o),
        Start::Go(c) => c,
        Start::Busy => match wait_turn(ctx, cmd, log).await? {
            Start::Done(o) => return Ok(o),
            Start::Go(c) => c,
            Start::Busy => unreachable!("wait_turn never answers Busy"),
        },
    };
    run(ctx, cmd, log, claim, None).await
}

/// Syncs a claimed command, with data read in advance for a batch when given.
pub async fn run(
    ctx: &SyncCtx,
    cmd: &SyncV1,
    log: &mut EventLog,
    claim: coalesce::Claim,
    pre: Option<&prefetch::Prefetched>,
) -> Result<Outcome, Failure> {
    let mut job = Job {
        ctx,
        cmd,
        log,
        claim: Some(claim.clone()),
        pre,
    };
    let result = match cmd.action {
        Action::UpdateTags => job.update_tags().await,
        Action::Update | Action::Add => job.sync_contact().await,
    };
    if result.is_err() {
        coalesce::release(&ctx.pool, &claim).await;
    }
    result
}

/// One command being synced.
struct Job<'a> {
    ctx: &'a SyncCtx,
    cmd: &'a SyncV1,
    log: &'a mut EventLog,
    claim: Option<coalesce::Claim>,
    pre: Option<&'a prefetch::Prefetched>,
}

impl Job<'_> {
    /// Records the event's end, its log, and the finished claim, in the transaction `tx`.
    async fn close(&mut self, tx: &mut sqlx::PgConnection, status: &str, user_id: Option<i64>) -> Result<(), Failure> {
        let data_from = self.pre.and_then(|p| p.at);
        let done = self.claim.as_ref().map(|c| events::ClaimDone {
            key: &c.key,
            claimed_at: c.started_at,
            started_at: data_from.map_or(c.started_at, |d| d.min(c.started_at)),
        });
        events::finish(tx, self.cmd.event_id, status, user_id, self.log, done).await?;
        Ok(())
    }

    /// Ends the event without touching a user (no_user, contact_not_found, rejected, satisfied).
    async fn finish_without_user(&mut self, outcome: Outcome) -> Result<Outcome, Failure> {
        let mut tx = self.ctx.pool.begin().await?;
        if let Outcome::Rejected(reason) = &outcome {
            sqlx::query("update webhook_events set last_error = $2 where event_id = $1")
                .bind(self.cmd.event_id)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
        }
        self.close(&mut tx, outcome.status(), None).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    fn not_found(&mut self) {
        self.log.notice(format!(
            "Contact {} was not found in Customer.io (404)",
            self.cmd.contact.email
        ));
    }

    fn no_user(&mut self) {
        self.log.notice(format!(
            "{} webhook received but no matching user found for contact {}",
            self.cmd.action, self.cmd.contact.email
        ));
    }

    /// The contact's attributes: prefetched for the batch, else one call. `None`: not in Customer.io.
    async fn customer(&self, who: &PersonRef) -> Result<Option<Customer>, Failure> {
        if let Some(found) = self.pre.and_then(|p| p.customer(&self.cmd.contact.email)) {
            return Ok(found.cloned());
        }
        match self.ctx.cio.attributes(who).await {
            Ok(c) => Ok(Some(c)),
            Err(CioError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn segments(
        &mut self,
        person: &PersonRef,
        cio_id: Option<&str>,
    ) -> Result<Option<segments::Loaded>, Failure> {
        let snapshot = self.pre.and_then(|p| p.snapshot.as_deref());
        segments::load(self.ctx, self.cmd, person, cio_id, snapshot).await
    }

    /// Whether this command's segments cost no call (given in the URL, or in the batch's snapshot).
    fn segments_are_free(&self) -> bool {
        self.cmd.tags.is_some() || self.pre.is_some_and(|p| p.snapshot.is_some())
    }

    async fn update_tags(&mut self) -> Result<Outcome, Failure> {
        let cmd = self.cmd;
        let emails = vec![cmd.contact.email.clone()];
        if let Some(None) = self.pre.and_then(|p| p.customer(&cmd.contact.email)) {
            self.not_found();
            return self.finish_without_user(Outcome::ContactNotFound).await;
        }
        // Without a local user no call is spent: look first, unless the segments are free anyway.
        let mut cio_id = cmd.contact.cio_id.clone();
        if !self.segments_are_free() {
            let found = {
                let mut conn = self.ctx.pool.acquire().await?;
                store::find_user(&mut conn, cmd.contact.cio_id.as_deref(), &emails).await?
            };
            let Some(user) = found else {
                self.no_user();
                return self.finish_without_user(Outcome::NoUser).await;
            };
            cio_id = user.cio_id.or(cio_id);
        }
        let person = cio_id
            .as_deref()
            .map(PersonRef::cio_id)
            .unwrap_or_else(|| PersonRef::email(&cmd.contact.email));
        let Some(segments) = self.segments(&person, cio_id.as_deref()).await? else {
            self.not_found();
            return self.finish_without_user(Outcome::ContactNotFound).await;
        };
        let mut tx = self.ctx.pool.begin().await?;
        let Some(user) = store::find_user_for_update(&mut tx, cio_id.as_deref(), &emails).await? else {
            tx.rollback().await?;
            self.no_user();
            return self.finish_without_user(Outcome::NoUser).await;
        };
        segments::apply(&mut tx, user.id, &segments, self.log).await?;
        self.close(&mut tx, "succeeded", Some(user.id)).await?;
        tx.commit().await?;
        Ok(Outcome::Succeeded {
            user_id: user.id,
            created: false,
        })
    }

    async fn sync_contact(&mut self) -> Result<Outcome, Failure> {
        let (ctx, cmd) = (self.ctx, self.cmd);
        let who = cmd
            .contact
            .cio_id
            .as_deref()
            .map(PersonRef::cio_id)
            .unwrap_or_else(|| PersonRef::email(&cmd.contact.email));
        let Some(customer) = self.customer(&who).await? else {
            self.not_found();
            return self.finish_without_user(Outcome::ContactNotFound).await;
        };
        let mapped = ctx.field_map.apply(&customer.attributes);
        let (text, context) = describe(&mapped);
        self.log.push(
            crate::events::Level::Info,
            format!("Loaded meta data from Customer.io: {text}"),
            Some(context),
        );

        let cio_id = customer.cio_id().or_else(|| cmd.contact.cio_id.clone());
        let mut emails = vec![cmd.contact.email.clone()];
        for e in [mapped.get(UserField::Email).map(str::to_string), customer.email()]
            .into_iter()
            .flatten()
        {
            if !emails.iter().any(|x| x.eq_ignore_ascii_case(&e)) {
                emails.push(e);
            }
        }
        // Look before spending the segments call (update) or hashing a password (add); an update
        // whose segments are free goes straight to the transaction.
        let existing = if cmd.action == Action::Update && self.segments_are_free() {
            None
        } else {
            let mut conn = ctx.pool.acquire().await?;
            store::find_user(&mut conn, cio_id.as_deref(), &emails).await?
        };
        if existing.is_none() && cmd.action == Action::Update && !self.segments_are_free() {
            self.no_user();
            return self.finish_without_user(Outcome::NoUser).await;
        }
        let person = cio_id.as_deref().map(PersonRef::cio_id).unwrap_or(who);
        let Some(segments) = self.segments(&person, cio_id.as_deref()).await? else {
            self.not_found();
            return self.finish_without_user(Outcome::ContactNotFound).await;
        };
        // Hash outside the transaction (Argon2 is deliberately slow); discarded if a user appears meanwhile.
        let mut prepared = match existing {
            None if cmd.action == Action::Add => Some(users::prepare_password(ctx, &mapped).await?),
            _ => None,
        };

        let mut tx = ctx.pool.begin().await?;
        let found = if cmd.action == Action::Add {
            // Creation: serialise every add of this contact, so that exactly one creates the user.
            store::lock_contact(&mut tx, cio_id.as_deref().unwrap_or(&cmd.contact.email)).await?;
            store::find_user(&mut tx, cio_id.as_deref(), &emails).await?
        } else {
            store::find_user_for_update(&mut tx, cio_id.as_deref(), &emails).await?
        };
        let (user_id, created) = match found {
            Some(user) => {
                users::refresh(&mut tx, cmd, &user, &customer, &mapped, cio_id.as_deref(), self.log).await?;
                if cmd.action == Action::Add {
                    self.log.info(format!(
                        "User #{} already exists: updated it (no new password, e-mail or password return)",
                        user.id
                    ));
                }
                (user.id, false)
            }
            None if cmd.action == Action::Update => {
                tx.rollback().await?;
                self.no_user();
                return self.finish_without_user(Outcome::NoUser).await;
            }
            None => {
                let pw = match prepared.take() {
                    Some(p) => p,
                    None => users::prepare_password(ctx, &mapped).await?,
                };
                match users::create(&mut tx, ctx, cmd, &customer, &mapped, cio_id.as_deref(), pw, self.log).await? {
                    Ok(id) => (id, true),
                    Err(reason) => {
                        tx.rollback().await?;
                        self.log.error(format!("Rejected: {reason}"));
                        return self.finish_without_user(Outcome::Rejected(reason)).await;
                    }
                }
            }
        };
        segments::apply(&mut tx, user_id, &segments, self.log).await?;
        self.close(&mut tx, "succeeded", Some(user_id)).await?;
        tx.commit().await?;
        if created {
            ctx.outbox_wakeup.notify_waiters();
        }
        Ok(Outcome::Succeeded { user_id, created })
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

/// A password for a new user: mapped from Customer.io, or generated (and then returnable).
pub struct PreparedPassword {
    pub plaintext: SecretString,
    pub hash: String,
    pub generated: bool,
}
