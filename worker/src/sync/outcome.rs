//! The pipeline's vocabulary at its edges: a command coming in, how it ended (or failed), and
//! what the consumer does with its delivery.

use std::time::Duration;

use shared::{command::SyncV1, topology::RetrySlot};
use uuid::Uuid;

use super::ledger::EventStatus;
use crate::cio::CioError;

/// A command to process, with what its delivery says about it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub cmd: SyncV1,
    /// This delivery's attempt, from 1.
    pub attempt: u32,
    /// The label of the access key the webhook came with.
    pub key_label: Option<String>,
}

/// How an event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        user_id: i64,
        created: bool,
    },
    NoUser,
    ContactNotFound,
    Rejected(String),
    /// A redelivery of an event that had already finished with this status.
    AlreadyDone(EventStatus),
    /// Coalesced: a sync of the same command that started after this webhook arrived did the work.
    Satisfied {
        by: Uuid,
        status: EventStatus,
    },
}

impl Outcome {
    pub fn status(&self) -> EventStatus {
        match self {
            Outcome::Succeeded { .. } => EventStatus::Succeeded,
            Outcome::NoUser => EventStatus::NoUser,
            Outcome::ContactNotFound => EventStatus::ContactNotFound,
            Outcome::Rejected(_) => EventStatus::Rejected,
            Outcome::AlreadyDone(s) | Outcome::Satisfied { status: s, .. } => *s,
        }
    }
}

/// Why an event could not finish now.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Worth retrying later (Customer.io 429/5xx/timeouts, database trouble).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Needs an operator first (e.g. Customer.io refused the credentials); parked in the DLQ.
    Permanent { reason: String },
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. } | Failure::Permanent { reason } => reason,
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Transient {
            reason: format!("database error: {e}"),
            retry_after: None,
        }
    }
}

impl From<CioError> for Failure {
    fn from(e: CioError) -> Self {
        if e.is_transient() {
            Failure::Transient {
                retry_after: e.retry_after(),
                reason: e.to_string(),
            }
        } else {
            Failure::Permanent { reason: e.to_string() }
        }
    }
}

/// What the consumer does with a delivery once its command was processed (already recorded in
/// the database).
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Finished: acknowledge.
    Done(Outcome),
    /// Failed for now: publish to this delayed-retry slot, then acknowledge.
    Retry { reason: String, slot: RetrySlot },
    /// Failed for good (or out of attempts): publish to the dead-letter queue, then acknowledge.
    Dead { reason: String },
}
