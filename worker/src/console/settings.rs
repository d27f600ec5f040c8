//! The console's configuration: its address, the operator tokens, and the database and broker it
//! reads. Read once at start; the console refuses to start without at least one token.

use std::net::SocketAddr;

use secrecy::SecretString;
use shared::config::{self, AmqpSettings, ConfigError};

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

fn invalid(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// Parses `CONSOLE_TOKENS`: comma-separated tokens, each optionally `label:token`.
pub fn parse_tokens(items: &[String]) -> Result<Vec<OperatorToken>, ConfigError> {
    const VAR: &str = "CONSOLE_TOKENS";
    if items.is_empty() {
        return Err(invalid(
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
            return Err(invalid(
                VAR,
                format!("item {}: a label may use letters, digits, '-', '_' and '.'", i + 1),
            ));
        }
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(invalid(
                VAR,
                format!("item {}: a token must be at least {MIN_TOKEN_LEN} characters", i + 1),
            ));
        }
        if seen.contains(&token) {
            return Err(invalid(VAR, format!("item {}: the same token is listed twice", i + 1)));
        }
        seen.push(token);
        out.push(OperatorToken {
            label,
            secret: SecretString::from(token.to_string()),
        });
    }
    Ok(out)
}

impl ConsoleSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let tokens = parse_tokens(&config::list("CONSOLE_TOKENS"))?;
        let addr: SocketAddr = config::or_default("CONSOLE_ADDR", DEFAULT_ADDR)
            .parse()
            .map_err(|_| invalid("CONSOLE_ADDR", "must be an address like 127.0.0.1:8088"))?;
        let secure_cookie = match config::var("CONSOLE_SECURE_COOKIE").as_deref() {
            None | Some("auto") => !addr.ip().is_loopback(),
            Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(_) => return Err(invalid("CONSOLE_SECURE_COOKIE", "must be auto, true or false")),
        };
        let app_rate_limit: f64 = config::parse_or("CIO_APP_RATE_LIMIT", 10.0)?;
        if !(app_rate_limit.is_finite() && app_rate_limit > 0.0) {
            return Err(invalid("CIO_APP_RATE_LIMIT", "must be a positive number"));
        }
        Ok(Self {
            addr,
            tokens,
            database_url: config::database_url()?,
            amqp: AmqpSettings::from_env()?,
            app_rate_limit,
            secure_cookie,
            log_format: shared::telemetry::format_from_env()?,
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
