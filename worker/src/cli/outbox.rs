//! `worker outbox list` (pending and dead rows) and `worker outbox replay` (dead rows back to
//! pending).

use serde_json::json;
use uuid::Uuid;

use super::{fail, pool, print_json, OutboxCmd, Output};

type OutboxLine = (i64, String, String, String, i32, Option<String>, Uuid);

pub async fn run(cmd: OutboxCmd) -> anyhow::Result<i32> {
    let pool = pool().await;
    match cmd {
        OutboxCmd::List { output } => {
            let rows: Vec<OutboxLine> = sqlx::query_as(
                "select id, kind, status, recipient, attempts, last_error, event_id from outbox
                 where status in ('pending', 'dead') order by id",
            )
            .fetch_all(&pool)
            .await?;
            if output == Output::Json {
                for (id, kind, status, to, n, err, ev) in &rows {
                    print_json(&json!({
                        "id": id, "kind": kind, "status": status, "recipient": to,
                        "attempts": n, "last_error": err, "event_id": ev,
                    }));
                }
                eprintln!("{} row(s)", rows.len());
                return Ok(0);
            }
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
    Ok(0)
}
