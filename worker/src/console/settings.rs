//! The console's configuration: its address, the operator tokens, and the database and broker it
//! reads. Read once at start; the console refuses to start without at least one token.

use std::net::SocketAddr;

use secrecy::SecretString;
use shared::config::{self, AmqpArgs, AmqpSettings, ConfigError, DatabaseArgs, LogArgs};

/// Where the console listens unless `CONSOLE_ADDR` says otherwise: this machine only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8088";

/// The shortest operator token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// One operator token; the label names its holder in the console's log (never the token).
#[derive(Clone)]
pub struct OperatorToken {
    pub label: String,
    pub secret: SecretString,
}

#[derive(Clone)]
pub struct ConsoleSettings {
    pub addr: SocketAddr,
    pub tokens: Vec<OperatorToken>,
    pub database_url: String,
    pub amqp: AmqpSettings,
    /// App API requests/s (`CIO_APP_RATE_LIMIT`), to show the shared budget's state.
    pub app_rate_limit: f64,
    /// Whether the session cookie carries `Secure` (only sent over HTTPS).
    pub secure_cookie: bool,
    pub log_format: String,
}

/// Parses `CONSOLE_TOKENS`: comma-separated tokens, each optionally `label:token`.
pub fn parse_tokens(items: &[String]) -> Result<Vec<OperatorToken>, ConfigError> {
    const VAR: &str = "CONSOLE_TOKENS";
    if items.is_empty() {
        return Err(ConfigError::new(
            VAR,
            "is required: the console refuses to start without operator tokens",
        ));
    }
    let mut out: Vec<OperatorToken> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (label, token) = match item.split_once(':') {
            Some((l, t)) => (l.trim().to_string(), t.trim()),
            None => (format!("token {}", i + 1), item.as_str()),
        };
        let label_ok = !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '));
        if !label_ok {
            return Err(ConfigError::new(
                VAR,
                format!("item {}: a label may use letters, digits, '-', '_' and '.'", i + 1),
            ));
        }
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(ConfigError::new(
                VAR,
                format!("item {}: a token must be at least {MIN_TOKEN_LEN} characters", i + 1),
            ));
        }
        if seen.contains(&token) {
            return Err(ConfigError::new(
                VAR,
                format!("item {}: the same token is listed twice", i + 1),
            ));
        }
        seen.push(token);
        out.push(OperatorToken {
            label,
            secret: SecretString::from(token.to_string()),
        });
    }
    Ok(out)
}

/// Whether the session cookie carries `Secure` (`CONSOLE_SECURE_COOKIE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureCookie {
    /// `Secure` unless the console listens on a loopback address.
    Auto,
    On,
    Off,
}

fn secure_cookie(v: &str) -> Result<SecureCookie, String> {
    match v.trim() {
        "auto" => Ok(SecureCookie::Auto),
        "true" | "1" => Ok(SecureCookie::On),
        "false" | "0" => Ok(SecureCookie::Off),
        _ => Err("must be auto, true or false".into()),
    }
}

/// The settings of `worker console` as clap reads them: every one from its variable (or a flag).
#[derive(clap::Args, Clone)]
pub struct ConsoleArgs {
    /// Comma-separated operator tokens, each optionally label:token, at least 16 characters
    /// (required)
    #[arg(long, env = "CONSOLE_TOKENS", hide_env_values = true)]
    pub console_tokens: Option<String>,
    /// The console's listen address
    #[arg(long, env = "CONSOLE_ADDR", default_value = DEFAULT_ADDR, value_parser = config::socket_addr)]
    pub console_addr: SocketAddr,
    /// auto (a Secure session cookie unless CONSOLE_ADDR is a loopback address), true or false
    #[arg(long, env = "CONSOLE_SECURE_COOKIE", default_value = "auto", value_parser = secure_cookie)]
    pub console_secure_cookie: SecureCookie,
    /// App API requests/s shared by all workers (to show the budget's state)
    #[arg(long, env = "CIO_APP_RATE_LIMIT", default_value = "10", value_parser = config::rate)]
    pub cio_app_rate_limit: f64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl std::fmt::Debug for ConsoleArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens and the URLs are secrets: nothing is shown.
        f.write_str("ConsoleArgs { .. }")
    }
}

impl ConsoleSettings {
    /// The console's settings from the environment alone.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_args(config::parse_env::<ConsoleArgs>("worker console")?)
    }

    /// Checks what clap cannot: the tokens and the broker's node list.
    pub fn from_args(args: ConsoleArgs) -> Result<Self, ConfigError> {
        let items = args
            .console_tokens
            .as_deref()
            .map(config::split_list)
            .unwrap_or_default();
        let tokens = parse_tokens(&items)?;
        let addr = args.console_addr;
        let secure_cookie = match args.console_secure_cookie {
            SecureCookie::Auto => !addr.ip().is_loopback(),
            SecureCookie::On => true,
            SecureCookie::Off => false,
        };
        Ok(Self {
            addr,
            tokens,
            database_url: args.database.url()?,
            amqp: AmqpSettings::from_args(args.amqp)?,
            app_rate_limit: args.cio_app_rate_limit,
            secure_cookie,
            log_format: args.log.log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn items(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tokens_are_required_long_and_distinct() {
        let e = parse_tokens(&[]).err().unwrap();
        assert_eq!(e.var, "CONSOLE_TOKENS");
        assert!(e.to_string().contains("refuses to start"));
        let short = parse_tokens(&items(&["alice:short"])).err().unwrap();
        assert!(short.problem.contains("at least 16"), "{short}");
        assert!(!short.to_string().contains("short:"), "the value is never echoed");
        assert!(parse_tokens(&items(&["0123456789abcdef", "0123456789abcdef"])).is_err());
        assert!(parse_tokens(&items(&["bad/label:0123456789abcdef"])).is_err());
    }

    #[test]
    fn labels_name_the_holders() {
        let t = parse_tokens(&items(&["alice:0123456789abcdef", "fedcba9876543210"])).unwrap();
        assert_eq!(t[0].label, "alice");
        assert_eq!(t[0].secret.expose_secret(), "0123456789abcdef");
        assert_eq!(t[1].label, "token 2");
    }
}
