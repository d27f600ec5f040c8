//! One command on its way through the pipeline, and everything learnt about it on the way.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use shared::command::SyncV1;

use super::{
    ledger::Claim,
    outcome::{Failure, Incoming, Outcome},
    store::{Lookup, UserRow},
};
use crate::{
    cio::{types::Customer, PersonRef},
    events::EventLog,
    fieldmap::Mapped,
    password::Prepared,
};

/// A command being processed, and everything learnt about it on the way.
pub(super) struct Job {
    pub(super) inc: Incoming,
    pub(super) log: EventLog,
    pub(super) claim: Option<Claim>,
    /// The end, once known: an outcome to record, or a failure.
    pub(super) end: Option<Result<Outcome, Failure>>,
    /// Whether the outcome still has to be written (`finish`).
    pub(super) unwritten: bool,
    /// The contact as Customer.io has it (empty for `update_tags`, which does not read it).
    pub(super) customer: Customer,
    pub(super) mapped: Mapped,
    pub(super) cio_id: Option<String>,
    /// Lower-cased addresses the user may have.
    pub(super) emails: Vec<String>,
    /// The user found before the reads (`None`: none yet).
    pub(super) existing: Option<UserRow>,
    pub(super) segments: BTreeSet<i64>,
    /// The segments for the log ("VIP, Trial", or "none").
    pub(super) segment_label: String,
    /// When the segment data was read, if before the claim (a shared snapshot).
    pub(super) data_from: Option<DateTime<Utc>>,
    pub(super) password: Option<Prepared>,
}

impl Job {
    pub(super) fn new(inc: Incoming) -> Self {
        let log = EventLog::new(inc.cmd.event_id);
        Job {
            inc,
            log,
            claim: None,
            end: None,
            unwritten: false,
            customer: Customer::default(),
            mapped: Mapped::default(),
            cio_id: None,
            emails: Vec::new(),
            existing: None,
            segments: BTreeSet::new(),
            segment_label: String::new(),
            data_from: None,
            password: None,
        }
    }

    pub(super) fn cmd(&self) -> &SyncV1 {
        &self.inc.cmd
    }

    pub(super) fn live(&self) -> bool {
        self.end.is_none()
    }

    /// Ends the event with an outcome that is written with the batch.
    pub(super) fn close(&mut self, outcome: Outcome) {
        self.end = Some(Ok(outcome));
        self.unwritten = true;
    }

    pub(super) fn fail(&mut self, f: Failure) {
        self.end = Some(Err(f));
        self.unwritten = false;
    }

    pub(super) fn not_found(&mut self) {
        let m = format!(
            "Contact {} was not found in Customer.io (404)",
            self.cmd().contact.email
        );
        self.log.notice(m);
        self.close(Outcome::ContactNotFound);
    }

    pub(super) fn no_user(&mut self) {
        self.no_user_line();
        self.close(Outcome::NoUser);
    }

    pub(super) fn no_user_line(&mut self) {
        let m = format!(
            "{} webhook received but no matching user found for contact {}",
            self.cmd().action,
            self.cmd().contact.email
        );
        self.log.notice(m);
    }

    /// How Customer.io is asked about this contact.
    pub(super) fn person(&self) -> PersonRef {
        self.cio_id
            .as_deref()
            .map(PersonRef::cio_id)
            .unwrap_or_else(|| PersonRef::email(self.cmd().contact.email.as_str()))
    }

    pub(super) fn lookup(&self) -> Lookup {
        Lookup {
            cio_id: self.cio_id.clone(),
            emails: self.emails.clone(),
        }
    }
}
