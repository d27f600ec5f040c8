//! Reading configuration from the environment (DESIGN §6), in one place for both binaries.
//!
//! A missing or invalid required setting is a [`ConfigError`] that names the variable; the
//! binaries print it on one line and exit non-zero. Values are never echoed, so secrets cannot
//! leak through an error message.

use std::{fmt, str::FromStr, time::Duration};

/// The one-line reason a binary refuses to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error: {} {}", self.var, self.problem)
    }
}

impl std::error::Error for ConfigError {}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// The trimmed value of `name`; unset and empty are both `None`.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub fn required(name: &'static str) -> Result<String> {
    var(name).ok_or_else(|| ConfigError {
        var: name,
        problem: "is required but not set".into(),
    })
}

pub fn or_default(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_string())
}

/// Parses `name` when set, else returns `default`.
pub fn parse_or<T: FromStr>(name: &'static str, default: T) -> Result<T> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError {
            var: name,
            problem: format!("must be a valid {}", std::any::type_name::<T>()),
        }),
    }
}

/// A duration given in whole seconds (fractions allowed: `0.5`).
pub fn seconds_or(name: &'static str, default: Duration) -> Result<Duration> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| ConfigError {
                var: name,
                problem: "must be a number of seconds".into(),
            }),
    }
}

/// A comma-separated list; empty items are dropped.
pub fn list(name: &str) -> Vec<String> {
    var(name)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/cio_sync";
pub const DEFAULT_NAMESPACE: &str = "cio_sync";

/// Where the broker is and which names are ours.
#[derive(Clone)]
pub struct AmqpSettings {
    /// Contains the broker password: never log it.
    pub url: String,
    pub namespace: String,
    /// How long a publish may wait for the broker's confirm before it counts as failed.
    pub publish_timeout: Duration,
}

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &"<redacted>")
            .field("namespace", &self.namespace)
            .field("publish_timeout", &self.publish_timeout)
            .finish()
    }
}

impl AmqpSettings {
    pub fn from_env() -> Result<Self> {
        let namespace = or_default("AMQP_NAMESPACE", DEFAULT_NAMESPACE);
        if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ConfigError {
                var: "AMQP_NAMESPACE",
                problem: "may only contain letters, digits, '_', '-' and '.'".into(),
            });
        }
        let url = or_default("AMQP_URL", DEFAULT_AMQP_URL);
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError {
                var: "AMQP_URL",
                problem: "must start with amqp:// or amqps://".into(),
            });
        }
        Ok(Self {
            url,
            namespace,
            publish_timeout: seconds_or("PUBLISH_TIMEOUT_SECS", Duration::from_secs(5))?,
        })
    }
}

/// The database URL (it may contain a password: never log it).
pub fn database_url() -> Result<String> {
    let url = or_default("DATABASE_URL", DEFAULT_DATABASE_URL);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError {
            var: "DATABASE_URL",
            problem: "must start with postgres:// or postgresql://".into(),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_the_variable_on_one_line() {
        let e = ConfigError {
            var: "ACCESS_KEYS",
            problem: "is required but not set".into(),
        };
        assert_eq!(
            e.to_string(),
            "configuration error: ACCESS_KEYS is required but not set"
        );
    }

    #[test]
    fn amqp_settings_debug_hides_the_url() {
        let s = AmqpSettings {
            url: "amqp://user:hunter2@host/%2f".into(),
            namespace: "ns".into(),
            publish_timeout: Duration::from_secs(1),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
