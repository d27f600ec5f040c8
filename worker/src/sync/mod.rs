//! The pipeline: a batch of commands in, one settlement per command out. Production (`consumer`)
//! and the tests both call [`process`]; a single command is a batch of one.
//!
//! 1. **Start** ([`ledger`]): one round trip records every event's attempt and claims its sync;
//!    a redelivered finished event changes nothing, a duplicate already satisfied is closed, and a
//!    duplicate whose twin is running waits for it (bounded).
//! 2. **Read** ([`bulk_read`], [`snapshot`]): the claimed commands' contacts from Customer.io,
//!    batched when that saves calls, before any transaction (no lock is held across the network);
//!    new users' passwords are hashed here too.
//! 3. **Write** ([`write`]): users, meta, segments, outbox rows, event logs and outcomes of the whole
//!    batch in one transaction of a few set-based statements. Contacts are locked in one global
//!    order, so that many `add`s for one contact on many workers give exactly one user; the unique
//!    indexes are the backstop. If the transaction fails, each command is written on its own, so
//!    one bad command cannot fail the others.
//! 4. **Settle**: failures are recorded (`retrying` with the delay, or `dead`) in one statement.

pub mod bulk_read;
mod context;
mod job;
pub mod ledger;
mod outcome;
mod read;
mod settle;
pub mod snapshot;
pub mod store;
mod users;
mod write;

use std::time::Duration;

pub use context::SyncCtx;
pub use outcome::{Failure, Incoming, Outcome, Settlement};
pub use read::NOT_FOUND_ATTEMPTS;

use job::Job;
use ledger::Verdict;

/// Processes a batch of commands; one settlement per command, in order. Never panics.
pub async fn process(ctx: &SyncCtx, batch: Vec<Incoming>) -> Vec<Settlement> {
    let mut jobs: Vec<Job> = batch.into_iter().map(Job::new).collect();
    let deadline = tokio::time::Instant::now() + ledger::LEASE + Duration::from_secs(5);
    let mut pause = Duration::from_millis(20);
    let mut round: Vec<usize> = (0..jobs.len()).collect();
    let mut first = true;
    while !round.is_empty() {
        let busy = claim(ctx, &mut jobs, &round, first).await;
        first = false;
        let claimed: Vec<usize> = round
            .iter()
            .copied()
            .filter(|&i| jobs[i].claim.is_some() && jobs[i].live())
            .collect();
        sync(ctx, &mut jobs, &claimed).await;
        write::close_remaining(ctx, &mut jobs, &round).await;
        if !busy.is_empty() && claimed.is_empty() {
            // Only duplicates of syncs running elsewhere are left: wait for them (bounded).
            if tokio::time::Instant::now() >= deadline {
                for &i in &busy {
                    jobs[i].fail(Failure::Transient {
                        reason: "another sync of this contact is still running".into(),
                        retry_after: None,
                    });
                }
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        round = busy;
    }
    settle::settle(ctx, jobs).await
}

/// Starts (first round) or re-claims the given jobs; returns those whose sync is running elsewhere.
async fn claim(ctx: &SyncCtx, jobs: &mut [Job], round: &[usize], first: bool) -> Vec<usize> {
    let starting: Vec<ledger::Starting> = round
        .iter()
        .map(|&i| ledger::Starting {
            cmd: &jobs[i].inc.cmd,
            key_label: jobs[i].inc.key_label.as_deref(),
        })
        .collect();
    let verdicts = match ledger::start(&ctx.pool, &starting, first).await {
        Ok(v) => v,
        Err(e) => {
            let f = Failure::from(e);
            for &i in round {
                jobs[i].fail(f.clone());
            }
            return Vec::new();
        }
    };
    let mut busy = Vec::new();
    for (&i, (attempts, verdict)) in round.iter().zip(verdicts) {
        let job = &mut jobs[i];
        if first && !matches!(verdict, Verdict::AlreadyDone(_)) {
            let suffix = if attempts > 1 {
                format!(" (attempt {attempts})")
            } else {
                String::new()
            };
            let m = format!(
                "Received {} webhook for contact {}{suffix}",
                job.cmd().action,
                job.cmd().contact.email
            );
            job.log.info(m);
        }
        match verdict {
            Verdict::AlreadyDone(status) => job.end = Some(Ok(Outcome::AlreadyDone(status))),
            Verdict::Satisfied { by, status } => {
                job.log.info(format!(
                    "Already done by event {by} ({status}), a sync of this contact that started after this webhook was received"
                ));
                job.close(Outcome::Satisfied { by, status });
            }
            Verdict::Busy => busy.push(i),
            Verdict::Claimed(c) => job.claim = Some(c),
        }
    }
    busy
}

/// Reads the claimed jobs' contacts, then writes them.
async fn sync(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    if claimed.is_empty() {
        return;
    }
    read::read_attributes(ctx, jobs, claimed).await;
    if let Err(f) = read::find_existing(ctx, jobs, claimed).await {
        for &i in claimed {
            if jobs[i].live() {
                jobs[i].fail(f.clone());
            }
        }
        return;
    }
    read::read_segments(ctx, jobs, claimed).await;
    read::hash_passwords(ctx, jobs, claimed).await;
    let ready: Vec<usize> = claimed.iter().copied().filter(|&i| jobs[i].live()).collect();
    write::users(ctx, jobs, &ready).await;
}
