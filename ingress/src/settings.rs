//! The ingress's configuration (DESIGN §6), read once at start.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::config::{self, AmqpSettings, ConfigError};

#[derive(Clone)]
pub struct Settings {
    /// Every valid access key (several allow rotation without downtime).
    pub access_keys: Vec<SecretString>,
    pub addr: SocketAddr,
    pub amqp: AmqpSettings,
    pub log_format: String,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let keys = config::list("ACCESS_KEYS");
        if keys.is_empty() {
            return Err(ConfigError {
                var: "ACCESS_KEYS",
                problem: "is required but not set (comma-separated access keys)".into(),
            });
        }
        if keys.iter().any(|k| k.len() < 8) {
            return Err(ConfigError {
                var: "ACCESS_KEYS",
                problem: "has a key shorter than 8 characters".into(),
            });
        }
        let addr = config::or_default("INGRESS_ADDR", "0.0.0.0:8080");
        let addr = addr.parse().map_err(|_| ConfigError {
            var: "INGRESS_ADDR",
            problem: "must be an address like 0.0.0.0:8080".into(),
        })?;
        Ok(Self {
            access_keys: keys.into_iter().map(SecretString::from).collect(),
            addr,
            amqp: AmqpSettings::from_env()?,
            log_format: shared::telemetry::format_from_env()?,
            shutdown_grace: config::seconds_or("SHUTDOWN_GRACE_SECS", Duration::from_secs(20))?,
        })
    }
}
