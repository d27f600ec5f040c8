//! Reading many contacts at once when commands queue up (issue 6): attributes through
//! `POST /v1/customers/attributes` (up to 100 people a call) and segment memberships from a
//! snapshot of every segment's paged membership (`GET /v1/segments/{id}/membership`), instead of
//! two calls per contact. A snapshot serves only webhooks received before it was taken, and the
//! sync that uses it counts as started when its data was read (see `coalesce`). Snapshots are
//! stored in Postgres, so that one worker takes each and every worker uses it.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use shared::command::SyncV1;
use tokio::sync::Mutex;

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    coalesce::{self, CLOCK_SKEW_MARGIN},
    store, Failure, SyncCtx,
};
use crate::cio::{types::Customer, CioError, IdType};

/// People per batch call (the API's maximum).
pub const ATTRIBUTES_BATCH: usize = 100;
/// Members per membership page (the API's maximum).
pub const MEMBERSHIP_PAGE: u32 = 30_000;

/// Every segment's members at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    /// App API calls the snapshot cost.
    pub calls: usize,
    pub segment_count: usize,
    /// Segment names from the catalogue read with the snapshot.
    pub names: HashMap<i64, String>,
    by_cio: HashMap<String, BTreeSet<i64>>,
    by_email: HashMap<String, BTreeSet<i64>>,
}

impl Snapshot {
    pub fn segments_of(&self, cio_id: Option<&str>, email: &str) -> BTreeSet<i64> {
        let mut s = BTreeSet::new();
        if let Some(found) = cio_id.and_then(|c| self.by_cio.get(c)) {
            s.extend(found);
        }
        if let Some(found) = self.by_email.get(&email.to_lowercase()) {
            s.extend(found);
        }
        s
    }
}

/// The key under which snapshots are claimed (`coalesce`): one worker takes a snapshot while
/// the others wait for it; a snapshot that started after a webhook arrived serves that webhook.
const SNAPSHOT_KEY: &str = "segment-membership-snapshot";
/// Snapshots kept in the database (the latest serves; older ones are deleted).
const SNAPSHOTS_KEPT: i64 = 2;

/// The latest snapshot this worker loaded; snapshots themselves are shared through Postgres.
#[derive(Default)]
pub struct Snapshots {
    current: Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    /// The snapshot in memory if it was taken after `received` (plus the skew margin).
    pub async fn if_fresh(&self, received: DateTime<Utc>) -> Option<Arc<Snapshot>> {
        let g = self.current.lock().await;
        g.as_ref()
            .filter(|s| s.taken_at >= received + CLOCK_SKEW_MARGIN)
            .cloned()
    }

    /// A snapshot taken after `received`: this worker's, another worker's, or a new one.
    pub async fn fresh(&self, ctx: &SyncCtx, received: DateTime<Utc>) -> Result<Arc<Snapshot>, Failure> {
        let mut g = self.current.lock().await;
        let deadline = tokio::time::Instant::now() + coalesce::LEASE + std::time::Duration::from_secs(5);
        loop {
            if let Some(s) = g.as_ref().filter(|s| s.taken_at >= received + CLOCK_SKEW_MARGIN) {
                return Ok(s.clone());
            }
            if let Some(s) = load_latest(&ctx.pool, received).await? {
                *g = Some(s);
                continue;
            }
            // A snapshot serves webhooks received at least the skew margin before it: taking one
            // sooner would not serve this batch, and would only be taken again.
            let ready_at = received + CLOCK_SKEW_MARGIN;
            if let Ok(early) = (ready_at - Utc::now()).to_std() {
                tokio::time::sleep(early).await;
            }
            match coalesce::claim_key(&ctx.pool, SNAPSHOT_KEY.into(), received, Uuid::new_v4()).await? {
                coalesce::Verdict::Claimed(claim) => match take(ctx, &claim).await {
                    Ok(s) => {
                        *g = Some(s.clone());
                        return Ok(s);
                    }
                    Err(f) => {
                        coalesce::release(&ctx.pool, &claim).await;
                        return Err(f);
                    }
                },
                // Satisfied: a newer snapshot is in the database (loaded on the next turn).
                coalesce::Verdict::Satisfied { .. } => {}
                coalesce::Verdict::Busy if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                coalesce::Verdict::Busy => {
                    return Err(Failure::Transient {
                        reason: "another worker's membership snapshot is taking too long".into(),
                        retry_after: None,
                    })
                }
            }
        }
    }
}

/// The latest stored snapshot, if it was taken after `received`.
async fn load_latest(pool: &PgPool, received: DateTime<Utc>) -> Result<Option<Arc<Snapshot>>, sqlx::Error> {
    let head: Option<(i64, DateTime<Utc>, i32, i32)> = sqlx::query_as(
        "select id, taken_at, segment_count, calls from membership_snapshots
         where taken_at >= $1 order by taken_at desc limit 1",
    )
    .bind(received + CLOCK_SKEW_MARGIN)
    .fetch_optional(pool)
    .await?;
    let Some((id, taken_at, segment_count, calls)) = head else {
        return Ok(None);
    };
    let rows: Vec<(String, Vec<i64>)> =
        sqlx::query_as("select contact, segment_ids from membership_snapshot_members where snapshot_id = $1")
            .bind(id)
            .fetch_all(pool)
            .await?;
    let mut snap = Snapshot {
        taken_at,
        calls: calls as usize,
        segment_count: segment_count as usize,
        ..Default::default()
    };
    for (contact, ids) in rows {
        let set: BTreeSet<i64> = ids.into_iter().collect();
        if let Some(c) = contact.strip_prefix("cio:") {
            snap.by_cio.insert(c.to_string(), set);
        } else if let Some(e) = contact.strip_prefix("email:") {
            snap.by_email.insert(e.to_string(), set);
        }
    }
    Ok(Some(Arc::new(snap)))
}

/// Reads every segment's membership from Customer.io and stores it for every worker.
async fn take(ctx: &SyncCtx, claim: &coalesce::Claim) -> Result<Arc<Snapshot>, Failure> {
    let catalogue = ctx.cio.segments().await?;
    store::upsert_catalogue(&ctx.pool, &catalogue).await?;
    let mut snap = Snapshot {
        taken_at: claim.started_at,
        calls: 1,
        segment_count: catalogue.len(),
        ..Default::default()
    };
    for seg in &catalogue {
        let mut start: Option<String> = None;
        loop {
            let page = match ctx
                .cio
                .segment_membership(seg.id, start.as_deref(), MEMBERSHIP_PAGE)
                .await
            {
                Ok(p) => p,
                Err(CioError::NotFound) => break, // deleted since the catalogue was read
                Err(e) => return Err(e.into()),
            };
            snap.calls += 1;
            for who in page.identifiers {
                if let Some(c) = who.cio_id {
                    snap.by_cio.entry(c).or_default().insert(seg.id);
                }
                if let Some(e) = who.email {
                    snap.by_email.entry(e.to_lowercase()).or_default().insert(seg.id);
                }
            }
            match page.next.filter(|n| !n.is_empty()) {
                Some(n) => start = Some(n),
                None => break,
            }
        }
    }
    let mut contacts = Vec::with_capacity(snap.by_cio.len() + snap.by_email.len());
    let mut ids = Vec::with_capacity(contacts.capacity());
    for (c, set) in &snap.by_cio {
        contacts.push(format!("cio:{c}"));
        ids.push(serde_json::to_string(set).expect("ids serialise"));
    }
    for (e, set) in &snap.by_email {
        contacts.push(format!("email:{e}"));
        ids.push(serde_json::to_string(set).expect("ids serialise"));
    }
    let mut tx = ctx.pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "insert into membership_snapshots (taken_at, segment_count, calls) values ($1, $2, $3) returning id",
    )
    .bind(snap.taken_at)
    .bind(snap.segment_count as i32)
    .bind(snap.calls as i32)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "insert into membership_snapshot_members (snapshot_id, contact, segment_ids)
         select $1, c, array(select jsonb_array_elements_text(i::jsonb)::bigint)
         from unnest($2::text[], $3::text[]) as t(c, i)",
    )
    .bind(id)
    .bind(&contacts)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "delete from membership_snapshots where id not in
             (select id from membership_snapshots order by taken_at desc limit $1)",
    )
    .bind(SNAPSHOTS_KEPT)
    .execute(&mut *tx)
    .await?;
    coalesce::complete(&mut tx, claim, None, Uuid::new_v4()).await?;
    tx.commit().await?;
    metrics::counter!("cio_worker_snapshots_total").increment(1);
    tracing::info!(
        segments = snap.segment_count,
        calls = snap.calls,
        contacts = contacts.len(),
        "took a segment membership snapshot"
    );
    Ok(Arc::new(snap))
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

/// Reads attributes (and, if asked, a snapshot) for the commands addressed by e-mail.
pub async fn fetch(ctx: &SyncCtx, cmds: &[&SyncV1], want_snapshot: bool) -> Result<Prefetched, Failure> {
    let mut pre = Prefetched::default();
    let mut emails: Vec<String> = cmds
        .iter()
        .filter(|c| c.contact.cio_id.is_none())
        .map(|c| c.contact.email.to_lowercase())
        .collect();
    emails.sort();
    emails.dedup();
    if want_snapshot {
        let newest = cmds.iter().map(|c| c.received_at).max().unwrap_or_else(Utc::now);
        let snap = ctx.snapshots.fresh(ctx, newest).await?;
        pre.at = Some(snap.taken_at);
        pre.snapshot = Some(snap);
    }
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
        pre.at = Some(pre.at.map_or(started, |a| a.min(started)));
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
