//! Reading a batch's contacts from Customer.io: attributes of up to 100 people per
//! `POST /v1/customers/attributes` when at least two are addressed by e-mail, else one
//! `GET /v1/customers/{id}/attributes` each; per-person segment reads, and segment names from the
//! cached catalogue. Every call goes through the shared rate limiter; single reads run at most
//! `parallel` at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::{stream, StreamExt};

use super::{context::SyncCtx, outcome::Failure, store};
use crate::cio::{
    types::{Customer, Segment},
    CioError, IdType, PersonRef,
};

/// People per batch call (the API's maximum).
pub const ATTRIBUTES_BATCH: usize = 100;

/// What a read found: the data, `None` when Customer.io has no such person (404), or a failure.
pub type Read<T> = Result<Option<T>, Failure>;

/// The attributes of each person, in order.
pub async fn attributes(ctx: &SyncCtx, people: &[PersonRef], parallel: usize) -> Vec<Read<Customer>> {
    let by_email: Vec<usize> = (0..people.len())
        .filter(|&i| people[i].id_type == IdType::Email)
        .collect();
    let mut done: Vec<(usize, Read<Customer>)> = Vec::with_capacity(people.len());
    if by_email.len() >= 2 {
        match batched(ctx, by_email.iter().map(|&i| people[i].value.as_str())).await {
            Ok(found) => done.extend(
                by_email
                    .iter()
                    .map(|&i| (i, Ok(found.get(&people[i].value.to_lowercase()).cloned()))),
            ),
            // A failed batched read does not fail the batch: each contact then reads for itself and
            // succeeds or fails on its own (a 429 has already paused every worker for its Retry-After).
            Err(f) => tracing::warn!(
                contacts = by_email.len(),
                "batched read failed ({}); reading one by one",
                f.reason()
            ),
        }
    }
    let single: Vec<usize> = (0..people.len())
        .filter(|i| !done.iter().any(|(d, _)| d == i))
        .collect();
    let reads: Vec<(usize, Read<Customer>)> = stream::iter(single)
        .map(|i| async move {
            let r = match ctx.cio.attributes(&people[i]).await {
                Ok(c) => Ok(Some(c)),
                Err(CioError::NotFound) => Ok(None),
                Err(e) => Err(e.into()),
            };
            (i, r)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    done.extend(reads);
    in_order(done)
}

/// Reads tagged with their position, back in order.
fn in_order<T>(mut reads: Vec<(usize, T)>) -> Vec<T> {
    reads.sort_by_key(|(i, _)| *i);
    reads.into_iter().map(|(_, r)| r).collect()
}

/// Attributes of people by e-mail, 100 per call: lower-cased e-mail → customer.
async fn batched<'a>(
    ctx: &SyncCtx,
    emails: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Customer>, Failure> {
    let mut emails: Vec<String> = emails.map(str::to_lowercase).collect();
    emails.sort();
    emails.dedup();
    let mut found = HashMap::with_capacity(emails.len());
    for chunk in emails.chunks(ATTRIBUTES_BATCH) {
        for c in ctx.cio.attributes_batch(chunk, IdType::Email).await? {
            if let Some(e) = c.email() {
                found.insert(e.to_lowercase(), c);
            }
        }
    }
    metrics::counter!("cio_worker_batched_commands_total").increment(emails.len() as u64);
    Ok(found)
}

/// The segment ids of each person (one call each), in order; the catalogue learns their names.
pub async fn person_segments(ctx: &SyncCtx, people: &[PersonRef], parallel: usize) -> Vec<Read<BTreeSet<i64>>> {
    let reads: Vec<(usize, Read<Vec<Segment>>)> = stream::iter(0..people.len())
        .map(|i| async move {
            let r = match ctx.cio.person_segments(&people[i]).await {
                Ok(s) => Ok(Some(s)),
                Err(CioError::NotFound) => Ok(None),
                Err(e) => Err(e.into()),
            };
            (i, r)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut seen: BTreeMap<i64, Segment> = BTreeMap::new();
    let sets: Vec<(usize, Read<BTreeSet<i64>>)> = reads
        .into_iter()
        .map(|(i, r)| {
            let set = r.map(|found| {
                found.map(|segs| {
                    let ids = segs.iter().map(|s| s.id).collect();
                    seen.extend(segs.into_iter().map(|s| (s.id, s)));
                    ids
                })
            });
            (i, set)
        })
        .collect();
    let seen: Vec<Segment> = seen.into_values().collect();
    if let Err(e) = store::upsert_catalogue(&ctx.pool, &seen).await {
        tracing::warn!("could not store segment names ({e}); they are read again next time");
    }
    in_order(sets)
}

/// Names of the given segments from the cached catalogue, refreshed from `GET /v1/segments`
/// once when an id is unknown (or known without its type).
pub async fn segment_names(ctx: &SyncCtx, ids: &BTreeSet<i64>) -> Result<BTreeMap<i64, String>, Failure> {
    let (names, complete) = store::segment_names(&ctx.pool, ids).await?;
    if complete {
        return Ok(names);
    }
    let all = ctx.cio.segments().await?;
    store::upsert_catalogue(&ctx.pool, &all).await?;
    Ok(store::segment_names(&ctx.pool, ids).await?.0)
}

/// Whether a membership snapshot costs fewer calls than one segments call per contact: it costs
/// the catalogue plus at least one page per segment (an unknown catalogue is assumed to have 20).
pub fn snapshot_worth_it(segments_needed: usize, known_segments: usize, have_fresh_snapshot: bool) -> bool {
    let estimate = 1 + if known_segments == 0 { 20 } else { known_segments };
    have_fresh_snapshot || segments_needed > estimate
}

#[cfg(test)]
mod tests {
    use super::snapshot_worth_it;

    #[test]
    fn a_snapshot_is_taken_only_when_it_saves_calls() {
        assert!(!snapshot_worth_it(1, 20, false), "a lone webhook takes the single call");
        assert!(!snapshot_worth_it(10, 20, false));
        assert!(snapshot_worth_it(100, 20, false));
        assert!(snapshot_worth_it(5, 20, true), "a fresh snapshot costs nothing");
        assert!(
            !snapshot_worth_it(15, 0, false),
            "unknown catalogue: assume 20 segments"
        );
    }
}
