//! `worker events list` (recent events, filtered, newest first) and `worker events show` (one
//! event's status and log lines).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{fail, pool, print_json, EventsCmd, Output};
use crate::{dlq::parse_time_or_age, sync::ledger::EventStatus};

type EventRow = (
    Uuid,
    String,
    Option<String>,
    String,
    i32,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn event_json(r: &EventRow) -> serde_json::Value {
    let (id, action, email, status, attempts, received, finished, error, label, user) = r;
    json!({
        "event_id": id,
        "action": action,
        "email": email,
        "status": status,
        "attempts": attempts,
        "received_at": received,
        "finished_at": finished,
        "last_error": error,
        "key_label": label,
        "user_id": user,
    })
}

const COLUMNS: &str =
    "event_id, action, email, status, attempts, received_at, finished_at, last_error, key_label, user_id";

pub async fn run(cmd: EventsCmd) -> anyhow::Result<i32> {
    match cmd {
        EventsCmd::List {
            email,
            status,
            action,
            since,
            limit,
            output,
        } => {
            if let Some(s) = &status {
                EventStatus::from_str(s).unwrap_or_else(|e| fail(format!("--status: {e}")));
            }
            if limit < 1 {
                fail("--limit must be at least 1");
            }
            let since = since.map(|s| parse_time_or_age("--since", &s).unwrap_or_else(|e| fail(e)));
            list(email, status, action, since, limit, output).await
        }
        EventsCmd::Show { event_id, output } => show(event_id, output).await,
    }
}

async fn list(
    email: Option<String>,
    status: Option<String>,
    action: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: i64,
    output: Output,
) -> anyhow::Result<i32> {
    let pool = pool().await;
    let rows: Vec<EventRow> = sqlx::query_as(AssertSqlSafe(format!(
        "select {COLUMNS} from webhook_events
          where ($1::text is null or fold_email(email) = fold_email($1))
            and ($2::text is null or status = $2)
            and ($3::text is null or action = $3)
            and ($4::timestamptz is null or received_at >= $4)
          order by received_at desc, event_id desc
          limit $5"
    )))
    .bind(&email)
    .bind(&status)
    .bind(&action)
    .bind(since)
    .bind(limit)
    .fetch_all(&pool)
    .await?;
    match output {
        Output::Json => {
            for r in &rows {
                print_json(&event_json(r));
            }
            eprintln!("{} event(s)", rows.len());
        }
        Output::Text => {
            println!(
                "{:<36}  {:<11}  {:<30}  {:<17}  {:>3}  {:<19}  last error",
                "event id", "action", "email", "status", "try", "received (UTC)"
            );
            for (id, action, email, status, attempts, received, _, error, _, _) in &rows {
                let err: String = error.as_deref().unwrap_or("-").chars().take(80).collect();
                println!(
                    "{id}  {action:<11}  {:<30}  {status:<17}  {attempts:>3}  {}  {err}",
                    email.as_deref().unwrap_or("-"),
                    received.format("%Y-%m-%d %H:%M:%S")
                );
            }
            let more = if rows.len() as i64 == limit {
                " (the limit; narrow the filters or raise --limit for more)"
            } else {
                ""
            };
            println!("{} event(s){more}", rows.len());
        }
    }
    Ok(0)
}

async fn show(event_id: Uuid, output: Output) -> anyhow::Result<i32> {
    let pool = pool().await;
    let ev: Option<EventRow> = sqlx::query_as(AssertSqlSafe(format!(
        "select {COLUMNS} from webhook_events where event_id = $1"
    )))
    .bind(event_id)
    .fetch_optional(&pool)
    .await?;
    let Some(ev) = ev else {
        eprintln!("no event {event_id} (the worker records an event when it first processes it)");
        return Ok(1);
    };
    let lines: Vec<(DateTime<Utc>, String, String)> =
        sqlx::query_as("select at, level, message from event_log where event_id = $1 order by at, id")
            .bind(event_id)
            .fetch_all(&pool)
            .await?;
    if output == Output::Json {
        let mut v = event_json(&ev);
        v["log"] = lines
            .iter()
            .map(|(at, level, message)| json!({"at": at, "level": level, "message": message}))
            .collect();
        print_json(&v);
        return Ok(0);
    }
    let (_, action, email, status, attempts, received, finished, error, _, user) = ev;
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
    for (at, level, message) in lines {
        println!("{}  {level:<7}  {message}", at.format("%Y-%m-%d %H:%M:%S%.3f"));
    }
    Ok(0)
}
