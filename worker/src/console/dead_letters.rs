//! Dead letters: a paged view of the `{ns}.dead` queue, replay of the selected ones as a
//! background job whose progress the pages and the API can follow, and purge of exactly the
//! selected ones.
//!
//! Every walk of the queue goes through `dlq::peek` / `dlq::take_selected`, which take the whole
//! queue unacknowledged (one `basic.get` per dead letter) but keep at most one page of message
//! bodies in memory, and give every message they do not remove back in its place; walks take
//! turns (see `Broker::dlq_turn`). Replay publishes with the broker's confirm before it
//! removes the dead copy, so an interrupted replay leaves each message dead or queued again; an id
//! that is no longer in the queue is reported as such, so repeating a replay is harmless (and the
//! worker skips an event that already finished).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::topology::COMMAND_KEY;

use super::{broker::Broker, ConsoleError};
use crate::dlq;

pub const PAGE: usize = 50;
pub const MAX_PAGE: usize = 500;
/// Most ids one replay or purge may name.
pub const MAX_SELECTED: usize = 10_000;
/// Finished jobs remembered for their progress pages.
const JOBS_KEPT: usize = 100;

#[derive(Debug, Default, Clone, Deserialize)]
pub struct DeadQuery {
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

/// One dead letter as listed (the command body and broker properties stay out).
#[derive(Debug, Clone, Serialize)]
pub struct DeadRow {
    /// Position in the queue when it was read (0 = the head).
    pub position: usize,
    pub event_id: String,
    pub action: String,
    pub contact: String,
    pub attempts: i64,
    pub reason: String,
    pub first_failure: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    /// "3m", "2h": since the last failure.
    pub age: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadPage {
    /// Dead letters in the queue when the page was read.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<DeadRow>,
    pub next_offset: Option<usize>,
    pub prev_offset: Option<usize>,
}

pub async fn list(broker: &Broker, q: &DeadQuery) -> Result<DeadPage, ConsoleError> {
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ConsoleError::BadRequest(format!("limit: 1 to {MAX_PAGE}")));
    }
    let turn = broker.dlq_turn().await.map_err(ConsoleError::Unavailable)?;
    let w = dlq::peek(turn.conn(), &broker.names, offset, limit)
        .await
        .map_err(ConsoleError::Unavailable)?;
    drop(turn);
    let items = w
        .items
        .into_iter()
        .enumerate()
        .map(|(i, d)| DeadRow {
            position: offset + i,
            age: dlq::age(d.last_failure),
            event_id: d.event_id,
            action: d.action,
            contact: d.contact,
            attempts: d.attempts,
            reason: d.error,
            first_failure: d.first_failure,
            last_failure: d.last_failure,
        })
        .collect();
    Ok(DeadPage {
        total: w.total,
        offset,
        limit,
        items,
        next_offset: w.more.then_some(offset + limit),
        prev_offset: (offset > 0).then(|| offset.saturating_sub(limit)),
    })
}

/// The ids of a selection, checked.
pub fn check_selection(ids: &[String]) -> Result<Vec<String>, ConsoleError> {
    let mut out: Vec<String> = Vec::new();
    for id in ids.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        if id.len() > 200 || id.chars().any(char::is_control) {
            return Err(ConsoleError::BadRequest("ids: not an event id".into()));
        }
        if !out.iter().any(|o| o.eq_ignore_ascii_case(id)) {
            out.push(id.to_string());
        }
    }
    if out.is_empty() {
        return Err(ConsoleError::BadRequest("select at least one dead letter".into()));
    }
    if out.len() > MAX_SELECTED {
        return Err(ConsoleError::BadRequest(format!(
            "select at most {MAX_SELECTED} dead letters at once"
        )));
    }
    Ok(out)
}

/// A replay's progress, as the job page and `/api/jobs/{id}` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub operator: String,
    pub requested: usize,
    /// Event ids replayed so far.
    pub replayed: Vec<String>,
    /// Ids that were not in the queue (already replayed or purged): nothing to do.
    pub not_found: Vec<String>,
    pub error: Option<String>,
    pub finished: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Replay jobs of this process (the latest [`JOBS_KEPT`]).
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<VecDeque<Arc<Mutex<Job>>>>,
}

impl Jobs {
    pub fn get(&self, id: &str) -> Option<Job> {
        let jobs = self.jobs.lock().expect("jobs");
        jobs.iter()
            .find(|j| j.lock().expect("job").id == id)
            .map(|j| j.lock().expect("job").clone())
    }

    fn add(&self, job: Job) -> Arc<Mutex<Job>> {
        let job = Arc::new(Mutex::new(job));
        let mut jobs = self.jobs.lock().expect("jobs");
        if jobs.len() >= JOBS_KEPT {
            if let Some(i) = jobs.iter().position(|j| j.lock().expect("job").finished) {
                jobs.remove(i);
            }
        }
        jobs.push_back(job.clone());
        job
    }
}

/// Starts replaying the selected dead letters in the background; returns the job at its start.
pub fn start_replay(broker: Arc<Broker>, jobs: &Jobs, ids: Vec<String>, operator: &str) -> Job {
    let job = Job {
        id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        operator: operator.to_string(),
        requested: ids.len(),
        replayed: Vec::new(),
        not_found: Vec::new(),
        error: None,
        finished: false,
        started_at: Utc::now(),
        finished_at: None,
    };
    let snapshot = job.clone();
    let job = jobs.add(job);
    tracing::info!(operator, job = %snapshot.id, count = ids.len(), "console: replaying dead letters");
    tokio::spawn(async move {
        let outcome = replay(&broker, &ids, &job).await;
        let mut j = job.lock().expect("job");
        match outcome {
            Ok(sel) => j.not_found = sel.not_found,
            Err(e) => j.error = Some(format!("{e:#}")),
        }
        j.finished = true;
        j.finished_at = Some(Utc::now());
        tracing::info!(job = %j.id, replayed = j.replayed.len(), not_found = j.not_found.len(),
            error = j.error.as_deref().unwrap_or("-"), "console: replay finished");
    });
    snapshot
}

async fn replay(broker: &Broker, ids: &[String], job: &Mutex<Job>) -> anyhow::Result<dlq::Selected> {
    let turn = broker.dlq_turn().await?;
    let exchange = broker.names.commands_exchange();
    dlq::take_selected(
        turn.conn(),
        &broker.names,
        ids,
        |d| {
            let exchange = exchange.clone();
            async move {
                let props = dlq::replay_properties(&d);
                broker.publisher.publish(&exchange, COMMAND_KEY, &d.body, props).await?;
                Ok(())
            }
        },
        |id| job.lock().expect("job").replayed.push(id.to_string()),
    )
    .await
}

/// What a purge did.
#[derive(Debug, Clone, Serialize)]
pub struct Purged {
    pub purged: Vec<String>,
    pub not_found: Vec<String>,
}

/// Deletes exactly the selected dead letters. `confirm` must repeat how many were selected.
pub async fn purge(broker: &Broker, ids: &[String], confirm: usize, operator: &str) -> Result<Purged, ConsoleError> {
    if confirm != ids.len() {
        return Err(ConsoleError::BadRequest(format!(
            "confirm: repeat the number of dead letters to delete ({})",
            ids.len()
        )));
    }
    let turn = broker.dlq_turn().await.map_err(ConsoleError::Unavailable)?;
    let sel = dlq::take_selected(turn.conn(), &broker.names, ids, |_| async { Ok(()) }, |_| {})
        .await
        .map_err(ConsoleError::Unavailable)?;
    tracing::info!(
        operator,
        purged = sel.done.len(),
        not_found = sel.not_found.len(),
        "console: purged dead letters"
    );
    Ok(Purged {
        purged: sel.done,
        not_found: sel.not_found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_trimmed_deduplicated_and_bounded() {
        let ids = check_selection(&["a".into(), " A ".into(), "".into(), "b".into()]).unwrap();
        assert_eq!(ids, vec!["a".to_string(), "b".to_string()]);
        assert!(check_selection(&[]).is_err());
        assert!(check_selection(&["x\ny".into()]).is_err());
    }
}
