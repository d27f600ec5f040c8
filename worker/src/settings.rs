//! The worker's configuration, read once at start. `worker run` needs all of it;
//! the operator commands (`migrate`, `dlq`, `events`, `prune`, `erase`) need only the database and the
//! broker, and `check` reads all of it to check it.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::config::{self, AmqpArgs, AmqpSettings, ConfigError, DatabaseArgs, LogArgs};

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

/// The settings of `worker run` (and `worker check`) as clap reads them: every one from its
/// variable (or a flag). Nothing is required here, so that the operator commands run without the
/// settings only `run` needs: [`Settings::from_args`] checks those.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Customer.io region: us or eu
    #[arg(long, env = "CIO_REGION", default_value = "us", value_parser = region)]
    pub cio_region: String,
    /// App API bearer key (required)
    #[arg(long, env = "CIO_APP_API_KEY", hide_env_values = true)]
    pub cio_app_api_key: Option<String>,
    /// Track API site id (required for the password return)
    #[arg(long, env = "CIO_SITE_ID", hide_env_values = true, value_parser = config::trimmed)]
    pub cio_site_id: Option<String>,
    /// Track API key (required for the password return)
    #[arg(long, env = "CIO_TRACK_API_KEY", hide_env_values = true)]
    pub cio_track_api_key: Option<String>,
    /// App API base URL override, scheme and host only [default: by region]
    #[arg(long, env = "CIO_APP_API_URL", value_parser = http_url)]
    pub cio_app_api_url: Option<String>,
    /// Track API base URL override, scheme and host only [default: by region]
    #[arg(long, env = "CIO_TRACK_API_URL", value_parser = http_url)]
    pub cio_track_api_url: Option<String>,
    /// Seconds one Customer.io call may take
    #[arg(long, env = "CIO_TIMEOUT_SECS", default_value = "10", value_parser = config::positive_seconds)]
    pub cio_timeout_secs: Duration,
    /// App API requests/s shared by all workers
    #[arg(long, env = "CIO_APP_RATE_LIMIT", default_value = "10", value_parser = config::rate)]
    pub cio_app_rate_limit: f64,
    /// Batches processed at once (1-1000)
    #[arg(long, env = "WORKER_CONCURRENCY", default_value = "16", value_parser = one_to_thousand)]
    pub worker_concurrency: usize,
    /// Most commands taken through the pipeline together (1-1000; 1 = never batch)
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value = "100", value_parser = one_to_thousand)]
    pub worker_batch_size: usize,
    /// Milliseconds a lone command waits for company
    #[arg(long, env = "WORKER_BATCH_WAIT_MS", default_value = "20", value_parser = milliseconds)]
    pub worker_batch_wait_ms: u64,
    /// Attempts of one command before it is dead-lettered (at least 1)
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value = "10", value_parser = config::count::<u32>)]
    pub retry_max_attempts: u32,
    /// Segment memberships above which no membership snapshot is taken (0 = never snapshot)
    #[arg(long, env = "SNAPSHOT_MAX_MEMBERS", default_value_t = crate::sync::snapshot::DEFAULT_MAX_MEMBERS, value_parser = members)]
    pub snapshot_max_members: usize,
    /// Days finished events are kept (0 = forever; up to 36500)
    #[arg(long, env = "RETENTION_DAYS", default_value = "0", value_parser = retention_days)]
    pub retention_days: u32,
    /// Customer.io attribute receiving generated passwords (unset = off)
    #[arg(long, env = "RETURN_PASSWORD_FIELD", value_parser = config::trimmed)]
    pub return_password_field: Option<String>,
    /// Ring of keys sealing passwords in the outbox: comma-separated id:key, 32 bytes in base64
    /// each (required when the password return is on)
    #[arg(long, env = "SECRETS_KEYS", hide_env_values = true)]
    pub secrets_keys: Option<String>,
    /// One key sealing passwords (id `default`), when SECRETS_KEYS is unset
    #[arg(long, env = "SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,
    /// Age after which an undelivered outbox row is dead (24h, 90m, 30s, 2d or seconds)
    #[arg(long, env = "OUTBOX_GIVE_UP_AFTER", default_value = "24h", value_parser = human_duration)]
    pub outbox_give_up_after: Duration,
    /// Whether a changed Customer.io e-mail changes the user's (true or false)
    #[arg(long, env = "SYNC_EMAIL_CHANGES", default_value = "true", value_parser = flag, action = clap::ArgAction::Set)]
    pub sync_email_changes: bool,
    /// Role of new users
    #[arg(long, env = "DEFAULT_ROLE", default_value = "subscriber", value_parser = config::trimmed)]
    pub default_role: String,
    /// Length of generated passwords (16-128)
    #[arg(long, env = "PASSWORD_LENGTH", default_value = "20", value_parser = password_length)]
    pub password_length: usize,
    /// Welcome e-mail SMTP URL (it may hold a password; unset = no welcome e-mail)
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = config::trimmed)]
    pub smtp_url: Option<String>,
    /// Welcome e-mail sender (required with SMTP_URL)
    #[arg(long, env = "MAIL_FROM", value_parser = config::trimmed)]
    pub mail_from: Option<String>,
    /// Login link in the welcome e-mail (required with SMTP_URL)
    #[arg(long, env = "LOGIN_URL", value_parser = config::trimmed)]
    pub login_url: Option<String>,
    /// Welcome e-mail subject [default: built in]
    #[arg(long, env = "MAIL_SUBJECT", value_parser = config::trimmed)]
    pub mail_subject: Option<String>,
    /// Welcome e-mail body template file [default: built in]
    #[arg(long, env = "MAIL_TEMPLATE_FILE", value_parser = config::trimmed)]
    pub mail_template_file: Option<String>,
    /// TOML file mapping Customer.io attributes to user fields and meta [default: built in]
    #[arg(long, env = "FIELD_MAP_FILE", value_parser = config::trimmed)]
    pub field_map_file: Option<String>,
    /// Where /metrics, /healthz and /readyz are served
    #[arg(long, env = "WORKER_HTTP_ADDR", default_value = "0.0.0.0:9091", value_parser = config::socket_addr)]
    pub worker_http_addr: SocketAddr,
    /// Seconds a stopping worker may finish in-flight work
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value = "30", value_parser = config::seconds)]
    pub shutdown_grace_secs: Duration,
}

impl std::fmt::Debug for RunArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Several settings are secrets: none is shown.
        f.write_str("RunArgs { .. }")
    }
}

fn region(v: &str) -> Result<String, String> {
    let r = v.trim().to_ascii_lowercase();
    match CioSettings::region_urls(&r) {
        Some(_) => Ok(r),
        None => Err("must be us or eu".into()),
    }
}

fn http_url(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.starts_with("http://") || v.starts_with("https://") {
        Ok(v.to_string())
    } else {
        Err("must be a URL like https://host".into())
    }
}

fn one_to_thousand(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err("must be between 1 and 1000".into()),
    }
}

fn milliseconds(v: &str) -> Result<u64, String> {
    v.trim()
        .parse()
        .map_err(|_| "must be a whole number of milliseconds".to_string())
}

fn members(v: &str) -> Result<usize, String> {
    v.trim()
        .parse()
        .map_err(|_| "must be a whole number of memberships (0 = never snapshot)".to_string())
}

fn retention_days(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(d) if d <= 36_500 => Ok(d),
        _ => Err("must be a number of days up to 36500 (0 = keep forever)".into()),
    }
}

fn password_length(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (16..=128).contains(&n) => Ok(n),
        _ => Err("must be between 16 and 128".into()),
    }
}

/// A duration like `24h`, `90m`, `30s`, `2d`, or a number of seconds.
fn human_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let (number, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let scale = match unit.trim() {
        "" => 1,
        u => config::unit_seconds(u).unwrap_or(0),
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 && scale > 0 => Ok(Duration::from_secs(n * scale)),
        _ => Err("must be a positive duration like 24h, 90m, 30s or 2d".into()),
    }
}

fn flag(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// The keys sealing passwords until they are returned: `SECRETS_KEYS` (a ring of `id:key`, the
/// first sealing), else `SECRETS_KEY` (one key).
/// A secret setting's value, trimmed; `None` when unset or blank.
fn present(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn secrets(args: &RunArgs) -> Result<SecretBox, ConfigError> {
    if let Some(ring) = present(&args.secrets_keys) {
        return SecretBox::ring(&ring).map_err(|p| ConfigError::new("SECRETS_KEYS", p));
    }
    match present(&args.secrets_key) {
        Some(key) => SecretBox::from_base64(&key).map_err(|p| ConfigError::new("SECRETS_KEY", p)),
        None => Err(ConfigError::new(
            "SECRETS_KEYS",
            "is required when RETURN_PASSWORD_FIELD is set (or the single SECRETS_KEY)",
        )),
    }
}

impl Settings {
    /// The settings of `worker run` from the environment alone.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_args(config::parse_env::<RunArgs>("worker")?)
    }

    /// Checks what clap cannot: the settings `run` requires, those required together, the
    /// secrets, and the files.
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        let (app_default, track_default) = CioSettings::region_urls(&args.cio_region)
            .ok_or_else(|| ConfigError::new("CIO_REGION", "must be us or eu"))?;
        let app_api_key = present(&args.cio_app_api_key)
            .ok_or_else(|| ConfigError::new("CIO_APP_API_KEY", "is required but not set"))?;
        let site_id = args.cio_site_id.clone();
        let track_api_key = present(&args.cio_track_api_key).map(SecretString::from);
        let cio = CioSettings {
            app_url: args.cio_app_api_url.clone().unwrap_or_else(|| app_default.into()),
            track_url: args.cio_track_api_url.clone().unwrap_or_else(|| track_default.into()),
            app_api_key: SecretString::from(app_api_key),
            site_id: site_id.clone(),
            track_api_key: track_api_key.clone(),
            timeout: args.cio_timeout_secs,
        };
        let password_return = match &args.return_password_field {
            None => None,
            Some(field) => {
                let secrets = secrets(&args)?;
                if site_id.is_none() {
                    return Err(ConfigError::new(
                        "CIO_SITE_ID",
                        "is required when RETURN_PASSWORD_FIELD is set",
                    ));
                }
                if track_api_key.is_none() {
                    return Err(ConfigError::new(
                        "CIO_TRACK_API_KEY",
                        "is required when RETURN_PASSWORD_FIELD is set",
                    ));
                }
                Some(PasswordReturn {
                    field: field.clone(),
                    secrets,
                })
            }
        };
        let mail = match &args.smtp_url {
            None => None,
            Some(smtp_url) => Some(MailSettings {
                smtp_url: smtp_url.clone(),
                from: args
                    .mail_from
                    .clone()
                    .ok_or_else(|| ConfigError::new("MAIL_FROM", "is required but not set"))?,
                login_url: args
                    .login_url
                    .clone()
                    .ok_or_else(|| ConfigError::new("LOGIN_URL", "is required but not set"))?,
                templates: Templates::load(args.mail_subject.clone(), args.mail_template_file.as_deref())?,
            }),
        };
        let field_map = match &args.field_map_file {
            None => FieldMap::default(),
            Some(path) => FieldMap::load(path).map_err(|p| ConfigError::new("FIELD_MAP_FILE", p))?,
        };
        if let Some(pr) = &password_return {
            field_map
                .check_password_field(&pr.field)
                .map_err(|p| ConfigError::new("FIELD_MAP_FILE", p))?;
        }
        Ok(Self {
            database_url: args.database.url()?,
            amqp: AmqpSettings::from_args(args.amqp)?,
            cio,
            app_rate_limit: args.cio_app_rate_limit,
            concurrency: args.worker_concurrency,
            max_attempts: args.retry_max_attempts,
            batch_size: args.worker_batch_size,
            batch_wait: Duration::from_millis(args.worker_batch_wait_ms),
            password_return,
            mail,
            default_role: args.default_role,
            password_length: args.password_length,
            field_map,
            log_format: args.log.log_format,
            shutdown_grace: args.shutdown_grace_secs,
            http_addr: args.worker_http_addr,
            outbox_give_up_after: args.outbox_give_up_after,
            sync_email_changes: args.sync_email_changes,
            not_found_attempts: crate::sync::NOT_FOUND_ATTEMPTS,
            snapshot_max_members: args.snapshot_max_members,
            retention_days: args.retention_days,
            retention_first_run: crate::retention::FIRST_PRUNE_AFTER,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Cmd};

    #[test]
    fn durations_and_flags_read_as_before() {
        assert_eq!(human_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(human_duration(" 90m "), Ok(Duration::from_secs(5_400)));
        assert_eq!(human_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(human_duration("30"), Ok(Duration::from_secs(30)));
        assert!(human_duration("0h").is_err());
        assert!(human_duration("1w").is_err());
        assert_eq!(flag("Yes"), Ok(true));
        assert_eq!(flag("off"), Ok(false));
        assert!(flag("maybe").is_err());
        assert_eq!(region(" EU "), Ok("eu".to_string()));
        assert!(region("mars").is_err());
    }

    #[test]
    fn ranges_are_checked() {
        assert!(password_length("15").is_err());
        assert_eq!(password_length("16"), Ok(16));
        assert_eq!(password_length("128"), Ok(128));
        assert!(password_length("129").is_err());
        assert!(one_to_thousand("0").is_err());
        assert!(one_to_thousand("1001").is_err());
        assert!(config::count::<u32>("0").is_err());
        assert!(retention_days("36501").is_err());
        assert_eq!(retention_days("0"), Ok(0));
        assert!(http_url("api.customer.io").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_out_of_range_flag_names_its_variable() {
        let e = Cli::try_parse_from(["worker", "run", "--password-length", "8"])
            .err()
            .unwrap();
        let c = config::config_error(&Cli::command(), &e).unwrap();
        assert_eq!(
            c.to_string(),
            "configuration error: PASSWORD_LENGTH must be between 16 and 128"
        );
    }

    #[test]
    fn flags_override_and_operator_commands_need_no_run_settings() {
        let cli =
            Cli::try_parse_from(["worker", "run", "--cio-app-api-key", "k", "--worker-concurrency", "3"]).unwrap();
        let Some(Cmd::Run(args)) = cli.command else {
            panic!("run")
        };
        let s = Settings::from_args(args).unwrap();
        assert_eq!(s.concurrency, 3);
        assert_eq!(s.cio.app_url, "https://api.customer.io");
        assert!(matches!(
            Cli::try_parse_from(["worker", "migrate", "--status"]).unwrap().command,
            Some(Cmd::Migrate { status: true })
        ));
    }
}
