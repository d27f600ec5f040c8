//! Delivery of the outbox (DESIGN §1, §4): the password return and the welcome e-mail, written in
//! the same transaction as the new user and delivered here by any number of workers.
//!
//! A row is claimed with `FOR UPDATE SKIP LOCKED` inside a transaction that stays open while it
//! is delivered: two workers never send the same row, and a worker killed mid-delivery drops its
//! connection, which releases the row for another attempt (nothing lost). Transient failures are
//! rescheduled with exponential backoff and jitter (a 429's Retry-After wins); a permanent failure
//! or the last attempt makes the row `dead`, which `worker outbox replay` puts back. The password
//! is erased from the row once Customer.io has it, and never logged.
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

use rand::Rng;
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
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::PasswordReturn => "password_return",
            OutboxKind::WelcomeEmail => "welcome_email",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxKind> {
        [OutboxKind::PasswordReturn, OutboxKind::WelcomeEmail]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Password return settings (`RETURN_PASSWORD_FIELD` and `SECRETS_KEY`): the Customer.io
/// attribute that receives generated passwords, and the key sealing them until delivered.
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
    pub max_attempts: i32,
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
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
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

    /// Claims and delivers one due row; `Ok(false)` when none is due.
    pub async fn deliver_next(&self) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row: Option<Row> = sqlx::query_as(
            "select id, kind, user_id, event_id, recipient, secret, attempts from outbox
             where status = 'pending' and next_attempt_at <= now()
             order by next_attempt_at, id limit 1 for update skip locked",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let result = match OutboxKind::parse(&row.kind) {
            Some(OutboxKind::PasswordReturn) => self.return_password(&row).await,
            Some(OutboxKind::WelcomeEmail) => self.send_welcome(&mut tx, &row).await?,
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
        let result = self
            .cio
            .identify(&row.recipient, &serde_json::Value::Object(body))
            .await;
        match result {
            Ok(()) => Delivery::Sent,
            Err(e) if e.is_transient() => Delivery::Retry {
                after: retry_delay(row.attempts, e.retry_after()),
                error: redact(e.to_string(), password.expose_secret()),
            },
            Err(e) => Delivery::Dead(redact(e.to_string(), password.expose_secret())),
        }
    }

    async fn send_welcome(&self, tx: &mut Transaction<'_, Postgres>, row: &Row) -> Result<Delivery, sqlx::Error> {
        let Some(mailer) = &self.mailer else {
            return Ok(Delivery::Dead("welcome e-mail is off (SMTP_URL is not set)".into()));
        };
        let username: Option<String> = sqlx::query_scalar("select username from users where id = $1")
            .bind(row.user_id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(username) = username else {
            return Ok(Delivery::Dead("the user no longer exists".into()));
        };
        Ok(match mailer.send_welcome(&row.recipient, &username).await {
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
        let what = if row.kind == OutboxKind::PasswordReturn.as_str() {
            "the generated password to Customer.io"
        } else {
            "the welcome e-mail"
        };
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
                let m = if row.kind == OutboxKind::PasswordReturn.as_str() {
                    "Returned generated password to Customer.io".to_string()
                } else {
                    format!("Sent the welcome e-mail to {}", row.recipient)
                };
                (Level::Info, m)
            }
            Delivery::Retry { after, error } if attempts < self.max_attempts => {
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
                        "Could not send {what} (attempt {attempts} of {}): {error}; retrying in {:.1}s",
                        self.max_attempts,
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
                    format!("Gave up sending {what} after {attempts} attempts: {error}")
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
        match level {
            Level::Info | Level::Notice => tracing::info!(event_id = %row.event_id, outbox_id = row.id, "{message}"),
            Level::Warning => tracing::warn!(event_id = %row.event_id, outbox_id = row.id, "{message}"),
            Level::Error => tracing::error!(event_id = %row.event_id, outbox_id = row.id, "{message}"),
        }
        sqlx::query("insert into event_log (event_id, at, level, message) values ($1, clock_timestamp(), $2, $3)")
            .bind(row.event_id)
            .bind(level.as_str())
            .bind(&message)
            .execute(&mut **tx)
            .await?;
        Ok(match result {
            Delivery::Sent => "sent",
            Delivery::Retry { .. } if attempts < self.max_attempts => "retry",
            _ => "dead",
        })
    }
}

/// Puts dead rows back to pending (all of them, or the given ids); returns how many.
pub async fn replay(pool: &PgPool, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "update outbox set status = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
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
