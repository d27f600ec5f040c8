//! The ingress's configuration, read once at start: the access keys with their
//! labels, the public and admin addresses, and the limits that protect the public port.

use std::{net::SocketAddr, time::Duration};

use secrecy::ExposeSecret;
use shared::config::{self, AmqpArgs, AmqpSettings, ConfigError, LogArgs};

use crate::auth::AccessKey;

/// Default admin address: loopback, so that `/metrics` and `/readyz` are never public by accident.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";

/// Keys shorter than this start with a warning (they are guessable in bulk).
pub const RECOMMENDED_KEY_LEN: usize = 20;
/// Keys shorter than this are refused.
pub const MIN_KEY_LEN: usize = 8;

/// Keys shipped in the examples (`deploy/`, the README): refused, in any case. Any key containing
/// `change-me` or `changeme` is refused as well.
const PLACEHOLDERS: [&str; 3] = ["youraccesskey", "your-access-key", "access-key"];

/// What protects the public port from slow and abusive clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accepting a connection (or its first byte after an idle pause) to a complete request head.
    pub header_timeout: Duration,
    /// To receive the whole body, once the head is in (answered 408).
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Open connections; one more gets an immediate 503 with `Retry-After` and is closed.
    pub max_connections: usize,
    /// Webhooks waiting for the broker's confirm; one more gets an immediate 503 with `Retry-After`.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 4096,
            max_in_flight: 1024,
        }
    }
}

#[derive(Clone)]
pub struct Settings {
    /// Every valid access key (several allow rotation without downtime), each with an optional label.
    pub access_keys: Vec<AccessKey>,
    /// Public address: webhooks and `/healthz`.
    pub addr: SocketAddr,
    /// Operator address: `/readyz` and `/metrics`.
    pub admin_addr: SocketAddr,
    pub amqp: AmqpSettings,
    pub log_format: String,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub limits: Limits,
}

/// The ingress's settings as clap reads them: every one from its variable (or a flag).
#[derive(clap::Args, Clone)]
pub struct IngressArgs {
    /// Comma-separated access keys, each KEY or label:KEY (at least 8 characters; required)
    #[arg(long, env = "ACCESS_KEYS", hide_env_values = true)]
    pub access_keys: Option<String>,
    /// Public listen address: webhooks and /healthz
    #[arg(long, env = "INGRESS_ADDR", default_value = "0.0.0.0:8080", value_parser = config::socket_addr)]
    pub ingress_addr: SocketAddr,
    /// Operator address: /readyz, /metrics, /healthz
    #[arg(long, env = "INGRESS_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR, value_parser = config::socket_addr)]
    pub ingress_admin_addr: SocketAddr,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Seconds in-flight requests may take to finish after SIGTERM
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value = "20", value_parser = config::seconds)]
    pub shutdown_grace_secs: Duration,
    /// Seconds for a request head to arrive
    #[arg(long, env = "INGRESS_HEADER_TIMEOUT_SECS", default_value = "10", value_parser = config::positive_seconds)]
    pub ingress_header_timeout_secs: Duration,
    /// Seconds for the body to arrive once the head is in (then 408)
    #[arg(long, env = "INGRESS_BODY_TIMEOUT_SECS", default_value = "10", value_parser = config::positive_seconds)]
    pub ingress_body_timeout_secs: Duration,
    /// Seconds a kept-alive connection may wait for its next request
    #[arg(long, env = "INGRESS_IDLE_TIMEOUT_SECS", default_value = "75", value_parser = config::positive_seconds)]
    pub ingress_idle_timeout_secs: Duration,
    /// Open connections on the public port
    #[arg(long, env = "INGRESS_MAX_CONNECTIONS", default_value = "4096", value_parser = config::count::<usize>)]
    pub ingress_max_connections: usize,
    /// Webhooks waiting for the broker's confirm at once
    #[arg(long, env = "INGRESS_MAX_IN_FLIGHT", default_value = "1024", value_parser = config::count::<usize>)]
    pub ingress_max_in_flight: usize,
}

/// The ingress command line: serve (the default) or `check`.
#[derive(clap::Parser)]
#[command(
    name = "ingress",
    version,
    about = "cio-sync ingress: receives Customer.io webhooks and queues them",
    long_about = "cio-sync ingress: receives Customer.io webhooks and queues them.\n\nEvery setting is read from its environment variable (shown below with its default); a flag overrides it. Values are checked at start.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    #[command(flatten)]
    pub args: IngressArgs,
}

#[derive(clap::Subcommand, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Check the configuration and the broker without changing anything (reads the same
    /// variables as the ingress); exits 1 when a check fails, 2 when the configuration is invalid.
    Check,
}

impl Settings {
    /// The settings from the environment alone.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_args(config::parse_env::<IngressArgs>("ingress")?)
    }

    /// Checks what clap cannot: the access keys and the broker's node list.
    pub fn from_args(args: IngressArgs) -> Result<Self, ConfigError> {
        let keys = args.access_keys.as_deref().map(config::split_list).unwrap_or_default();
        let access_keys = parse_access_keys(&keys)?;
        Ok(Self {
            access_keys,
            addr: args.ingress_addr,
            admin_addr: args.ingress_admin_addr,
            amqp: AmqpSettings::from_args(args.amqp)?,
            log_format: args.log.log_format,
            shutdown_grace: args.shutdown_grace_secs,
            limits: Limits {
                header_timeout: args.ingress_header_timeout_secs,
                body_timeout: args.ingress_body_timeout_secs,
                idle_timeout: args.ingress_idle_timeout_secs,
                max_connections: args.ingress_max_connections,
                max_in_flight: args.ingress_max_in_flight,
            },
        })
    }

    /// What the operator should fix although the ingress can run; never contains a key.
    pub fn warnings(&self) -> Vec<String> {
        self.access_keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.secret.expose_secret().chars().count() < RECOMMENDED_KEY_LEN)
            .map(|(i, k)| {
                format!(
                    "access key {} is shorter than {RECOMMENDED_KEY_LEN} characters: replace it with a long random one (openssl rand -hex 24)",
                    describe(i, k)
                )
            })
            .collect()
    }
}

/// How a key is named in messages: its label, or its position; never its value.
fn describe(index: usize, key: &AccessKey) -> String {
    match &key.label {
        Some(l) => format!("'{l}'"),
        None => format!("#{} (unlabelled)", index + 1),
    }
}

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 64
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_placeholder(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("change-me") || k.contains("changeme") || PLACEHOLDERS.contains(&k.as_str())
}

/// Parses `ACCESS_KEYS` items: `KEY` or `label:KEY` (the first `:` ends the label). Errors name the
/// key by label or position, never by value.
pub fn parse_access_keys(items: &[String]) -> Result<Vec<AccessKey>, ConfigError> {
    let err = |problem: String| ConfigError::new("ACCESS_KEYS", problem);
    if items.is_empty() {
        return Err(err(
            "is required but not set (comma-separated access keys, each optionally label:key)".into(),
        ));
    }
    let mut keys: Vec<AccessKey> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = match item.split_once(':') {
            None => AccessKey::unlabelled(item),
            Some((label, secret)) => {
                let label = label.trim();
                if !valid_label(label) {
                    return Err(err(format!(
                        "entry #{} has an invalid label: use label:key with a label of letters, digits, '_', '-' or '.' (up to 64)",
                        i + 1
                    )));
                }
                AccessKey::labelled(label, secret.trim())
            }
        };
        let secret = key.secret.expose_secret();
        let name = describe(i, &key);
        if secret.chars().count() < MIN_KEY_LEN {
            return Err(err(format!("key {name} is shorter than {MIN_KEY_LEN} characters")));
        }
        if is_placeholder(secret) {
            return Err(err(format!(
                "key {name} is a placeholder from the examples: set a random key (openssl rand -hex 24)"
            )));
        }
        if let Some(other) = keys
            .iter()
            .find(|k| k.secret.expose_secret() == secret && k.label != key.label)
        {
            let first = keys.iter().position(|k| std::ptr::eq(k, other)).unwrap_or(0);
            return Err(err(format!(
                "has one key under two labels ({} and {name})",
                describe(first, other)
            )));
        }
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn problem(s: &[&str]) -> String {
        match parse_access_keys(&items(s)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{s:?} should be refused"),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_environment_and_values_are_checked() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "ingress",
            "--access-keys",
            "crm:a-long-enough-key-123456",
            "--ingress-max-in-flight",
            "7",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let s = Settings::from_args(cli.args).unwrap();
        assert_eq!(s.limits.max_in_flight, 7);
        assert_eq!(s.access_keys[0].label.as_deref(), Some("crm"));
        assert!(matches!(
            Cli::try_parse_from(["ingress", "check"]).unwrap().command,
            Some(Cmd::Check)
        ));
        let e = Cli::try_parse_from(["ingress", "--ingress-body-timeout-secs", "0"])
            .err()
            .unwrap();
        let c = config::config_error(&<Cli as clap::CommandFactory>::command(), &e).unwrap();
        assert_eq!(c.var, "INGRESS_BODY_TIMEOUT_SECS");
        assert_eq!(c.problem, "must be more than 0 seconds");
    }

    #[test]
    fn keys_may_carry_labels() {
        let k = parse_access_keys(&items(&[
            "onboarding:first-key-0123456789",
            "second-key-0123456789",
            "crm:key:with:colons-0123",
        ]))
        .unwrap();
        assert_eq!(k[0].label.as_deref(), Some("onboarding"));
        assert_eq!(k[0].secret.expose_secret(), "first-key-0123456789");
        assert_eq!(k[1].label, None);
        assert_eq!(k[2].label.as_deref(), Some("crm"));
        assert_eq!(k[2].secret.expose_secret(), "key:with:colons-0123");
    }

    #[test]
    fn placeholders_from_the_examples_are_refused_naming_the_label_only() {
        for placeholder in ["change-me-access-key", "CHANGE-ME-access-key", "YOURACCESSKEY"] {
            let p = problem(&["good-key-0123456789abc", &format!("crm:{placeholder}")]);
            assert!(
                p.contains("ACCESS_KEYS") && p.contains("'crm'") && p.contains("placeholder"),
                "{p}"
            );
            assert!(!p.contains(placeholder), "{p}");
        }
        let p = problem(&["change-me-access-key"]);
        assert!(p.contains("#1 (unlabelled)"), "{p}");
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_the_key() {
        assert!(problem(&[]).contains("required"));
        let p = problem(&["crm:short"]);
        assert!(
            p.contains("'crm'") && p.contains("shorter than 8") && !p.contains("short:"),
            "{p}"
        );
        let p = problem(&[":label-less-key-000000"]);
        assert!(p.contains("invalid label") && !p.contains("label-less"), "{p}");
        let p = problem(&["a b:some-key-0000000000"]);
        assert!(p.contains("entry #1"), "{p}");
        let p = problem(&["crm:same-key-0000000000", "web:same-key-0000000000"]);
        assert!(p.contains("'crm' and 'web'") && !p.contains("same-key"), "{p}");
        // The same key twice under one label is harmless.
        assert!(parse_access_keys(&items(&["crm:same-key-0000000000", "crm:same-key-0000000000"])).is_ok());
    }

    #[test]
    fn short_keys_start_with_a_warning_naming_the_label_never_the_value() {
        let s = Settings {
            access_keys: parse_access_keys(&items(&[
                "crm:short-key-123",
                "long-enough-key-0123456789",
                "short-key-456",
            ]))
            .unwrap(),
            addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            amqp: AmqpSettings {
                url: config::DEFAULT_AMQP_URL.into(),
                namespace: "ns".into(),
                publish_timeout: Duration::from_secs(1),
                quorum_group_size: None,
            },
            log_format: "text".into(),
            shutdown_grace: Duration::from_secs(1),
            limits: Limits::default(),
        };
        let w = s.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("'crm'") && !w[0].contains("short-key-123"), "{w:?}");
        assert!(
            w[1].contains("#3 (unlabelled)") && !w[1].contains("short-key-456"),
            "{w:?}"
        );
    }
}
