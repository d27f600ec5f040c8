//! The `worker` command line: `run` (default), `migrate`, `dlq …`, `events show`,
//! `outbox …`, `console`. Operator commands need only `DATABASE_URL` and the AMQP settings (the
//! console also its tokens).

use std::io::Write;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shared::config::{self, AmqpSettings};
use uuid::Uuid;

use crate::dlq::{self, Dlq, Filter};

#[derive(Parser, Debug)]
#[command(
    name = "worker",
    version,
    about = "cio-sync worker: syncs Customer.io contacts into Postgres"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Consume commands and deliver the outbox until SIGTERM (the default).
    Run,
    /// Apply the database migrations.
    Migrate,
    /// Inspect and reprocess the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
    },
    /// Show what happened to a webhook.
    Events {
        #[command(subcommand)]
        command: EventsCmd,
    },
    /// Inspect and retry the outbox (password returns, welcome e-mails).
    Outbox {
        #[command(subcommand)]
        command: OutboxCmd,
    },
    /// Serve the operator console (web pages and a JSON API) until SIGTERM.
    ///
    /// CONSOLE_TOKENS: comma-separated operator tokens, each optionally `label:token`, at least 16
    /// characters (required). CONSOLE_ADDR: listen address (default 127.0.0.1:8088).
    /// CONSOLE_SECURE_COOKIE: auto (Secure unless listening on loopback), true or false.
    /// Also DATABASE_URL, AMQP_URL, AMQP_NAMESPACE and CIO_APP_RATE_LIMIT (for the budget shown).
    Console,
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// One line per dead letter: event id, action, contact, attempts, age, last error.
    List,
    /// Everything about one dead letter.
    Show { event_id: String },
    /// Send dead letters back to the commands queue.
    Replay {
        /// Event ids to replay.
        ids: Vec<String>,
        /// Replay every dead letter (narrowed by --action and --since).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        action: Option<String>,
        /// Only those that failed since this time (RFC 3339) or age (30m, 6h, 2d).
        #[arg(long)]
        since: Option<String>,
    },
    /// Delete every dead letter.
    Purge {
        /// Confirm that the dead letters are to be deleted.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// The event's status and its log lines.
    Show { event_id: Uuid },
}

#[derive(Subcommand, Debug)]
pub enum OutboxCmd {
    /// Rows that are pending or dead.
    List,
    /// Put dead rows back to pending.
    Replay {
        ids: Vec<i64>,
        #[arg(long)]
        all: bool,
    },
}

type OutboxLine = (i64, String, String, String, i32, Option<String>, Uuid);

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

/// Runs an operator command; returns the process exit code.
pub async fn operate(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Run => unreachable!("handled by main"),
        Cmd::Console => {
            let settings = crate::console::ConsoleSettings::from_env().unwrap_or_else(|e| fail(e));
            crate::console::run_from_env(settings, shared::shutdown::signal()).await?;
        }
        Cmd::Migrate => {
            let pool = pool().await;
            shared::MIGRATOR.run(&pool).await?;
            println!("migrations applied");
        }
        Cmd::Dlq { command } => return dlq_cmd(command).await,
        Cmd::Events {
            command: EventsCmd::Show { event_id },
        } => return show_event(event_id).await,
        Cmd::Outbox { command } => {
            let pool = pool().await;
            match command {
                OutboxCmd::List => {
                    let rows: Vec<OutboxLine> = sqlx::query_as(
                        "select id, kind, status, recipient, attempts, last_error, event_id from outbox
                         where status in ('pending', 'dead') order by id",
                    )
                    .fetch_all(&pool)
                    .await?;
                    println!(
                        "{:>6}  {:<15}  {:<7}  {:<30}  {:>3}  {:<36}  last error",
                        "id", "kind", "status", "recipient", "try", "event"
                    );
                    for (id, kind, status, to, n, err, ev) in &rows {
                        println!(
                            "{id:>6}  {kind:<15}  {status:<7}  {to:<30}  {n:>3}  {ev}  {}",
                            err.as_deref().unwrap_or("-")
                        );
                    }
                    println!("{} row(s)", rows.len());
                }
                OutboxCmd::Replay { ids, all } => {
                    if ids.is_empty() && !all {
                        fail("name outbox ids, or --all");
                    }
                    let n = crate::outbox::replay(&pool, if all { &[] } else { &ids }).await?;
                    println!("{n} row(s) put back to pending");
                }
            }
        }
    }
    Ok(0)
}

async fn dlq_cmd(cmd: DlqCmd) -> anyhow::Result<i32> {
    let q = Dlq::open(&amqp()).await?;
    let code = match cmd {
        DlqCmd::List => {
            let all = q.take_all().await?;
            println!(
                "{:<36}  {:<11}  {:<30}  {:>3}  {:>5}  last error",
                "event id", "action", "contact", "try", "age"
            );
            for d in &all {
                let err: String = d.error.chars().take(100).collect();
                println!(
                    "{:<36}  {:<11}  {:<30}  {:>3}  {:>5}  {err}",
                    d.event_id,
                    d.action,
                    d.contact,
                    d.attempts,
                    dlq::age(d.last_failure)
                );
            }
            println!("{} dead letter(s)", all.len());
            0
        }
        DlqCmd::Show { event_id } => {
            let all = q.take_all().await?;
            match all.iter().find(|d| d.event_id.eq_ignore_ascii_case(&event_id)) {
                None => {
                    eprintln!("no dead letter with event id {event_id}");
                    1
                }
                Some(d) => {
                    println!("event id:       {}", d.event_id);
                    println!("action:         {}", d.action);
                    println!("contact:        {}", d.contact);
                    println!("attempts:       {}", d.attempts);
                    println!(
                        "first failure:  {}",
                        d.first_failure.map(|t| t.to_rfc3339()).unwrap_or("?".into())
                    );
                    println!(
                        "last failure:   {}",
                        d.last_failure.map(|t| t.to_rfc3339()).unwrap_or("?".into())
                    );
                    println!("error:          {}", d.error);
                    println!("command:        {}", String::from_utf8_lossy(&d.body));
                    0
                }
            }
        }
        DlqCmd::Replay {
            ids,
            all,
            action,
            since,
        } => {
            if ids.is_empty() && !all {
                fail("name event ids, or --all (optionally with --action and --since)");
            }
            let filter = Filter {
                ids,
                all,
                action,
                since: since.map(|s| dlq::parse_since(&s).unwrap_or_else(|e| fail(e))),
            };
            let chosen: Vec<_> = q.take_all().await?.into_iter().filter(|d| filter.matches(d)).collect();
            let bar = ProgressBar::new(chosen.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("replaying {bar:40} {pos}/{len} {msg}").expect("static template"),
            );
            let mut replayed = 0;
            for d in &chosen {
                if let Err(e) = q.replay(d).await {
                    bar.abandon_with_message(format!("stopped: {e}"));
                    eprintln!("{replayed} replayed; the rest are still in the dead-letter queue (rerun to continue)");
                    q.close().await;
                    return Ok(1);
                }
                replayed += 1;
                bar.inc(1);
            }
            bar.finish_and_clear();
            println!("{replayed} dead letter(s) replayed");
            0
        }
        DlqCmd::Purge { yes } => {
            if !yes {
                fail("purging deletes every dead letter for good; add --yes to confirm");
            }
            let n = q.purge().await?;
            println!("{n} dead letter(s) deleted");
            0
        }
    };
    q.close().await;
    let _ = std::io::stdout().flush();
    Ok(code)
}

async fn show_event(event_id: Uuid) -> anyhow::Result<i32> {
    let pool = pool().await;
    type Row = (
        String,
        Option<String>,
        String,
        i32,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<String>,
        Option<i64>,
    );
    let ev: Option<Row> = sqlx::query_as(
        "select action, email, status, attempts, received_at, finished_at, last_error, user_id from webhook_events where event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(&pool)
    .await?;
    let Some((action, email, status, attempts, received, finished, error, user)) = ev else {
        eprintln!("no event {event_id} (the worker records an event when it first processes it)");
        return Ok(1);
    };
    println!("event {event_id}: {action} for {}", email.unwrap_or_default());
    println!(
        "status {status} after {attempts} attempt(s); received {received}; finished {}",
        finished.map(|t| t.to_string()).unwrap_or("-".into())
    );
    if let Some(u) = user {
        println!("user #{u}");
    }
    if let Some(e) = error {
        println!("last error: {e}");
    }
    let lines: Vec<(chrono::DateTime<chrono::Utc>, String, String)> =
        sqlx::query_as("select at, level, message from event_log where event_id = $1 order by at, id")
            .bind(event_id)
            .fetch_all(&pool)
            .await?;
    for (at, level, message) in lines {
        println!("{}  {level:<7}  {message}", at.format("%Y-%m-%d %H:%M:%S%.3f"));
    }
    Ok(0)
}
