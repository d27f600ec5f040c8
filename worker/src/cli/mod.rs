//! The `worker` command line: `run` (default), `check`, `migrate`, `dlq …`, `events …`,
//! `outbox …`, `prune`, `erase`, `console`. Operator commands need only `DATABASE_URL` and the AMQP
//! settings (`check` the whole configuration, the console also its tokens).
//!
//! The settings of `run` ([`RunArgs`]) are read from their variables (or flags) by clap for `worker`
//! and `worker run`; none is required by clap, so that the operator commands start without them,
//! and [`crate::Settings::from_args`] refuses a missing one. Their values are checked for every
//! command: an invalid one stops any command with one line naming the variable.
//!
//! Every list and show command prints text for people (the default) or, with `--output json`,
//! JSON for scripts: a list is JSON lines (one object per line, nothing else on stdout; counts go
//! to stderr), a show is one object. Usage errors exit with 2, failures with 1.

mod check;
mod dlq;
mod events;
mod migrate;
mod outbox;
mod retention;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use shared::config::{self, AmqpSettings};
use uuid::Uuid;

use crate::{console::settings::ConsoleArgs, settings::RunArgs};

#[derive(Parser, Debug)]
#[command(
    name = "worker",
    version,
    about = "cio-sync worker: syncs Customer.io contacts into Postgres",
    long_about = "cio-sync worker: syncs Customer.io contacts into Postgres.\n\nWithout a command it runs (`worker run`). Every setting is read from its environment variable (shown below with its default); a flag overrides it. Values are checked at start.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    // The settings of `run`, the command run when none is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// How a list or show command prints.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Text,
    /// JSON: one object per line for lists, one object for a show.
    Json,
}

// Parsed once per process: the size of the settings' variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Consume commands and deliver the outbox until SIGTERM (the default).
    Run(RunArgs),
    /// Check every configured dependency and credential without changing anything.
    ///
    /// One line per check (`ok`, `FAIL` or `skip`); exits 1 when any check fails. Reads the same
    /// configuration as `run`.
    Check,
    /// Apply the database migrations (or, with --status, list them).
    Migrate {
        /// List applied and pending migrations, one line each, changing nothing.
        #[arg(long)]
        status: bool,
    },
    /// Inspect, reprocess and purge the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
    },
    /// Find webhooks and show what happened to them.
    Events {
        #[command(subcommand)]
        command: EventsCmd,
    },
    /// Inspect and retry the outbox (password returns, welcome e-mails).
    Outbox {
        #[command(subcommand)]
        command: OutboxCmd,
    },
    /// Delete finished events, their log lines and idle coalescing rows older than an age.
    Prune {
        /// An age like 30d, 12h (or an RFC 3339 time): what finished before it is deleted.
        #[arg(long)]
        older_than: String,
    },
    /// Delete one person's events, log lines and coalescing rows (the user row stays).
    Erase {
        #[arg(long)]
        email: String,
    },
    /// Serve the operator console (web pages and a JSON API) until SIGTERM.
    Console(ConsoleArgs),
}

/// What narrows the dead letters a `dlq` command lists, replays or purges.
#[derive(clap::Args, Debug)]
pub struct DlqNarrow {
    /// Only those of this action.
    #[arg(long)]
    pub action: Option<String>,
    /// Only those that failed since this time (RFC 3339) or age (30m, 6h, 2d).
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// Dead letters in queue order: event id, action, contact, attempts, age, last error.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        narrow: DlqNarrow,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Everything about one dead letter.
    Show {
        event_id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Send dead letters back to the commands queue.
    Replay {
        /// Event ids to replay.
        ids: Vec<String>,
        /// Replay every dead letter (narrowed by --action and --since).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        narrow: DlqNarrow,
    },
    /// Delete dead letters for good, after saving each to a JSON-lines file.
    ///
    /// Without --yes, prints what would be deleted (and --all is refused).
    Purge {
        /// Event ids to delete.
        ids: Vec<String>,
        /// Every dead letter (narrowed by --action and --since); needs --yes.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        narrow: DlqNarrow,
        /// Delete (otherwise only list what would be deleted).
        #[arg(long)]
        yes: bool,
        /// Where the deleted letters are saved (default: dlq-purge-<timestamp>.jsonl here).
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Recent events, newest first.
    List {
        /// The contact's e-mail (matched as users are, regardless of case).
        #[arg(long)]
        email: Option<String>,
        /// processing, succeeded, no_user, contact_not_found, rejected, retrying or dead.
        #[arg(long)]
        status: Option<String>,
        /// add, update, update_tags, …
        #[arg(long)]
        action: Option<String>,
        /// Only those received since this time (RFC 3339) or age (30m, 6h, 2d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The event's status and its log lines.
    Show {
        event_id: Uuid,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum OutboxCmd {
    /// Rows that are pending or dead.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Put dead rows back to pending.
    Replay {
        ids: Vec<i64>,
        #[arg(long)]
        all: bool,
    },
}

/// A usage or configuration error: says why on stderr and exits with 2.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

async fn pool() -> sqlx::PgPool {
    let url = config::database_url().unwrap_or_else(|e| fail(e));
    crate::connect_db(&url, 2)
        .await
        .unwrap_or_else(|e| fail(format!("{e:#}")))
}

fn amqp() -> AmqpSettings {
    AmqpSettings::from_env().unwrap_or_else(|e| fail(e))
}

/// Prints one JSON value on one line.
fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

/// Runs an operator command; returns the process exit code.
pub async fn operate(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Run(_) => unreachable!("handled by main"),
        Cmd::Console(args) => {
            let settings = crate::console::ConsoleSettings::from_args(args).unwrap_or_else(|e| fail(e));
            crate::console::run_from_env(settings, shared::shutdown::signal()).await?;
            Ok(0)
        }
        Cmd::Check => Ok(check::run().await),
        Cmd::Migrate { status } => migrate::run(status).await,
        Cmd::Dlq { command } => dlq::run(command).await,
        Cmd::Events { command } => events::run(command).await,
        Cmd::Outbox { command } => outbox::run(command).await,
        Cmd::Prune { older_than } => retention::prune(&older_than).await,
        Cmd::Erase { email } => retention::erase(&email).await,
    }
}
