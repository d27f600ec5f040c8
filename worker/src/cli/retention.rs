//! `worker prune --older-than AGE` and `worker erase --email ADDR` (see `crate::retention`): they
//! print what they deleted, and what they had to keep and why.

use super::{fail, pool};
use crate::{dlq::parse_time_or_age, retention};

pub async fn prune(older_than: &str) -> anyhow::Result<i32> {
    let cutoff = parse_time_or_age("--older-than", older_than).unwrap_or_else(|e| fail(e));
    let pool = pool().await;
    let p = retention::prune(&pool, cutoff).await?;
    println!(
        "pruned what finished before {}:",
        cutoff.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!("{:>8} event(s)", p.events);
    println!("{:>8} log line(s)", p.log_lines);
    println!("{:>8} coalescing row(s)", p.claims);
    if p.kept_for_outbox > 0 {
        println!(
            "kept {} finished event(s) whose outbox rows are still pending (see `worker outbox list`)",
            p.kept_for_outbox
        );
    }
    Ok(0)
}

pub async fn erase(email: &str) -> anyhow::Result<i32> {
    let email = shared::email::parse(email).unwrap_or_else(|e| fail(format!("--email: {e}")));
    let pool = pool().await;
    let e = retention::erase(&pool, email.as_str()).await?;
    println!("erased the records of {email} (the user row, if any, is kept):");
    println!("{:>8} event(s)", e.events);
    println!("{:>8} log line(s)", e.log_lines);
    println!("{:>8} coalescing row(s)", e.claims);
    if e.kept_for_outbox > 0 {
        println!(
            "kept {} event(s) whose outbox rows are still pending (see `worker outbox list`); erase again once they are delivered",
            e.kept_for_outbox
        );
    }
    if e.kept_in_flight > 0 {
        println!(
            "kept {} event(s) a worker is still processing or retrying; erase again once they finish",
            e.kept_in_flight
        );
    }
    Ok(0)
}
