//! Reading configuration from the environment, in one place for both binaries.
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
    /// One node's URL, or a comma-separated list of the nodes of one cluster (see
    /// [`crate::broker`]). Contains the broker password: never log it.
    pub url: String,
    pub namespace: String,
    /// How long a publish may wait for the broker's confirm before it counts as failed.
    pub publish_timeout: Duration,
    /// Replicas of each quorum queue when it is created (`x-quorum-initial-group-size`); `None`
    /// leaves it to the broker.
    pub quorum_group_size: Option<u16>,
}

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &"<redacted>")
            .field("namespace", &self.namespace)
            .field("publish_timeout", &self.publish_timeout)
            .field("quorum_group_size", &self.quorum_group_size)
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
        let nodes = crate::broker::parse_nodes(&url)
            .map_err(|problem| ConfigError {
                var: "AMQP_URL",
                problem,
            })?
            .len();
        let quorum_group_size = quorum_group_size(var("AMQP_QUORUM_GROUP_SIZE").as_deref(), nodes)?;
        Ok(Self {
            url,
            namespace,
            publish_timeout: seconds_or("PUBLISH_TIMEOUT_SECS", Duration::from_secs(5))?,
            quorum_group_size,
        })
    }

    /// The names of this namespace, carrying the quorum group size its queues are declared with.
    pub fn names(&self) -> crate::topology::Names {
        crate::topology::Names::new(&self.namespace).with_quorum_group_size(self.quorum_group_size)
    }
}

/// `AMQP_QUORUM_GROUP_SIZE`: a number of replicas, or `0` to leave it to the broker. Unset, it is
/// the number of nodes `AMQP_URL` lists when it lists several (each queue on every listed node),
/// and left to the broker for a single URL (a lone node, or a load balancer in front of a cluster;
/// the broker's `quorum_cluster_size` defaults to 3).
fn quorum_group_size(value: Option<&str>, nodes: usize) -> Result<Option<u16>> {
    match value {
        None if nodes > 1 => Ok(Some(nodes.min(u16::MAX as usize) as u16)),
        None => Ok(None),
        Some(v) => match v.parse::<u16>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(ConfigError {
                var: "AMQP_QUORUM_GROUP_SIZE",
                problem: "must be a whole number of replicas (0 = the broker's default)".into(),
            }),
        },
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
            quorum_group_size: None,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn the_quorum_group_size_follows_the_node_list_unless_set() {
        assert_eq!(quorum_group_size(None, 3), Ok(Some(3)));
        assert_eq!(quorum_group_size(None, 1), Ok(None));
        assert_eq!(quorum_group_size(Some("5"), 3), Ok(Some(5)));
        assert_eq!(quorum_group_size(Some("0"), 3), Ok(None));
        assert_eq!(
            quorum_group_size(Some("three"), 3).unwrap_err().var,
            "AMQP_QUORUM_GROUP_SIZE"
        );
    }
}
