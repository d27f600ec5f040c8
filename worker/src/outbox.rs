//! Delivery of the outbox: the password return, the welcome e-mail and the notice of an e-mail
//! change, written in the same transaction as the user and delivered here by any number of workers.
//! A worker claims only the kinds it can deliver (the password return needs it configured, mails
//! need SMTP), so a worker without them never gives a row up that another one could deliver.
//!
//! A row is claimed with `FOR UPDATE SKIP LOCKED` inside a transaction that stays open while it
//! is delivered: two workers never send the same row, and a worker killed mid-delivery drops its
//! connection, which releases the row for another attempt (nothing lost). Transient failures are
//! rescheduled with exponential backoff and jitter (a 429's Retry-After wins) for as long as the row
//! is younger than `OUTBOX_GIVE_UP_AFTER` (default 24 h), so a long outage of Customer.io or the
//! SMTP server loses nothing; a permanent failure, or a retry that would fall after that age, makes
//! the row `dead`, which `worker outbox replay` puts back (and restarts its age). The password is
//! erased from the row once Customer.io has it, and never logged. It is returned to the person by
//! `cio_<id>` when the user's cio_id is known, so an e-mail change before delivery cannot send it
//! to whoever has the old address.
//!
//! Delivery is at least once: a worker killed after Customer.io (or the SMTP server) accepted a
//! row but before its commit leaves the row pending, and another worker sends it again. For the
//! password return that resend carries the same sealed password (a new one is never generated),
//! so Customer.io ends up with the one password that verifies against the user's hash.
//!
//! Times written here use `clock_timestamp()`, not `now()`: `now()` is the start of the claiming
//! transaction, i.e. before a delivery that may have taken a whole timeout, and a backoff
//! counted from there would already have run out when the row is rescheduled.

use std::{sync::Arc, time::Duration};

use rand::RngExt;
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{cio::CioClient, events::Level, mail::Mailer, secretbox::SecretBox};

/// What an outbox row delivers; stored as its snake_case name in `outbox.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// The generated password, to a Customer.io attribute (Track API).
    PasswordReturn,
    /// The welcome e-mail with the username and a login link (SMTP).
    WelcomeEmail,
    /// The notice to the old address after the login e-mail changed (SMTP).
    EmailChangeNotice,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::PasswordReturn => "password_return",
            OutboxKind::WelcomeEmail => "welcome_email",
            OutboxKind::EmailChangeNotice => "email_change_notice",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxKind> {
        [
            OutboxKind::PasswordReturn,
            OutboxKind::WelcomeEmail,
            OutboxKind::EmailChangeNotice,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Password return settings (`RETURN_PASSWORD_FIELD` and `SECRETS_KEYS`): the Customer.io
/// attribute that receives generated passwords, and the keys sealing them until delivered.
#[derive(Clone)]
pub struct PasswordReturn {
    pub field: String,
    pub secrets: SecretBox,
}

pub struct Outbox {
    pub pool: PgPool,
    pub cio: CioClient,
    pub mailer: Option<Mailer>,
    pub password_return: Option<PasswordReturn>,
    /// Age after which an undelivered row is given up (`dead`).
    pub give_up_after: Duration,
    pub wakeup: Arc<Notify>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    kind: String,
    user_id: i64,
    event_id: Uuid,
    recipient: String,
    secret: Option<Vec<u8>>,
    attempts: i32,
    /// The user's cio_id now (the password return addresses the person by it).
    cio_id: Option<String>,
    /// Seconds since the row became pending.
    age: f64,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    Retry { after: Duration, error: String },
    Dead(String),
}

/// Backoff before attempt `n + 1`: 2^n seconds (capped at 30 min) with ±25 % jitter.
pub fn backoff(attempts: i32) -> Duration {
    let base = 2f64.powi(attempts.clamp(0, 11)).min(1800.0);
    let jitter = rand::rng().random_range(0.75..1.25);
    Duration::from_secs_f64(base * jitter)
}

/// The wait before the next attempt: the backoff, but never less than the server's Retry-After.
pub fn retry_delay(attempts: i32, retry_after: Option<Duration>) -> Duration {
    let b = backoff(attempts);
    retry_after.map_or(b, |r| r.max(b))
}

/// Error texts come from the remote side; make sure none of them can carry the password into
/// `last_error`, the event log or the process log.
fn redact(text: String, secret: &str) -> String {
    if secret.is_empty() || !text.contains(secret) {
        text
    } else {
        text.replace(secret, "[redacted]")
    }
}

impl Outbox {
    /// Delivers due rows until cancelled; `parallel` loops run at once.
    pub async fn run(self: Arc<Self>, parallel: usize, shutdown: CancellationToken) {
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..parallel.max(1) {
            let me = self.clone();
            let stop = shutdown.clone();
            loops.spawn(async move { me.run_loop(stop).await });
        }
        while loops.join_next().await.is_some() {}
    }

    async fn run_loop(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            // Listen before looking, so that a commit that queues a row while this loop finds
            // nothing due still wakes it (instead of waiting for the next poll).
            let notified = self.wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.deliver_next().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!("outbox: {e}"),
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// The kinds this worker can deliver.
    pub fn deliverable(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.password_return.is_some() {
            kinds.push(OutboxKind::PasswordReturn.as_str());
        }
        if self.mailer.is_some() {
            kinds.push(OutboxKind::WelcomeEmail.as_str());
            kinds.push(OutboxKind::EmailChangeNotice.as_str());
        }
        kinds
    }

    /// Claims and delivers one due row this worker can deliver; `Ok(false)` when none is due.
    pub async fn deliver_next(&self) -> Result<bool, sqlx::Error> {
        let kinds = self.deliverable();
        if kinds.is_empty() {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await?;
        let row: Option<Row> = sqlx::query_as(
            "select o.id, o.kind, o.user_id, o.event_id, o.recipient, o.secret, o.attempts, u.cio_id,
                    extract(epoch from clock_timestamp() - o.pending_since)::float8 as age
             from outbox o left join users u on u.id = o.user_id
             where o.status = 'pending' and o.next_attempt_at <= now() and o.kind = any($1)
             order by o.next_attempt_at, o.id limit 1 for update of o skip locked",
        )
        .bind(&kinds)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let result = match OutboxKind::parse(&row.kind) {
            Some(OutboxKind::PasswordReturn) => self.return_password(&row).await,
            Some(kind @ (OutboxKind::WelcomeEmail | OutboxKind::EmailChangeNotice)) => {
                self.send_mail(&mut tx, &row, kind).await?
            }
            None => Delivery::Dead(format!("unknown outbox kind {}", row.kind)),
        };
        let counted = self.record(&mut tx, &row, result).await?;
        tx.commit().await?;
        // Counted once the outcome is committed, so the metric never runs ahead of the table.
        metrics::counter!("cio_outbox_deliveries_total", "kind" => row.kind.clone(), "result" => counted).increment(1);
        Ok(true)
    }

    async fn return_password(&self, row: &Row) -> Delivery {
        let Some(pr) = &self.password_return else {
            return Delivery::Dead("password return is off (RETURN_PASSWORD_FIELD is not set)".into());
        };
        let Some(sealed) = &row.secret else {
            return Delivery::Dead("the generated password is no longer stored".into());
        };
        let password = match pr.secrets.open(sealed) {
            Ok(p) => p,
            Err(why) => return Delivery::Dead(why.into()),
        };
        let mut body = serde_json::Map::new();
        body.insert(pr.field.clone(), json!(password.expose_secret()));
        body.insert("_update".into(), json!(true));
        // By cio_id when known: the person keeps it through e-mail changes.
        let person = match &row.cio_id {
            Some(id) => format!("cio_{id}"),
            None => row.recipient.clone(),
        };
        let result = self.cio.identify(&person, &serde_json::Value::Object(body)).await;
        match result {
            Ok(()) => Delivery::Sent,
            Err(e) if e.is_transient() => Delivery::Retry {
                after: retry_delay(row.attempts, e.retry_after()),
                error: redact(e.to_string(), password.expose_secret()),
            },
            Err(e) => Delivery::Dead(redact(e.to_string(), password.expose_secret())),
        }
    }

    async fn send_mail(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        row: &Row,
        kind: OutboxKind,
    ) -> Result<Delivery, sqlx::Error> {
        let Some(mailer) = &self.mailer else {
            return Ok(Delivery::Dead("e-mail is off (SMTP_URL is not set)".into()));
        };
        let username: Option<String> = sqlx::query_scalar("select username from users where id = $1")
            .bind(row.user_id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(username) = username else {
            return Ok(Delivery::Dead("the user no longer exists".into()));
        };
        let sent = match kind {
            OutboxKind::EmailChangeNotice => mailer.send_email_change_notice(&row.recipient, &username).await,
            _ => mailer.send_welcome(&row.recipient, &username).await,
        };
        Ok(match sent {
            Ok(()) => Delivery::Sent,
            Err(e) if e.transient => Delivery::Retry {
                after: backoff(row.attempts),
                error: e.message,
            },
            Err(e) => Delivery::Dead(e.message),
        })
    }

    /// Writes the attempt's outcome and its event-log line; returns the outcome's metric label.
    async fn record(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        row: &Row,
        result: Delivery,
    ) -> Result<&'static str, sqlx::Error> {
        let attempts = row.attempts + 1;
        let kind = OutboxKind::parse(&row.kind);
        let what = match kind {
            Some(OutboxKind::PasswordReturn) => "the generated password to Customer.io",
            Some(OutboxKind::EmailChangeNotice) => "the notice of the e-mail change",
            _ => "the welcome e-mail",
        };
        // A retry is scheduled only if it falls before the row's give-up age.
        let retry_in_time = |after: &Duration| row.age + after.as_secs_f64() < self.give_up_after.as_secs_f64();
        let (level, message) = match &result {
            Delivery::Sent => {
                sqlx::query(
                    "update outbox set status = 'sent', secret = null, attempts = $2, last_error = null,
                         sent_at = clock_timestamp(), updated_at = clock_timestamp() where id = $1",
                )
                .bind(row.id)
                .bind(attempts)
                .execute(&mut **tx)
                .await?;
                let m = match kind {
                    Some(OutboxKind::PasswordReturn) => "Returned generated password to Customer.io".to_string(),
                    _ => format!("Sent {what} to {}", row.recipient),
                };
                (Level::Info, m)
            }
            Delivery::Retry { after, error } if retry_in_time(after) => {
                sqlx::query(
                    "update outbox set attempts = $2, last_error = $3, updated_at = clock_timestamp(),
                         next_attempt_at = clock_timestamp() + make_interval(secs => $4) where id = $1",
                )
                .bind(row.id)
                .bind(attempts)
                .bind(error)
                .bind(after.as_secs_f64())
                .execute(&mut **tx)
                .await?;
                (
                    Level::Warning,
                    format!(
                        "Could not send {what} (attempt {attempts}): {error}; retrying in {:.1}s",
                        after.as_secs_f64()
                    ),
                )
            }
            Delivery::Retry { error, .. } | Delivery::Dead(error) => {
                sqlx::query(
                    "update outbox set status = 'dead', attempts = $2, last_error = $3,
                         updated_at = clock_timestamp() where id = $1",
                )
                .bind(row.id)
                .bind(attempts)
                .bind(error)
                .execute(&mut **tx)
                .await?;
                let why = if matches!(result, Delivery::Dead(_)) {
                    format!("Could not send {what}: {error}. This is not retried automatically")
                } else {
                    format!(
                        "Gave up sending {what} after {attempts} attempts over {}s (OUTBOX_GIVE_UP_AFTER is {}s): {error}",
                        row.age.round(),
                        self.give_up_after.as_secs()
                    )
                };
                (
                    Level::Error,
                    format!(
                        "{why}; outbox row #{} is dead. Fix the cause, then run `worker outbox replay {}`",
                        row.id, row.id
                    ),
                )
            }
        };
        // The process log names the row at info; the readable line (addresses, remote error
        // texts) is in the event log, and in the process log at debug.
        tracing::debug!(event_id = %row.event_id, outbox_id = row.id, "{message}");
        let (id, kind) = (row.event_id, row.kind.as_str());
        match level {
            Level::Info | Level::Notice => {
                tracing::info!(event_id = %id, outbox_id = row.id, kind, "outbox row delivered")
            }
            Level::Warning => {
                tracing::warn!(event_id = %id, outbox_id = row.id, kind, attempts, "outbox delivery failed; retrying")
            }
            Level::Error => tracing::error!(event_id = %id, outbox_id = row.id, kind, attempts, "outbox row is dead"),
        }
        sqlx::query("insert into event_log (event_id, at, level, message) values ($1, clock_timestamp(), $2, $3)")
            .bind(row.event_id)
            .bind(level.as_str())
            .bind(&message)
            .execute(&mut **tx)
            .await?;
        Ok(match result {
            Delivery::Sent => "sent",
            Delivery::Retry { after, .. } if retry_in_time(&after) => "retry",
            _ => "dead",
        })
    }
}

/// Puts dead rows back to pending (all of them, or the given ids); returns how many.
pub async fn replay(pool: &PgPool, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "update outbox set status = 'pending', attempts = 0, next_attempt_at = now(), pending_since = now(),
             updated_at = now()
         where status = 'dead' and (cardinality($1::bigint[]) = 0 or id = any($1))",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::{backoff, redact, retry_delay};
    use std::time::Duration;

    #[test]
    fn retry_after_is_a_floor_on_the_backoff() {
        for _ in 0..50 {
            assert!(retry_delay(0, Some(Duration::from_secs(30))) == Duration::from_secs(30));
            let d = retry_delay(3, Some(Duration::from_secs(1)));
            assert!(d >= Duration::from_secs(6) && d <= Duration::from_secs(10), "{d:?}");
            let d = retry_delay(0, None);
            assert!(
                d >= Duration::from_millis(750) && d <= Duration::from_millis(1250),
                "{d:?}"
            );
        }
    }

    #[test]
    fn remote_error_texts_never_carry_the_password() {
        let e = "Customer.io rejected the request (400): value Xy7secretZ is not allowed".to_string();
        assert_eq!(
            redact(e, "Xy7secretZ"),
            "Customer.io rejected the request (400): value [redacted] is not allowed"
        );
        assert_eq!(redact("plain".into(), ""), "plain");
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for n in 0..20 {
            let d = backoff(n).as_secs_f64();
            let base = 2f64.powi(n.min(11)).min(1800.0);
            assert!(d >= base * 0.75 && d <= base * 1.25, "{n}: {d}");
        }
    }
}
