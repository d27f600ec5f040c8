//! The read phase of the pipeline: the claimed commands' contacts from Customer.io (attributes,
//! segments and their names), the users they already have, and new users' password hashes, all
//! before any transaction, so that no lock is held across the network.

use std::collections::BTreeSet;

use futures_util::{stream, StreamExt};
use serde_json::json;
use shared::command::Action;

use super::{
    bulk_read,
    context::SyncCtx,
    job::Job,
    outcome::{Failure, Outcome},
    snapshot,
    store::{self, Lookup},
    users,
};
use crate::{
    cio::{types::Customer, PersonRef},
    events::Level,
    fieldmap::{Mapped, UserField},
    password::Prepared,
};

/// Attempts of an `add` or `update` whose contact Customer.io does not know before it ends
/// `contact_not_found` (the retries wait about 1 s, 10 s and 1 min): the default of
/// [`SyncCtx::not_found_attempts`](super::SyncCtx).
pub const NOT_FOUND_ATTEMPTS: u32 = 4;

/// Attributes of the `update` and `add` contacts, mapped through the field map.
pub(super) async fn read_attributes(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    for &i in claimed {
        let job = &mut jobs[i];
        // A cio_id from the webhook body is only a hint until the profile it names proves to have
        // the webhook's e-mail. `update_tags` reads no profile, so it identifies by e-mail (and
        // then by the matched user's stored cio_id).
        job.cio_id = match job.cmd().action {
            Action::UpdateTags => None,
            _ => job.cmd().contact.cio_id.clone(),
        };
        job.emails = vec![job.cmd().contact.email.folded()];
    }
    let contacts: Vec<usize> = claimed
        .iter()
        .copied()
        .filter(|&i| jobs[i].cmd().action != Action::UpdateTags)
        .collect();
    let people: Vec<PersonRef> = contacts.iter().map(|&i| jobs[i].person()).collect();
    let reads = bulk_read::attributes(ctx, &people, ctx.parallel).await;
    for (&i, read) in contacts.iter().zip(reads) {
        let job = &mut jobs[i];
        match read {
            Err(f) => job.fail(f),
            // Customer.io is eventually consistent: a journey may fire moments after the profile
            // was created, before reads find it. Retried (1 s, 10 s, 1 min) before giving up.
            Ok(None) if job.inc.attempt < ctx.not_found_attempts => {
                let reason = format!(
                    "Contact {} was not found in Customer.io (404); it may not be readable yet",
                    job.cmd().contact.email
                );
                job.fail(Failure::Transient {
                    reason,
                    retry_after: None,
                });
            }
            Ok(None) => job.not_found(),
            Ok(Some(customer)) => {
                if let Some(reason) = foreign_cio_id(job, &customer) {
                    job.log.error(format!("Rejected: {reason}"));
                    job.close(Outcome::Rejected(reason));
                    continue;
                }
                let mapped = ctx.field_map.apply(&customer.attributes);
                let (text, context) = describe(&mapped);
                job.log.push(
                    Level::Info,
                    format!("Loaded meta data from Customer.io: {text}"),
                    Some(context),
                );
                job.cio_id = customer.cio_id().or_else(|| job.cmd().contact.cio_id.clone());
                for e in [users::customer_email(&customer, &mapped)].into_iter().flatten() {
                    let e = e.to_lowercase();
                    if !job.emails.contains(&e) {
                        job.emails.push(e);
                    }
                }
                job.customer = customer;
                job.mapped = mapped;
            }
        }
    }
}

/// Why the profile read by the webhook's `cio_id` cannot be this contact's: it does not have the
/// webhook's e-mail (a forged or stale `cio_id` must not reach another person's account).
fn foreign_cio_id(job: &Job, customer: &Customer) -> Option<String> {
    let cio_id = job.cmd().contact.cio_id.as_deref()?;
    let webhook = job.cmd().contact.email.folded();
    let profile = customer.email();
    if profile.as_deref().map(shared::email::fold) == Some(webhook) {
        return None;
    }
    Some(match profile {
        Some(_) => format!(
            "cio_id {cio_id} from the webhook names a Customer.io profile with another e-mail than {}",
            job.cmd().contact.email
        ),
        None => format!(
            "cio_id {cio_id} from the webhook names a Customer.io profile without an e-mail, so it cannot be checked against {}",
            job.cmd().contact.email
        ),
    })
}

/// Looks for the users before spending segment calls or hashing passwords (one statement);
/// `update` and `update_tags` without a user end here.
pub(super) async fn find_existing(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) -> Result<(), Failure> {
    let live: Vec<usize> = claimed.iter().copied().filter(|&i| jobs[i].live()).collect();
    let lookups: Vec<Lookup> = live.iter().map(|&i| jobs[i].lookup()).collect();
    let mut conn = ctx.pool.acquire().await?;
    let found = store::find_users(&mut conn, &lookups, false).await?;
    for (&i, user) in live.iter().zip(found) {
        let job = &mut jobs[i];
        match (job.cmd().action, user) {
            (Action::Add, u) => job.existing = u,
            (_, None) => job.no_user(),
            (Action::UpdateTags, Some(u)) => {
                job.cio_id = u.cio_id.clone();
                job.existing = Some(u);
            }
            (Action::Update, Some(u)) => job.existing = Some(u),
        }
    }
    Ok(())
}

/// Segment ids and their names: from the URL's `tags`, a shared membership snapshot when that
/// saves calls, else one call per contact.
pub(super) async fn read_segments(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    let live: Vec<usize> = claimed.iter().copied().filter(|&i| jobs[i].live()).collect();
    let mut asking = Vec::new();
    for &i in &live {
        match jobs[i].cmd().tags.clone() {
            Some(tags) => jobs[i].segments = tags.into_iter().collect(),
            None => asking.push(i),
        }
    }
    let snap = match snapshot_for(ctx, jobs, &asking).await {
        Ok(s) => s,
        Err(f) => {
            tracing::warn!(
                commands = asking.len(),
                "membership snapshot failed ({}); reading one by one",
                f.reason()
            );
            None
        }
    };
    let from_snapshot = match &snap {
        Some(s) => {
            let contacts: Vec<(Option<&str>, &str)> = asking
                .iter()
                .map(|&i| (jobs[i].cio_id.as_deref(), jobs[i].cmd().contact.email.as_str()))
                .collect();
            match s.memberships(&ctx.pool, &contacts).await {
                Ok(sets) => Some(sets),
                Err(e) => {
                    tracing::warn!(
                        "reading the membership snapshot failed ({}); reading one by one",
                        e.reason()
                    );
                    None
                }
            }
        }
        None => None,
    };
    match (from_snapshot, &snap) {
        (Some(sets), Some(s)) => {
            for (&i, set) in asking.iter().zip(sets) {
                jobs[i].segments = set;
                jobs[i].data_from = Some(s.taken_at);
            }
        }
        _ => {
            let people: Vec<PersonRef> = asking.iter().map(|&i| jobs[i].person()).collect();
            let reads = bulk_read::person_segments(ctx, &people, ctx.parallel).await;
            for (&i, read) in asking.iter().zip(reads) {
                match read {
                    Err(f) => jobs[i].fail(f),
                    Ok(None) => jobs[i].not_found(),
                    Ok(Some(set)) => jobs[i].segments = set,
                }
            }
        }
    }
    label_segments(ctx, jobs, &live, snap.as_ref().filter(|_| !asking.is_empty())).await;
}

/// The shared membership snapshot, when the batch's segment reads cost more calls than one.
/// A batch too small to be worth a snapshot of its own still uses one another worker stored or
/// is taking (a database lookup, or a bounded wait, instead of one App API call per contact).
async fn snapshot_for(ctx: &SyncCtx, jobs: &[Job], asking: &[usize]) -> Result<Option<snapshot::Snapshot>, Failure> {
    let Some(newest) = asking.iter().map(|&i| jobs[i].cmd().received_at).max() else {
        return Ok(None);
    };
    if asking.len() < 2 {
        return ctx.snapshots.stored(&ctx.pool, newest).await;
    }
    let fresh = ctx.snapshots.known_fresh(newest).await;
    let known: i64 = sqlx::query_scalar("select count(*) from segments")
        .fetch_one(&ctx.pool)
        .await?;
    if !bulk_read::snapshot_worth_it(asking.len(), known as usize, fresh) {
        return ctx.snapshots.stored_or_coming(&ctx.pool, newest).await;
    }
    ctx.snapshots.fresh(&ctx.pool, &ctx.cio, newest).await
}

/// Names the live jobs' segments for the log: from the snapshot's catalogue, else the cached one.
async fn label_segments(ctx: &SyncCtx, jobs: &mut [Job], live: &[usize], snap: Option<&snapshot::Snapshot>) {
    let live: Vec<usize> = live.iter().copied().filter(|&i| jobs[i].live()).collect();
    let mut unnamed: BTreeSet<i64> = BTreeSet::new();
    for &i in &live {
        let by_snapshot = jobs[i].cmd().tags.is_none() && snap.is_some();
        for id in &jobs[i].segments {
            if !(by_snapshot && snap.is_some_and(|s| s.name(*id).is_some())) {
                unnamed.insert(*id);
            }
        }
    }
    let names = if unnamed.is_empty() {
        Default::default()
    } else {
        match bulk_read::segment_names(ctx, &unnamed).await {
            Ok(n) => n,
            Err(f) => {
                for &i in &live {
                    jobs[i].fail(f.clone());
                }
                return;
            }
        }
    };
    for &i in &live {
        let job = &mut jobs[i];
        let by_snapshot = job.cmd().tags.is_none() && snap.is_some();
        job.segment_label = if job.segments.is_empty() {
            "none".to_string()
        } else {
            job.segments
                .iter()
                .map(|id| {
                    let from_snap = snap.filter(|_| by_snapshot).and_then(|s| s.name(*id));
                    from_snap
                        .map(str::to_string)
                        .or_else(|| names.get(id).cloned())
                        .unwrap_or_else(|| format!("(Unknown Segment: {id})"))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
    }
}

/// Hashes the passwords of the users `add`s are about to create (bounded by the hasher).
pub(super) async fn hash_passwords(ctx: &SyncCtx, jobs: &mut [Job], claimed: &[usize]) {
    let creating: Vec<(usize, Option<String>)> = claimed
        .iter()
        .copied()
        .filter(|&i| jobs[i].live() && jobs[i].cmd().action == Action::Add && jobs[i].existing.is_none())
        .map(|i| (i, jobs[i].mapped.get(UserField::UserPass).map(str::to_string)))
        .collect();
    let hashed: Vec<(usize, anyhow::Result<Prepared>)> = stream::iter(creating)
        .map(|(i, mapped)| async move { (i, ctx.hasher.prepare(mapped.as_deref(), ctx.password_length).await) })
        .buffer_unordered(ctx.parallel.max(1))
        .collect()
        .await;
    for (i, r) in hashed {
        match r {
            Ok(p) => jobs[i].password = Some(p),
            Err(e) => jobs[i].fail(Failure::Transient {
                reason: e.to_string(),
                retry_after: None,
            }),
        }
    }
}

/// A readable summary of the mapped attributes for the event log (the password is never in it).
fn describe(mapped: &Mapped) -> (String, serde_json::Value) {
    let parts: Vec<String> = mapped.loaded.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let ctx: serde_json::Map<String, serde_json::Value> =
        mapped.loaded.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let text = if parts.is_empty() {
        "no mapped fields".to_string()
    } else {
        parts.join(", ")
    };
    (text, serde_json::Value::Object(ctx))
}
