//! The end of the pipeline: failures are recorded (`retrying` with the delay, or `dead`) and their
//! claims released, in one statement each, and every command gets its settlement.

use std::time::Duration;

use shared::topology::{self, RETRY_TIERS};

use super::{
    context::SyncCtx,
    job::Job,
    ledger::{self, EventStatus},
    outcome::{Failure, Outcome, Settlement},
};

/// Records the failures (`retrying` with the delay, or `dead`), releases their claims, and says
/// what the consumer does with each delivery.
pub(super) async fn settle(ctx: &SyncCtx, mut jobs: Vec<Job>) -> Vec<Settlement> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut failing = Vec::new();
    let mut released = Vec::new();
    for job in jobs.iter_mut() {
        let attempt = job.inc.attempt.max(1);
        let settlement = match job.end.take().unwrap_or_else(|| {
            Err(Failure::Transient {
                reason: "the command was not processed".into(),
                retry_after: None,
            })
        }) {
            Ok(outcome) => Settlement::Done(outcome),
            Err(Failure::Transient { reason, retry_after }) if attempt < ctx.max_attempts => {
                // A 429's Retry-After is a floor; the tiers still grow so that a long storm backs off.
                let wanted = retry_after.unwrap_or_default().max(retry_delay(attempt));
                let slot = topology::retry_slot(wanted, rand::random::<u8>() as usize);
                job.log.warning(format!(
                    "{reason}; retrying in about {} (attempt {attempt} of {})",
                    human(slot.delay),
                    ctx.max_attempts
                ));
                Settlement::Retry { reason, slot }
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Transient { reason, .. } => format!("gave up after {attempt} attempts: {reason}"),
                    Failure::Permanent { reason } => reason,
                };
                job.log.error(format!(
                    "{reason}. The command is parked in the dead-letter queue; fix the cause, then `worker dlq replay {}`",
                    job.cmd().event_id
                ));
                Settlement::Dead { reason }
            }
        };
        // The process log's line for the event, at info: ids and outcome, never the contact.
        let (id, action) = (job.cmd().event_id, job.cmd().action);
        match &settlement {
            Settlement::Done(o) => {
                let user_id = match o {
                    Outcome::Succeeded { user_id, .. } => Some(*user_id),
                    _ => None,
                };
                tracing::info!(event_id = %id, %action, status = %o.status(), user_id, "event finished")
            }
            Settlement::Retry { slot, .. } => {
                tracing::info!(event_id = %id, %action, attempt, retry_in = ?slot.delay, "event will be retried")
            }
            Settlement::Dead { .. } => tracing::warn!(event_id = %id, %action, attempt, "event dead-lettered"),
        }
        if !matches!(settlement, Settlement::Done(_)) {
            if let Some(c) = &job.claim {
                released.push(c);
            }
        }
        out.push(settlement);
    }
    ledger::release(&ctx.pool, &released).await;
    for (job, s) in jobs.iter_mut().zip(&out) {
        let (status, error) = match s {
            Settlement::Done(_) => continue,
            Settlement::Retry { reason, .. } => (EventStatus::Retrying, reason.clone()),
            Settlement::Dead { reason } => (EventStatus::Dead, reason.clone()),
        };
        failing.push(ledger::Failing {
            cmd: &job.inc.cmd,
            log: &mut job.log,
            status,
            error,
        });
    }
    if let Err(e) = ledger::fail(&ctx.pool, &mut failing).await {
        tracing::warn!("could not record {} failure(s) in the database: {e}", failing.len());
    }
    out
}

/// The delay before attempt `attempt + 1`: the tiers in order, then the longest.
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_TIERS[(attempt.saturating_sub(1) as usize).min(RETRY_TIERS.len() - 1)].1
}

/// "0.8s", "13s", "8m", "1h 18m": a delay for the event log.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{:.1}s", s).replace(".0s", "s")
    } else if s < 120.0 {
        format!("{}s", s.round())
    } else if s < 3600.0 {
        format!("{}m", (s / 60.0).round())
    } else {
        format!("{}h {}m", (s / 3600.0).floor(), ((s % 3600.0) / 60.0).round())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_read_well_in_the_log() {
        assert_eq!(human(Duration::from_millis(800)), "0.8s");
        assert_eq!(human(Duration::from_secs(1)), "1s");
        assert_eq!(human(Duration::from_secs(13)), "13s");
        assert_eq!(human(Duration::from_secs(480)), "8m");
        assert_eq!(human(Duration::from_secs(4680)), "1h 18m");
    }

    #[test]
    fn retry_delays_grow_through_the_tiers() {
        let secs: Vec<u64> = (1..=7).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 10, 60, 600, 3600, 3600, 3600]);
    }
}
