//! The worker's configuration, read once at start. `worker run` needs all of it;
//! the operator commands (`migrate`, `dlq`, `events`, `prune`, `erase`) need only the database and the
//! broker, and `check` reads all of it to check it.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::config::{self, AmqpSettings, ConfigError};

use crate::{
    cio::CioSettings,
    fieldmap::FieldMap,
    mail::{MailSettings, Templates},
    outbox::PasswordReturn,
    secretbox::SecretBox,
};

#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    pub amqp: AmqpSettings,
    pub cio: CioSettings,
    /// App API requests/s shared by all workers.
    pub app_rate_limit: f64,
    /// Commands processed at once by this worker (also the AMQP prefetch).
    pub concurrency: usize,
    /// Most commands read from Customer.io together when they queue up (1 = never batch).
    pub batch_size: usize,
    /// How long the first command of a batch waits for others.
    pub batch_wait: Duration,
    /// Attempts of one command before it is parked in the dead-letter queue.
    pub max_attempts: u32,
    pub password_return: Option<PasswordReturn>,
    pub mail: Option<MailSettings>,
    pub default_role: String,
    pub password_length: usize,
    pub field_map: FieldMap,
    pub log_format: String,
    pub shutdown_grace: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// Age after which an undelivered outbox row (password return, mails) is `dead`.
    pub outbox_give_up_after: Duration,
    /// Whether a changed Customer.io e-mail changes the user's (`SYNC_EMAIL_CHANGES`).
    pub sync_email_changes: bool,
    /// Attempts of an `add`/`update` whose contact Customer.io answers 404 for, before the event
    /// ends `contact_not_found` (not configurable from the environment; tests lower it).
    pub not_found_attempts: u32,
    /// Segment memberships above which no membership snapshot is taken (contacts are read one by one).
    pub snapshot_max_members: usize,
    /// Days finished events, their log lines and idle coalescing rows are kept; `worker run` prunes
    /// older ones once a day (`RETENTION_DAYS`; 0 = keep forever).
    pub retention_days: u32,
    /// How long after the start `worker run` first prunes (not configurable from the environment;
    /// tests lower it).
    pub retention_first_run: Duration,
}

fn invalid(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// A duration like `24h`, `90m`, `30s`, `2d`, or a number of seconds.
fn duration_or(var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = config::var(var) else { return Ok(default) };
    let v = v.trim();
    let (number, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 && scale > 0 => Ok(Duration::from_secs(n * scale)),
        _ => Err(invalid(var, "must be a positive duration like 24h, 90m, 30s or 2d")),
    }
}

fn flag_or(var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match config::var(var).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(invalid(var, "must be true or false")),
    }
}

/// The keys sealing passwords until they are returned: `SECRETS_KEYS` (a ring of `id:key`, the
/// first sealing), else `SECRETS_KEY` (one key).
fn secrets() -> Result<SecretBox, ConfigError> {
    if let Some(ring) = config::var("SECRETS_KEYS") {
        return SecretBox::ring(&ring).map_err(|p| invalid("SECRETS_KEYS", p));
    }
    match config::var("SECRETS_KEY") {
        Some(key) => SecretBox::from_base64(&key).map_err(|p| invalid("SECRETS_KEY", p)),
        None => Err(invalid(
            "SECRETS_KEYS",
            "is required when RETURN_PASSWORD_FIELD is set (or the single SECRETS_KEY)",
        )),
    }
}

fn batch_size() -> Result<usize, ConfigError> {
    let n: usize = config::parse_or("WORKER_BATCH_SIZE", 100)?;
    if !(1..=1000).contains(&n) {
        return Err(invalid("WORKER_BATCH_SIZE", "must be between 1 and 1000"));
    }
    Ok(n)
}

fn retention_days() -> Result<u32, ConfigError> {
    let days: u32 = config::parse_or("RETENTION_DAYS", 0)?;
    if days > 36_500 {
        return Err(invalid(
            "RETENTION_DAYS",
            "must be a number of days up to 36500 (0 = keep forever)",
        ));
    }
    Ok(days)
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let region = config::or_default("CIO_REGION", "us").to_ascii_lowercase();
        let (app_default, track_default) =
            CioSettings::region_urls(&region).ok_or_else(|| invalid("CIO_REGION", "must be us or eu"))?;
        let url = |var: &'static str, default: &str| -> Result<String, ConfigError> {
            let v = config::or_default(var, default);
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(v)
            } else {
                Err(invalid(var, "must be a URL like https://host"))
            }
        };
        let app_api_key = config::required("CIO_APP_API_KEY")?;
        let site_id = config::var("CIO_SITE_ID");
        let track_api_key = config::var("CIO_TRACK_API_KEY").map(SecretString::from);
        let cio = CioSettings {
            app_url: url("CIO_APP_API_URL", app_default)?,
            track_url: url("CIO_TRACK_API_URL", track_default)?,
            app_api_key: SecretString::from(app_api_key),
            site_id: site_id.clone(),
            track_api_key: track_api_key.clone(),
            timeout: config::seconds_or("CIO_TIMEOUT_SECS", Duration::from_secs(10))?,
        };
        let app_rate_limit: f64 = config::parse_or("CIO_APP_RATE_LIMIT", 10.0)?;
        if !(app_rate_limit > 0.0 && app_rate_limit.is_finite()) {
            return Err(invalid(
                "CIO_APP_RATE_LIMIT",
                "must be a positive number of requests per second",
            ));
        }
        let concurrency: usize = config::parse_or("WORKER_CONCURRENCY", 16)?;
        if !(1..=1000).contains(&concurrency) {
            return Err(invalid("WORKER_CONCURRENCY", "must be between 1 and 1000"));
        }
        let password_return = match config::var("RETURN_PASSWORD_FIELD") {
            None => None,
            Some(field) => {
                let secrets = secrets()?;
                if site_id.is_none() {
                    return Err(invalid("CIO_SITE_ID", "is required when RETURN_PASSWORD_FIELD is set"));
                }
                if track_api_key.is_none() {
                    return Err(invalid(
                        "CIO_TRACK_API_KEY",
                        "is required when RETURN_PASSWORD_FIELD is set",
                    ));
                }
                Some(PasswordReturn { field, secrets })
            }
        };
        let mail = match config::var("SMTP_URL") {
            None => None,
            Some(smtp_url) => Some(MailSettings {
                smtp_url,
                from: config::required("MAIL_FROM")?,
                login_url: config::required("LOGIN_URL")?,
                templates: Templates::from_env()?,
            }),
        };
        let password_length: usize = config::parse_or("PASSWORD_LENGTH", 20)?;
        if !(16..=128).contains(&password_length) {
            return Err(invalid("PASSWORD_LENGTH", "must be between 16 and 128"));
        }
        let field_map = match config::var("FIELD_MAP_FILE") {
            None => FieldMap::default(),
            Some(path) => FieldMap::load(&path).map_err(|p| invalid("FIELD_MAP_FILE", p))?,
        };
        if let Some(pr) = &password_return {
            field_map
                .check_password_field(&pr.field)
                .map_err(|p| invalid("FIELD_MAP_FILE", p))?;
        }
        let http_addr = config::or_default("WORKER_HTTP_ADDR", "0.0.0.0:9091")
            .parse()
            .map_err(|_| invalid("WORKER_HTTP_ADDR", "must be an address like 0.0.0.0:9091"))?;
        Ok(Self {
            database_url: config::database_url()?,
            amqp: AmqpSettings::from_env()?,
            cio,
            app_rate_limit,
            concurrency,
            max_attempts: config::parse_or("RETRY_MAX_ATTEMPTS", 10)?,
            batch_size: batch_size()?,
            batch_wait: Duration::from_millis(config::parse_or("WORKER_BATCH_WAIT_MS", 20u64)?),
            password_return,
            mail,
            default_role: config::or_default("DEFAULT_ROLE", "subscriber"),
            password_length,
            field_map,
            log_format: shared::telemetry::format_from_env()?,
            shutdown_grace: config::seconds_or("SHUTDOWN_GRACE_SECS", Duration::from_secs(30))?,
            http_addr,
            outbox_give_up_after: duration_or("OUTBOX_GIVE_UP_AFTER", Duration::from_secs(24 * 3600))?,
            sync_email_changes: flag_or("SYNC_EMAIL_CHANGES", true)?,
            not_found_attempts: crate::sync::NOT_FOUND_ATTEMPTS,
            snapshot_max_members: config::parse_or("SNAPSHOT_MAX_MEMBERS", crate::sync::snapshot::DEFAULT_MAX_MEMBERS)?,
            retention_days: retention_days()?,
            retention_first_run: crate::retention::FIRST_PRUNE_AFTER,
        })
    }
}
