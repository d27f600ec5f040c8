//! `worker migrate` (apply the migrations) and `worker migrate --status` (list them), and the
//! comparison of the embedded migrations with `_sqlx_migrations` that `worker check` reports too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::pool;

/// Where one migration stands in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Applied(DateTime<Utc>),
    Pending,
    /// Applied, but the file changed since (its checksum differs).
    Changed,
    /// Started and failed: the database needs an operator.
    Failed,
    /// Applied in the database, unknown to this binary (a newer release ran).
    Unknown,
}

pub struct Migration {
    pub version: i64,
    pub description: String,
    pub state: State,
}

/// A row of `_sqlx_migrations`: version, description, installed_on, success, checksum.
type AppliedRow = (i64, String, DateTime<Utc>, bool, Vec<u8>);

/// Every migration this binary carries or the database recorded, by version.
pub async fn states(pool: &PgPool) -> Result<Vec<Migration>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(pool)
        .await?;
    let applied: Vec<AppliedRow> = if exists {
        sqlx::query_as("select version, description, installed_on, success, checksum from _sqlx_migrations")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let mut applied: BTreeMap<i64, _> = applied.into_iter().map(|a| (a.0, a)).collect();
    let mut out = Vec::new();
    for m in shared::MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()) {
        let state = match applied.remove(&m.version) {
            None => State::Pending,
            Some((_, _, _, false, _)) => State::Failed,
            Some((_, _, _, _, sum)) if sum.as_slice() != m.checksum.as_ref() => State::Changed,
            Some((_, _, at, _, _)) => State::Applied(at),
        };
        out.push(Migration {
            version: m.version,
            description: m.description.to_string(),
            state,
        });
    }
    out.extend(applied.into_values().map(|(version, description, ..)| Migration {
        version,
        description,
        state: State::Unknown,
    }));
    out.sort_by_key(|m| m.version);
    Ok(out)
}

pub async fn run(status: bool) -> anyhow::Result<i32> {
    let pool = pool().await;
    if !status {
        shared::MIGRATOR.run(&pool).await?;
        println!("migrations applied");
        return Ok(0);
    }
    let all = states(&pool).await?;
    for m in &all {
        let (word, note) = match &m.state {
            State::Applied(at) => ("applied", format!("  {}", at.format("%Y-%m-%d %H:%M:%S UTC"))),
            State::Pending => ("pending", String::new()),
            State::Changed => ("CHANGED", "  the file differs from what was applied".into()),
            State::Failed => ("FAILED", "  the migration failed; fix the database by hand".into()),
            State::Unknown => ("unknown", "  applied by a newer release".into()),
        };
        println!("{word:<8} {:04}  {}{note}", m.version, m.description);
    }
    let pending = all.iter().filter(|m| m.state == State::Pending).count();
    println!(
        "{} applied, {pending} pending",
        all.iter().filter(|m| matches!(m.state, State::Applied(_))).count()
    );
    Ok(0)
}
