//! Reading configuration, in one place for both binaries: clap parses every setting from its
//! environment variable (or a flag), value parsers check ranges, and the settings parts both
//! binaries share are flattenable [`clap::Args`] structs.
//!
//! A missing or invalid setting is a [`ConfigError`] that names the variable; the binaries print
//! it on one line and exit 2. Values are never echoed, so secrets cannot leak through an error
//! message. A variable set to a blank value counts as unset.

use std::{borrow::Cow, fmt, time::Duration};

/// The one-line reason a binary refuses to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting's variable name (a constant, or read from the clap command that refused it).
    pub var: Cow<'static, str>,
    pub problem: String,
}

impl ConfigError {
    pub fn new(var: impl Into<Cow<'static, str>>, problem: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error: {} {}", self.var, self.problem)
    }
}

impl std::error::Error for ConfigError {}

pub type Result<T> = std::result::Result<T, ConfigError>;

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
    /// The AMQP settings from the environment alone (operator commands that need only the broker).
    pub fn from_env() -> Result<Self> {
        Self::from_args(parse_env::<AmqpArgs>("cio-sync")?)
    }

    /// Checks what clap cannot: the namespace's characters and the node list.
    pub fn from_args(args: AmqpArgs) -> Result<Self> {
        let namespace = args.amqp_namespace;
        if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ConfigError::new(
                "AMQP_NAMESPACE",
                "may only contain letters, digits, '_', '-' and '.'",
            ));
        }
        let url = args.amqp_url;
        let nodes = crate::broker::parse_nodes(&url)
            .map_err(|problem| ConfigError::new("AMQP_URL", problem))?
            .len();
        let quorum_group_size = quorum_group_size(args.amqp_quorum_group_size, nodes);
        Ok(Self {
            url,
            namespace,
            publish_timeout: args.publish_timeout_secs,
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
fn quorum_group_size(value: Option<u16>, nodes: usize) -> Option<u16> {
    match value {
        None if nodes > 1 => Some(nodes.min(u16::MAX as usize) as u16),
        None | Some(0) => None,
        Some(n) => Some(n),
    }
}

/// The `AMQP_QUORUM_GROUP_SIZE` value parser.
fn replicas(v: &str) -> std::result::Result<u16, String> {
    v.trim()
        .parse()
        .map_err(|_| "must be a whole number of replicas (0 = the broker's default)".to_string())
}

/// The database URL (it may contain a password: never log it), from the environment alone.
pub fn database_url() -> Result<String> {
    parse_env::<DatabaseArgs>("cio-sync")?.url()
}

/// The Postgres settings of the commands that use the database.
#[derive(clap::Args, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL (it may contain a password: never printed)
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true, value_parser = trimmed)]
    pub database_url: String,
}

impl DatabaseArgs {
    /// The URL, once it is known to be a Postgres one.
    pub fn url(self) -> Result<String> {
        let url = self.database_url;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }
        Ok(url)
    }
}

/// The broker settings shared by both binaries.
#[derive(clap::Args, Clone)]
pub struct AmqpArgs {
    /// RabbitMQ: one URL, or a comma-separated list of the nodes of one cluster (it holds the
    /// broker password: never printed)
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, value_parser = trimmed)]
    pub amqp_url: String,
    /// Prefix of every exchange and queue
    #[arg(long, env = "AMQP_NAMESPACE", default_value = DEFAULT_NAMESPACE, value_parser = trimmed)]
    pub amqp_namespace: String,
    /// Seconds a publish waits for the broker's confirm before it counts as failed
    #[arg(long, env = "PUBLISH_TIMEOUT_SECS", default_value = "5", value_parser = positive_seconds)]
    pub publish_timeout_secs: Duration,
    /// Replicas of each quorum queue when it is created (0 = the broker's default) [default: the
    /// number of nodes AMQP_URL lists when it lists several, else the broker's default]
    #[arg(long, env = "AMQP_QUORUM_GROUP_SIZE", value_parser = replicas)]
    pub amqp_quorum_group_size: Option<u16>,
}

/// How both binaries log.
#[derive(clap::Args, Clone)]
pub struct LogArgs {
    /// Log line format: text or json (the filter is RUST_LOG)
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = log_format)]
    pub log_format: String,
}

fn log_format(v: &str) -> std::result::Result<String, String> {
    let f = v.trim().to_ascii_lowercase();
    if f == "text" || f == "json" {
        Ok(f)
    } else {
        Err("must be text or json".into())
    }
}

// ------------------------------------------------------------------------------------------
// Value parsers: every one trims its input and says what is expected without echoing the value.

/// Any value, trimmed.
pub fn trimmed(v: &str) -> std::result::Result<String, String> {
    Ok(v.trim().to_string())
}

/// A duration in seconds (fractions allowed: `0.5`), `0` included.
pub fn seconds(v: &str) -> std::result::Result<Duration, String> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "must be a number of seconds".to_string())
}

/// A timeout in seconds: more than 0.
pub fn positive_seconds(v: &str) -> std::result::Result<Duration, String> {
    match seconds(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err("must be more than 0 seconds".into()),
    }
}

/// A count of at least 1 (`config::count::<u32>` for another integer type than `usize`).
pub fn count<T>(v: &str) -> std::result::Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    match v.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

/// A socket address like `0.0.0.0:8080`.
pub fn socket_addr(v: &str) -> std::result::Result<std::net::SocketAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| "must be an address like 0.0.0.0:8080".to_string())
}

/// A number of requests per second: more than 0.
pub fn rate(v: &str) -> std::result::Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err("must be a positive number of requests per second".into()),
    }
}

/// Seconds in one unit of a written span (`30s`, `90m`, `24h`, `2d`); `None` for another unit.
pub fn unit_seconds(unit: &str) -> Option<u64> {
    match unit {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        "d" => Some(86_400),
        _ => None,
    }
}

/// A comma-separated list; items are trimmed and empty items dropped.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

// ------------------------------------------------------------------------------------------
// Parsing: the environment is the primary source, flags work too.

/// A variable that is set but blank counts as unset (compose and Kubernetes examples set
/// optional variables to ""), so that its default applies: its `env` is removed from the
/// command before parsing, in every subcommand.
fn blank_env_as_unset(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        let blank = a
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| v.to_str().is_some_and(|s| s.trim().is_empty()));
        if blank {
            a.env(None::<&'static str>)
        } else {
            a
        }
    })
    .mut_subcommands(blank_env_as_unset)
}

/// The argument of `cmd` (or of one of its subcommands) that clap names `display` in an error
/// (`--long <VALUE>`; every setting has a long flag).
fn find_arg<'a>(cmd: &'a clap::Command, display: &str) -> Option<&'a clap::Arg> {
    let named = |a: &clap::Arg| {
        a.get_long().is_some_and(|l| {
            display
                .strip_prefix("--")
                .and_then(|d| d.strip_prefix(l))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=']))
        })
    };
    cmd.get_arguments()
        .find(|a| named(a))
        .or_else(|| cmd.get_subcommands().find_map(|s| find_arg(s, display)))
}

/// A clap error about the value of a setting, as the [`ConfigError`] naming its variable; `None`
/// for other errors (usage, `--help`, `--version`, a command's own flags). The problem is the value parser's message, which never
/// echoes the value (clap's own message would).
pub fn config_error(cmd: &clap::Command, e: &clap::Error) -> Option<ConfigError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(display)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // Only settings (arguments with a variable): a command's own flags keep clap's message.
    let name = find_arg(cmd, display)?.get_env()?.to_string_lossy().into_owned();
    let problem = match std::error::Error::source(e) {
        Some(source) => source.to_string(),
        None => match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(v)) => format!("must be one of {}", v.join(", ")),
            _ => "is invalid".into(),
        },
    };
    Some(ConfigError::new(name, problem))
}

/// Parses settings from the environment alone (no command-line arguments), as `bin` would.
pub fn parse_env<A: clap::Args + clap::FromArgMatches>(bin: &'static str) -> Result<A> {
    let mut cmd = blank_env_as_unset(A::augment_args(clap::Command::new(bin)));
    cmd.try_get_matches_from_mut([bin])
        .and_then(|m| A::from_arg_matches(&m))
        .map_err(|e| {
            config_error(&cmd, &e)
                .unwrap_or_else(|| ConfigError::new("environment", format!("cannot be read: {}", e.kind())))
        })
}

/// Parses the real command line (and the environment) of a binary: `--help` and `--version`
/// print and exit 0, a usage error exits 2 with clap's message, an invalid value exits 2 with one
/// line naming its variable.
pub fn parse_cli<P: clap::Parser>() -> P {
    let mut cmd = blank_env_as_unset(P::command());
    let parsed = cmd
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|m| P::from_arg_matches(&m));
    match parsed {
        Ok(p) => p,
        Err(e) => match config_error(&cmd, &e) {
            Some(c) => {
                eprintln!("{c}");
                std::process::exit(2);
            }
            None => e.format(&mut cmd).exit(),
        },
    }
}

/// Every variable a command reads, in it and in its subcommands, sorted and without duplicates.
pub fn env_names(cmd: &clap::Command) -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    for sub in cmd.get_subcommands() {
        names.extend(env_names(sub));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_the_variable_on_one_line() {
        let e = ConfigError::new("ACCESS_KEYS", "is required but not set");
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
        assert_eq!(quorum_group_size(None, 3), Some(3));
        assert_eq!(quorum_group_size(None, 1), None);
        assert_eq!(quorum_group_size(Some(5), 3), Some(5));
        assert_eq!(quorum_group_size(Some(0), 3), None);
        assert!(replicas("three").unwrap_err().contains("whole number of replicas"));
    }

    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        amqp: AmqpArgs,
    }

    fn probe(args: &[&str]) -> std::result::Result<Probe, Option<ConfigError>> {
        use clap::{CommandFactory, FromArgMatches};
        let mut cmd = Probe::command();
        cmd.try_get_matches_from_mut(args)
            .and_then(|m| Probe::from_arg_matches(&m))
            .map_err(|e| config_error(&cmd, &e))
    }

    #[test]
    fn an_invalid_value_is_a_config_error_naming_the_variable() {
        let e = probe(&["p", "--publish-timeout-secs", "0"]).err().unwrap().unwrap();
        assert_eq!(
            e.to_string(),
            "configuration error: PUBLISH_TIMEOUT_SECS must be more than 0 seconds"
        );
        let p = probe(&["p", "--publish-timeout-secs", " 0.5 "]).ok().unwrap();
        assert_eq!(p.amqp.publish_timeout_secs, Duration::from_millis(500));
        assert!(probe(&["p", "--no-such-flag"]).err().unwrap().is_none());
    }

    #[test]
    fn value_parsers_check_ranges() {
        assert!(positive_seconds("0").is_err());
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert!(seconds("-1").is_err());
        assert!(count::<usize>("0").is_err());
        assert_eq!(count::<usize>(" 3 "), Ok(3));
        assert!(rate("0").is_err());
        assert!(socket_addr("nowhere").is_err());
        assert_eq!(split_list(" a, ,b ,"), vec!["a", "b"]);
    }
}
