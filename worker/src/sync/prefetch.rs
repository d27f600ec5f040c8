//! Reading many contacts at once when commands queue up (issue 6): attributes through
//! `POST /v1/customers/attributes` (up to 100 people a call) and segment memberships from a
//! membership snapshot (`snapshot`), read back for just the batch's contacts, instead of two calls
//! per contact. A snapshot serves only webhooks received before it was taken, and the sync that
//! uses it counts as started when its data was read (see `coalesce`).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use shared::command::SyncV1;

use super::{Failure, SyncCtx};
use crate::cio::{types::Customer, IdType};

/// People per batch call (the API's maximum).
pub const ATTRIBUTES_BATCH: usize = 100;
/// The segment memberships of a batch's contacts, read from a membership snapshot (`snapshot`),
/// with the names of their segments as read with it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    /// Names of the batch's segments, from the catalogue read with the snapshot.
    pub names: HashMap<i64, String>,
    /// By lower-cased e-mail: the contact's segments, matched by that e-mail or by the cio_id the
    /// batch knew for it (given in the command, or read with its attributes).
    by_email: HashMap<String, BTreeSet<i64>>,
}

impl Snapshot {
    /// The segments of a contact of the batch (read for its e-mail and the cio_id the batch knew;
    /// the sync passes that same cio_id).
    pub fn segments_of(&self, _cio_id: Option<&str>, email: &str) -> BTreeSet<i64> {
        self.by_email.get(&email.to_lowercase()).cloned().unwrap_or_default()
    }
}

/// Data read for a batch of commands.
#[derive(Debug, Default)]
pub struct Prefetched {
    /// When the earliest of the reads started.
    pub at: Option<DateTime<Utc>>,
    customers: HashMap<String, Customer>,
    asked: HashSet<String>,
    pub snapshot: Option<Arc<Snapshot>>,
}

impl Prefetched {
    /// `Some(Some(c))`: read; `Some(None)`: Customer.io has no such person; `None`: not asked.
    pub fn customer(&self, email: &str) -> Option<Option<&Customer>> {
        let e = email.to_lowercase();
        self.asked.contains(&e).then(|| self.customers.get(&e))
    }
}

/// Whether the batched reads cost fewer calls than one per contact.
pub fn worth_it(
    contacts: usize,
    segments_needed: usize,
    known_segments: usize,
    have_fresh_snapshot: bool,
) -> (bool, bool) {
    let batch_attributes = contacts >= 2;
    // A snapshot costs the catalogue plus at least one page per segment; unknown catalogue: assume 20.
    let estimate = 1 + if known_segments == 0 { 20 } else { known_segments };
    let snapshot = have_fresh_snapshot || segments_needed > estimate;
    (batch_attributes, snapshot)
}

/// Reads attributes (for the commands addressed by e-mail) and, if asked, every command's
/// segment memberships from a snapshot.
pub async fn fetch(ctx: &SyncCtx, cmds: &[&SyncV1], want_snapshot: bool) -> Result<Prefetched, Failure> {
    let mut pre = Prefetched::default();
    let mut emails: Vec<String> = cmds
        .iter()
        .filter(|c| c.contact.cio_id.is_none())
        .map(|c| c.contact.email.to_lowercase())
        .collect();
    emails.sort();
    emails.dedup();
    let snapshot = match want_snapshot {
        true => {
            let newest = cmds.iter().map(|c| c.received_at).max().unwrap_or_else(Utc::now);
            ctx.snapshots.fresh(&ctx.pool, &ctx.cio, newest).await?
        }
        false => None,
    };
    let started = Utc::now();
    for chunk in emails.chunks(ATTRIBUTES_BATCH) {
        let found = ctx.cio.attributes_batch(chunk, IdType::Email).await?;
        for c in found {
            if let Some(e) = c.email() {
                pre.customers.insert(e.to_lowercase(), c);
            }
        }
        pre.asked.extend(chunk.iter().cloned());
    }
    if !emails.is_empty() {
        pre.at = Some(started);
    }
    if let Some(snap) = snapshot {
        let contacts: Vec<(Option<String>, String)> = cmds
            .iter()
            .map(|c| {
                let email = c.contact.email.to_lowercase();
                let cio_id = c
                    .contact
                    .cio_id
                    .clone()
                    .or_else(|| pre.customers.get(&email).and_then(Customer::cio_id));
                (cio_id, email)
            })
            .collect();
        let asked: Vec<(Option<&str>, &str)> = contacts.iter().map(|(c, e)| (c.as_deref(), e.as_str())).collect();
        let sets = snap.memberships(&ctx.pool, &asked).await?;
        let mut view = Snapshot {
            taken_at: snap.taken_at,
            ..Default::default()
        };
        for ((_, email), set) in contacts.into_iter().zip(sets) {
            for id in &set {
                if let Some(name) = snap.name(*id) {
                    view.names.insert(*id, name.to_string());
                }
            }
            view.by_email.entry(email).or_default().extend(set);
        }
        pre.at = Some(pre.at.map_or(snap.taken_at, |a| a.min(snap.taken_at)));
        pre.snapshot = Some(Arc::new(view));
    }
    Ok(pre)
}

#[cfg(test)]
mod tests {
    use super::worth_it;

    #[test]
    fn batching_is_chosen_only_when_it_saves_calls() {
        assert_eq!(
            worth_it(1, 1, 20, false),
            (false, false),
            "a lone webhook takes the single calls"
        );
        assert_eq!(worth_it(10, 10, 20, false), (true, false));
        assert_eq!(worth_it(100, 100, 20, false), (true, true));
        assert_eq!(worth_it(5, 5, 20, true), (true, true), "a fresh snapshot costs nothing");
        assert_eq!(
            worth_it(15, 15, 0, false),
            (true, false),
            "unknown catalogue: assume 20 segments"
        );
    }
}
