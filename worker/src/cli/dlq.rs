//! `worker dlq …`: list, show, replay and purge dead letters. Every command walks the queue one
//! message at a time (`dlq::visit` / `dlq::take_matching`), holding at most the page it shows, and
//! gives back in order everything it does not remove.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use super::{amqp, fail, print_json, DlqCmd, DlqNarrow, Output};
use crate::dlq::{self, DeadLetter, Dlq, Filter};

pub async fn run(cmd: DlqCmd) -> anyhow::Result<i32> {
    let q = Dlq::open(&amqp()).await?;
    let code = match cmd {
        DlqCmd::List { limit, narrow, output } => list(&q, &filter(Vec::new(), true, narrow), limit, output).await,
        DlqCmd::Show { event_id, output } => show(&q, &event_id, output).await,
        DlqCmd::Replay { ids, all, narrow } => {
            if ids.is_empty() && !all {
                fail("name event ids, or --all (optionally with --action and --since)");
            }
            replay(&q, &filter(ids, all, narrow)).await
        }
        DlqCmd::Purge {
            ids,
            all,
            narrow,
            yes,
            to,
        } => {
            let filters = narrow.action.is_some() || narrow.since.is_some();
            if ids.is_empty() && !all && !filters {
                fail("name event ids, filters (--action, --since), or --all");
            }
            if all && !yes {
                fail("--all deletes every dead letter for good; add --yes to confirm");
            }
            // Filters without ids select among every dead letter.
            let f = filter(ids.clone(), all || (ids.is_empty() && filters), narrow);
            if yes {
                let to = to.unwrap_or_else(|| {
                    PathBuf::from(format!("dlq-purge-{}.jsonl", Utc::now().format("%Y%m%dT%H%M%SZ")))
                });
                purge(&q, &f, &to).await
            } else {
                dry_run(&q, &f).await
            }
        }
    };
    let code = code?;
    q.close().await;
    let _ = std::io::stdout().flush();
    Ok(code)
}

fn filter(ids: Vec<String>, all: bool, narrow: DlqNarrow) -> Filter {
    Filter {
        ids,
        all,
        action: narrow.action,
        since: narrow.since.map(|s| dlq::parse_since(&s).unwrap_or_else(|e| fail(e))),
    }
}

fn header() {
    println!(
        "{:<36}  {:<11}  {:<30}  {:>3}  {:>5}  last error",
        "event id", "action", "contact", "try", "age"
    );
}

fn line(d: &DeadLetter) {
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

async fn list(q: &Dlq, filter: &Filter, limit: usize, output: Output) -> anyhow::Result<i32> {
    let mut page = Vec::new();
    let mut matching = 0usize;
    let total = dlq::visit(q.conn(), q.names(), |d| {
        if filter.matches(&d) {
            matching += 1;
            if page.len() < limit {
                page.push(d);
            }
        }
    })
    .await?;
    let summary = format!(
        "{} dead letter(s) shown; {matching} match, {total} in the queue{}",
        page.len(),
        if matching > page.len() {
            " (raise --limit for more)"
        } else {
            ""
        }
    );
    match output {
        Output::Json => {
            for d in &page {
                print_json(&d.to_json());
            }
            eprintln!("{summary}");
        }
        Output::Text => {
            header();
            page.iter().for_each(line);
            println!("{summary}");
        }
    }
    Ok(0)
}

async fn show(q: &Dlq, event_id: &str, output: Output) -> anyhow::Result<i32> {
    let mut found = None;
    dlq::visit(q.conn(), q.names(), |d| {
        if found.is_none() && d.event_id.eq_ignore_ascii_case(event_id) {
            found = Some(d);
        }
    })
    .await?;
    let Some(d) = found else {
        eprintln!("no dead letter with event id {event_id}");
        return Ok(1);
    };
    if output == Output::Json {
        print_json(&d.to_json());
        return Ok(0);
    }
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
    Ok(0)
}

async fn replay(q: &Dlq, filter: &Filter) -> anyhow::Result<i32> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("replaying {spinner} {pos} {msg}").expect("static template"));
    let result = dlq::take_matching(
        q.conn(),
        q.names(),
        |d| filter.matches(d),
        |d| async move { q.publish_replay(&d).await },
        |_| bar.inc(1),
    )
    .await;
    match result {
        Ok(done) => {
            bar.finish_and_clear();
            println!("{} dead letter(s) replayed", done.len());
            Ok(0)
        }
        Err(e) => {
            bar.abandon_with_message(format!("stopped: {e}"));
            eprintln!(
                "{} replayed; the rest are still in the dead-letter queue (rerun to continue)",
                bar.position()
            );
            Ok(1)
        }
    }
}

async fn dry_run(q: &Dlq, filter: &Filter) -> anyhow::Result<i32> {
    header();
    let mut n = 0;
    dlq::visit(q.conn(), q.names(), |d| {
        if filter.matches(&d) {
            line(&d);
            n += 1;
        }
    })
    .await?;
    println!("{n} dead letter(s) would be deleted; nothing was deleted (add --yes to delete them)");
    Ok(0)
}

/// Appends one dead letter to the purge file and flushes it to disk, before it is removed.
fn save(file: &mut File, d: &DeadLetter) -> anyhow::Result<()> {
    writeln!(file, "{}", d.to_json())?;
    file.sync_data()?;
    Ok(())
}

async fn purge(q: &Dlq, filter: &Filter, to: &Path) -> anyhow::Result<i32> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(to)
        .unwrap_or_else(|e| fail(format!("--to {}: {e}", to.display())));
    // The file's directory entry is made durable too, before anything is deleted.
    if let Some(dir) = to
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
    {
        File::open(dir).and_then(|d| d.sync_all())?;
    }
    let result = dlq::take_matching(
        q.conn(),
        q.names(),
        |d| filter.matches(d),
        |d| {
            let saved = save(&mut file, &d);
            async move { saved }
        },
        |_| {},
    )
    .await;
    match result {
        Ok(done) => {
            println!("{} dead letter(s) deleted; saved to {}", done.len(), to.display());
            Ok(0)
        }
        Err(e) => {
            eprintln!(
                "purge stopped: {e:#}; what {} holds was deleted, the rest is still in the dead-letter queue",
                to.display()
            );
            Ok(1)
        }
    }
}
