//! Handling one command (DESIGN §4): pull the contact from Customer.io, then write the user, meta,
//! segments, outbox rows, event log and event status in one transaction.
//!
//! The Customer.io calls happen before the transaction (no lock is held across the network). The
//! transaction takes an advisory lock on the contact (its cio_id, else its e-mail), so that many
//! `add`s for one contact on many workers give exactly one user; the unique indexes are the
//! backstop, and a violation is a transient failure whose retry finds the user.

mod segments;
pub mod store;
mod users;

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use serde_json::json;
use shared::command::{Action, SyncV1};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::{
    cio::{CioClient, CioError, PersonRef},
    events::{self, Begin, EventLog},
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
}

impl Outcome {
    pub fn status(&self) -> &str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::NoUser => "no_user",
            Outcome::ContactNotFound => "contact_not_found",
            Outcome::Rejected(_) => "rejected",
            Outcome::AlreadyDone(s) => s,
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

/// Processes one command. Log lines gathered in `log` are written with the outcome; on a
/// failure the caller records them with the failure.
pub async fn handle(ctx: &SyncCtx, cmd: &SyncV1, log: &mut EventLog) -> Result<Outcome, Failure> {
    let attempt = match events::begin(&ctx.pool, cmd).await? {
        Begin::AlreadyDone(status) => return Ok(Outcome::AlreadyDone(status)),
        Begin::Proceed { attempt } => attempt,
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
    match cmd.action {
        Action::UpdateTags => update_tags(ctx, cmd, log).await,
        Action::Update | Action::Add => sync_contact(ctx, cmd, log).await,
    }
}

/// Ends the event without touching a user (no_user, contact_not_found, rejected).
async fn finish_without_user(
    ctx: &SyncCtx,
    cmd: &SyncV1,
    log: &mut EventLog,
    outcome: Outcome,
) -> Result<Outcome, Failure> {
    let mut tx = ctx.pool.begin().await?;
    if let Outcome::Rejected(reason) = &outcome {
        sqlx::query("update webhook_events set last_error = $2 where event_id = $1")
            .bind(cmd.event_id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
    }
    events::finish(&mut tx, cmd.event_id, outcome.status(), None).await?;
    log.flush(&mut tx).await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn update_tags(ctx: &SyncCtx, cmd: &SyncV1, log: &mut EventLog) -> Result<Outcome, Failure> {
    let emails = vec![cmd.contact.email.clone()];
    let found = {
        let mut conn = ctx.pool.acquire().await?;
        store::find_user(&mut conn, cmd.contact.cio_id.as_deref(), &emails).await?
    };
    let Some(user) = found else {
        log.notice(format!(
            "update_tags webhook received but no matching user found for contact {}",
            cmd.contact.email
        ));
        return finish_without_user(ctx, cmd, log, Outcome::NoUser).await;
    };
    let person = user
        .cio_id
        .as_deref()
        .or(cmd.contact.cio_id.as_deref())
        .map(PersonRef::cio_id)
        .unwrap_or_else(|| PersonRef::email(&cmd.contact.email));
    let Some(segments) = segments::load(ctx, cmd, &person, log).await? else {
        log.notice(format!(
            "Contact {} was not found in Customer.io (404)",
            cmd.contact.email
        ));
        return finish_without_user(ctx, cmd, log, Outcome::ContactNotFound).await;
    };
    let mut tx = ctx.pool.begin().await?;
    store::lock_contact(&mut tx, user.cio_id.as_deref().unwrap_or(&user.email)).await?;
    let Some(user) = store::find_user(&mut tx, user.cio_id.as_deref(), std::slice::from_ref(&user.email)).await? else {
        tx.rollback().await?;
        log.notice(format!(
            "update_tags webhook received but no matching user found for contact {}",
            cmd.contact.email
        ));
        return finish_without_user(ctx, cmd, log, Outcome::NoUser).await;
    };
    segments::apply(&mut tx, user.id, &segments, log).await?;
    events::finish(&mut tx, cmd.event_id, "succeeded", Some(user.id)).await?;
    log.flush(&mut tx).await?;
    tx.commit().await?;
    Ok(Outcome::Succeeded {
        user_id: user.id,
        created: false,
    })
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

async fn sync_contact(ctx: &SyncCtx, cmd: &SyncV1, log: &mut EventLog) -> Result<Outcome, Failure> {
    let who = cmd
        .contact
        .cio_id
        .as_deref()
        .map(PersonRef::cio_id)
        .unwrap_or_else(|| PersonRef::email(&cmd.contact.email));
    let customer = match ctx.cio.attributes(&who).await {
        Ok(c) => c,
        Err(CioError::NotFound) => {
            log.notice(format!(
                "Contact {} was not found in Customer.io (404)",
                cmd.contact.email
            ));
            return finish_without_user(ctx, cmd, log, Outcome::ContactNotFound).await;
        }
        Err(e) => return Err(e.into()),
    };
    let mapped = ctx.field_map.apply(&customer.attributes);
    let (text, context) = describe(&mapped);
    log.push(
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
    let existing = {
        let mut conn = ctx.pool.acquire().await?;
        store::find_user(&mut conn, cio_id.as_deref(), &emails).await?
    };
    if existing.is_none() && cmd.action == Action::Update {
        log.notice(format!(
            "update webhook received but no matching user found for contact {}",
            cmd.contact.email
        ));
        return finish_without_user(ctx, cmd, log, Outcome::NoUser).await;
    }
    let person = cio_id.as_deref().map(PersonRef::cio_id).unwrap_or(who);
    let Some(segments) = segments::load(ctx, cmd, &person, log).await? else {
        log.notice(format!(
            "Contact {} was not found in Customer.io (404)",
            cmd.contact.email
        ));
        return finish_without_user(ctx, cmd, log, Outcome::ContactNotFound).await;
    };
    // Hash outside the transaction (Argon2 is deliberately slow); discarded if a user appears meanwhile.
    let mut prepared = match existing {
        None => Some(users::prepare_password(ctx, &mapped).await?),
        Some(_) => None,
    };

    let mut tx = ctx.pool.begin().await?;
    store::lock_contact(&mut tx, cio_id.as_deref().unwrap_or(&cmd.contact.email)).await?;
    let (user_id, created) = match store::find_user(&mut tx, cio_id.as_deref(), &emails).await? {
        Some(user) => {
            users::refresh(&mut tx, cmd, &user, &customer, &mapped, cio_id.as_deref(), log).await?;
            if cmd.action == Action::Add {
                log.info(format!(
                    "User #{} already exists: updated it (no new password, e-mail or password return)",
                    user.id
                ));
            }
            (user.id, false)
        }
        None if cmd.action == Action::Update => {
            tx.rollback().await?;
            log.notice(format!(
                "update webhook received but no matching user found for contact {}",
                cmd.contact.email
            ));
            return finish_without_user(ctx, cmd, log, Outcome::NoUser).await;
        }
        None => {
            let pw = match prepared.take() {
                Some(p) => p,
                None => users::prepare_password(ctx, &mapped).await?,
            };
            match users::create(&mut tx, ctx, cmd, &customer, &mapped, cio_id.as_deref(), pw, log).await? {
                Ok(id) => (id, true),
                Err(reason) => {
                    tx.rollback().await?;
                    log.error(format!("Rejected: {reason}"));
                    return finish_without_user(ctx, cmd, log, Outcome::Rejected(reason)).await;
                }
            }
        }
    };
    segments::apply(&mut tx, user_id, &segments, log).await?;
    events::finish(&mut tx, cmd.event_id, "succeeded", Some(user_id)).await?;
    log.flush(&mut tx).await?;
    tx.commit().await?;
    if created {
        ctx.outbox_wakeup.notify_waiters();
    }
    Ok(Outcome::Succeeded { user_id, created })
}

/// A password for a new user: mapped from Customer.io, or generated (and then returnable).
pub struct PreparedPassword {
    pub plaintext: SecretString,
    pub hash: String,
    pub generated: bool,
}
