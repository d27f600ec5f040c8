//! Segment membership snapshots: every segment's members at one moment, read from Customer.io's
//! paged membership listing (`GET /v1/segments/{id}/membership`) and shared by all workers through
//! Postgres.
//!
//! - Bounded memory: each page is written to Postgres as it arrives (one INSERT per page), so a
//!   worker never holds more than one page; a batch reads back only its own contacts' memberships.
//! - Serving: a snapshot serves webhooks received at least the clock-skew margin before it was
//!   taken. Only a snapshot marked complete serves; a failed one leaves nothing behind.
//! - One taker: a worker takes a snapshot under a lease of its own (`snapshot_leases`), renewed
//!   while the pages are read; the other workers wait (bounded) for its result, and take over a
//!   lease whose holder stopped renewing it.
//! - Size limit: a workspace with more memberships than the operator's limit gets no snapshot;
//!   the verdict is stored and honoured by every worker for an hour, during which commands read
//!   their contacts one by one.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex as StdMutex,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::{sync::Mutex, task::JoinHandle, time::Instant};
use uuid::Uuid;

use super::ledger::CLOCK_SKEW_MARGIN;
use super::{outcome::Failure, store::upsert_catalogue};
use crate::cio::{types::Identifiers, CioClient, CioError};

/// Members per membership page (the API's maximum).
pub const MEMBERSHIP_PAGE: u32 = 30_000;
/// Default of `SNAPSHOT_MAX_MEMBERS`: memberships (person–segment pairs) above which a workspace is
/// read per contact instead. Worker memory does not depend on it: a worker holds one page at a time
/// (30,000 identifiers, a few MB parsed) and reads back only a batch's contacts. It bounds what a
/// snapshot costs elsewhere: at least 34 App API calls for a million memberships, the time to
/// write them, and Postgres space (about 185 bytes a membership with its indexes, for each of the
/// snapshots kept).
pub const DEFAULT_MAX_MEMBERS: usize = 1_000_000;
/// How long a snapshot's lease lasts unless renewed; the holder renews it every third of that.
pub const LEASE: Duration = Duration::from_secs(60);
/// How long a worker waits for another worker's snapshot before its batch reads per contact.
pub const MAX_WAIT: Duration = Duration::from_secs(120);
/// How long a workspace found over the limit is not snapshotted again.
pub const TOO_LARGE_FOR: Duration = Duration::from_secs(3600);
/// Complete snapshots kept (the latest serves; an older one may still be read by a batch).
const KEPT: i64 = 2;
/// The lease key of membership snapshots.
const LEASE_KEY: &str = "segment-membership";
/// How often a waiting worker looks again.
const POLL: Duration = Duration::from_millis(200);

/// How snapshots are taken; tests shorten the lease and the page.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub max_members: usize,
    pub lease: Duration,
    pub max_wait: Duration,
    pub page_size: u32,
}

/// Shared by all in-flight commands of a worker: the latest snapshot known here, and the settings.
pub struct Snapshots {
    settings: SnapshotSettings,
    latest: StdMutex<Option<Snapshot>>,
    /// One attempt at a time per worker: a second batch waits, then finds the first one's snapshot.
    turn: Mutex<()>,
}

/// Every segment's members at one moment (the members themselves stay in Postgres).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub id: i64,
    /// When its reads started (database clock).
    pub taken_at: DateTime<Utc>,
    /// Memberships (person–segment pairs) it holds.
    pub members: i64,
    /// App API calls it cost.
    pub calls: i32,
    /// Segment names from the catalogue read with it.
    names: Arc<HashMap<i64, String>>,
}

impl Snapshot {
    /// Whether it serves a webhook received at `received`.
    pub fn serves(&self, received: DateTime<Utc>) -> bool {
        self.taken_at >= received + CLOCK_SKEW_MARGIN
    }

    /// A segment's name as read with the snapshot.
    pub fn name(&self, id: i64) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// Named segments in the catalogue read with the snapshot.
    pub fn segment_count(&self) -> usize {
        self.names.len()
    }

    /// The segment ids of each contact, in order, read from Postgres for just these contacts. A
    /// contact is `(cio_id if known, e-mail)`; a membership counts when its cio_id matches, or its
    /// e-mail case-insensitively. Fails (transient) if the snapshot was replaced meanwhile.
    pub async fn memberships(
        &self,
        pool: &PgPool,
        contacts: &[(Option<&str>, &str)],
    ) -> Result<Vec<BTreeSet<i64>>, Failure> {
        if contacts.is_empty() {
            return Ok(Vec::new());
        }
        let cio_ids: Vec<Option<&str>> = contacts.iter().map(|c| c.0).collect();
        let emails: Vec<&str> = contacts.iter().map(|c| c.1).collect();
        // One statement, so that the check that the snapshot still exists and the rows read agree.
        let (present, at, segments): (bool, Vec<i64>, Vec<i64>) = sqlx::query_as(
            "with asked as (
                 select * from unnest($2::text[], $3::text[]) with ordinality as t(cio_id, email, i)
             ), found as (
                 select a.i, m.segment_id from asked a
                 join segment_snapshot_members m on m.snapshot_id = $1 and m.cio_id = a.cio_id
                 union
                 select a.i, m.segment_id from asked a
                 join segment_snapshot_members m on m.snapshot_id = $1 and m.email = fold_email(a.email)
             )
             select exists (select 1 from segment_snapshots where id = $1 and state = 'complete'),
                    coalesce((select array_agg(i order by i, segment_id) from found), '{}'),
                    coalesce((select array_agg(segment_id order by i, segment_id) from found), '{}')",
        )
        .bind(self.id)
        .bind(&cio_ids)
        .bind(&emails)
        .fetch_one(pool)
        .await?;
        if !present {
            return Err(Failure::Transient {
                reason: format!("membership snapshot {} was replaced while in use", self.id),
                retry_after: None,
            });
        }
        let mut out = vec![BTreeSet::new(); contacts.len()];
        for (i, segment) in at.into_iter().zip(segments) {
            out[(i - 1) as usize].insert(segment);
        }
        Ok(out)
    }
}

impl Snapshots {
    pub fn new(max_members: usize) -> Self {
        Self::with_settings(SnapshotSettings {
            max_members,
            lease: LEASE,
            max_wait: MAX_WAIT,
            page_size: MEMBERSHIP_PAGE,
        })
    }

    pub fn with_settings(settings: SnapshotSettings) -> Self {
        Self {
            settings,
            latest: StdMutex::new(None),
            turn: Mutex::new(()),
        }
    }

    pub fn settings(&self) -> &SnapshotSettings {
        &self.settings
    }

    /// Cheap, no Customer.io call and no database call: whether a complete snapshot that serves
    /// webhooks received at `received` is already known to this worker.
    pub async fn known_fresh(&self, received: DateTime<Utc>) -> bool {
        self.latest().is_some_and(|s| s.serves(received))
    }

    /// A complete snapshot that serves webhooks received at `received`, if one is stored already
    /// (taken by any worker): one database lookup, never a Customer.io call or a wait.
    pub async fn stored(&self, pool: &PgPool, received: DateTime<Utc>) -> Result<Option<Snapshot>, Failure> {
        if let Some(s) = self.latest().filter(|s| s.serves(received)) {
            return Ok(Some(s));
        }
        let found = latest_complete(pool, received + CLOCK_SKEW_MARGIN).await?;
        if let Some(s) = &found {
            self.remember(s);
        }
        Ok(found)
    }

    /// For a batch too small to be worth a snapshot of its own: one stored already, or the one a
    /// worker is taking now, waited for (bounded) as long as some worker holds the lease, since
    /// waiting costs no App API call and reading per contact costs one per person. `None` when
    /// none is stored or being taken that serves webhooks received at `received`.
    pub async fn stored_or_coming(&self, pool: &PgPool, received: DateTime<Utc>) -> Result<Option<Snapshot>, Failure> {
        let deadline = Instant::now() + self.settings.max_wait;
        // Once one was being taken, the lease may be free for a moment before the next (a worker
        // whose batch the finished one does not serve takes the next): look twice before giving
        // up. When none is being taken at all, give up at once.
        let (mut taking_seen, mut free_seen) = (false, 0);
        loop {
            if let Some(s) = self.stored(pool, received).await? {
                return Ok(Some(s));
            }
            if being_taken(pool).await? {
                (taking_seen, free_seen) = (true, 0);
            } else {
                free_seen += 1;
            }
            if !taking_seen || free_seen >= 2 || Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn latest(&self) -> Option<Snapshot> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn remember(&self, s: &Snapshot) {
        let mut g = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_none_or(|old| old.taken_at <= s.taken_at) {
            *g = Some(s.clone());
        }
    }

    /// A complete snapshot that serves webhooks received at `received`: one already stored (by any
    /// worker), or one taken now by this worker while the others wait for it (bounded).
    /// `Ok(None)`: the workspace has more memberships than the limit (found now or within the last
    /// hour, by any worker); the caller reads per contact instead.
    pub async fn fresh(
        &self,
        pool: &PgPool,
        cio: &CioClient,
        received: DateTime<Utc>,
    ) -> Result<Option<Snapshot>, Failure> {
        let ready = received + CLOCK_SKEW_MARGIN;
        let _turn = self.turn.lock().await;
        let deadline = Instant::now() + self.settings.max_wait;
        loop {
            if let Some(s) = latest_complete(pool, ready).await? {
                self.remember(&s);
                return Ok(Some(s));
            }
            if too_large_lately(pool, self.settings.max_members).await?.is_some() {
                return Ok(None);
            }
            // A snapshot taken sooner would not serve this webhook (database clock).
            let early: f64 = sqlx::query_scalar("select extract(epoch from ($1 - clock_timestamp()))::float8")
                .bind(ready)
                .fetch_one(pool)
                .await?;
            let pause = if early > 0.0 {
                Duration::from_secs_f64(early).min(POLL)
            } else {
                let holder = Uuid::new_v4();
                match acquire(pool, holder, self.settings.lease).await? {
                    Some(taken_at) => {
                        // Another worker may have completed one (and released the lease) between
                        // the check above and taking the lease: use it rather than take a second.
                        if let Some(s) = latest_complete(pool, ready).await? {
                            release(&mut *pool.acquire().await?, holder).await?;
                            self.remember(&s);
                            return Ok(Some(s));
                        }
                        return self.take(pool, cio, holder, taken_at).await;
                    }
                    None => POLL,
                }
            };
            if Instant::now() >= deadline {
                return Err(Failure::Transient {
                    reason: if early > 0.0 {
                        "the webhook was received later than the database's clock allows a snapshot to serve it".into()
                    } else {
                        "another worker's membership snapshot is taking too long".into()
                    },
                    retry_after: None,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Takes a snapshot under the lease `holder` holds since `taken_at`; releases it in the end.
    async fn take(
        &self,
        pool: &PgPool,
        cio: &CioClient,
        holder: Uuid,
        taken_at: DateTime<Utc>,
    ) -> Result<Option<Snapshot>, Failure> {
        let lost = Arc::new(AtomicBool::new(false));
        let _renewal = Renewal::start(pool.clone(), holder, self.settings.lease, lost.clone());
        let started = std::time::Instant::now();
        let id = match begin(pool, taken_at).await {
            Ok(id) => id,
            Err(e) => {
                discard(pool, None, holder).await;
                return Err(e.into());
            }
        };
        let outcome = match self.read(pool, cio, id, &lost).await {
            Ok(Read::Complete { members, calls, names }) => {
                let snap = Snapshot {
                    id,
                    taken_at,
                    members,
                    calls,
                    names: Arc::new(names),
                };
                complete(pool, &snap, holder).await.map(|()| Some(snap))
            }
            Ok(Read::TooLarge { seen, calls }) => too_large(pool, id, holder, seen, calls).await.map(|()| None),
            Err(f) => Err(f),
        };
        match &outcome {
            Ok(Some(s)) => {
                self.remember(s);
                metrics::counter!("cio_worker_snapshots_total").increment(1);
                tracing::info!(
                    segments = s.segment_count(),
                    members = s.members,
                    calls = s.calls,
                    seconds = started.elapsed().as_secs_f64(),
                    "took a segment membership snapshot"
                );
            }
            Ok(None) => tracing::warn!(
                limit = self.settings.max_members,
                "the workspace has more segment memberships than SNAPSHOT_MAX_MEMBERS: contacts are read one by one for the next hour"
            ),
            Err(f) => {
                tracing::warn!("membership snapshot failed: {}", f.reason());
                discard(pool, Some(id), holder).await;
            }
        }
        outcome
    }

    /// Reads the catalogue and every segment's pages, storing each page as it arrives.
    async fn read(&self, pool: &PgPool, cio: &CioClient, id: i64, lost: &AtomicBool) -> Result<Read, Failure> {
        let catalogue = cio.segments().await?;
        upsert_catalogue(pool, &catalogue).await?;
        let mut calls = 1;
        let mut members = 0usize;
        for seg in &catalogue {
            let mut start: Option<String> = None;
            loop {
                if lost.load(Ordering::Relaxed) {
                    return Err(Failure::Transient {
                        reason: "lost the membership snapshot's lease (it could not be renewed)".into(),
                        retry_after: None,
                    });
                }
                let page = match cio
                    .segment_membership(seg.id, start.as_deref(), self.settings.page_size)
                    .await
                {
                    Ok(p) => p,
                    Err(CioError::NotFound) => break, // deleted since the catalogue was read
                    Err(e) => return Err(e.into()),
                };
                calls += 1;
                members += page.identifiers.len();
                if members > self.settings.max_members {
                    return Ok(Read::TooLarge { seen: members, calls });
                }
                store_page(pool, id, seg.id, page.identifiers).await?;
                match page.next.filter(|n| !n.is_empty()) {
                    Some(n) => start = Some(n),
                    None => break,
                }
            }
        }
        let names = catalogue.into_iter().filter_map(|s| Some((s.id, s.name?))).collect();
        Ok(Read::Complete {
            members: members as i64,
            calls,
            names,
        })
    }
}

enum Read {
    Complete {
        members: i64,
        calls: i32,
        names: HashMap<i64, String>,
    },
    TooLarge {
        seen: usize,
        calls: i32,
    },
}

type HeadRow = (i64, DateTime<Utc>, i64, i32, Vec<i64>, Vec<Option<String>>);

/// The newest complete snapshot taken at or after `ready`.
async fn latest_complete(pool: &PgPool, ready: DateTime<Utc>) -> Result<Option<Snapshot>, sqlx::Error> {
    let row: Option<HeadRow> = sqlx::query_as(
        "select id, taken_at, members, calls, segment_ids, segment_names from segment_snapshots
         where state = 'complete' and taken_at >= $1 order by taken_at desc, id desc limit 1",
    )
    .bind(ready)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, taken_at, members, calls, ids, names)| Snapshot {
        id,
        taken_at,
        members,
        calls,
        names: Arc::new(
            ids.into_iter()
                .zip(names)
                .filter_map(|(id, n)| Some((id, n?)))
                .collect(),
        ),
    }))
}

/// Memberships seen by a recent attempt that found the workspace larger than `max_members`.
async fn too_large_lately(pool: &PgPool, max_members: usize) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select members from segment_snapshots
         where state = 'too_large' and members > $1 and finished_at > clock_timestamp() - make_interval(secs => $2)
         order by finished_at desc limit 1",
    )
    .bind(max_members as i64)
    .bind(TOO_LARGE_FOR.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Takes the lease if it is free or expired; the time it was taken (database clock).
async fn acquire(pool: &PgPool, holder: Uuid, lease: Duration) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "insert into snapshot_leases (key, holder, taken_at, expires_at)
         select $1, $2, t, t + make_interval(secs => $3) from (select clock_timestamp() as t) now
         on conflict (key) do update
             set holder = excluded.holder, taken_at = excluded.taken_at, expires_at = excluded.expires_at
             where snapshot_leases.expires_at <= excluded.taken_at
         returning taken_at",
    )
    .bind(LEASE_KEY)
    .bind(holder)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Renews the lease every third of its length until dropped; sets `lost` if it is no longer held.
struct Renewal(JoinHandle<()>);

impl Renewal {
    fn start(pool: PgPool, holder: Uuid, lease: Duration, lost: Arc<AtomicBool>) -> Self {
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed = sqlx::query(
                    "update snapshot_leases set expires_at = clock_timestamp() + make_interval(secs => $3)
                     where key = $1 and holder = $2",
                )
                .bind(LEASE_KEY)
                .bind(holder)
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await;
                match renewed {
                    Ok(r) if r.rows_affected() == 1 => {}
                    Ok(_) => {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    // Tried again at the next turn; the lease outlives two missed renewals.
                    Err(e) => tracing::warn!("could not renew the membership snapshot's lease: {e}"),
                }
            }
        }))
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts writing a snapshot; deletes what a holder that lost the lease left half-written.
async fn begin(pool: &PgPool, taken_at: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("delete from segment_snapshots where state = 'writing'")
        .execute(&mut *tx)
        .await?;
    let id = sqlx::query_scalar("insert into segment_snapshots (state, taken_at) values ('writing', $1) returning id")
        .bind(taken_at)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Writes one page of a segment's members (one statement).
async fn store_page(pool: &PgPool, id: i64, segment: i64, page: Vec<Identifiers>) -> Result<(), sqlx::Error> {
    let (cio_ids, emails): (Vec<Option<String>>, Vec<Option<String>>) = page
        .into_iter()
        .filter(|p| p.cio_id.is_some() || p.email.is_some())
        .map(|p| (p.cio_id, p.email))
        .unzip();
    sqlx::query(
        "insert into segment_snapshot_members (snapshot_id, segment_id, cio_id, email)
         select $1, $2, c, fold_email(e) from unnest($3::text[], $4::text[]) as t(c, e)",
    )
    .bind(id)
    .bind(segment)
    .bind(cio_ids)
    .bind(emails)
    .execute(pool)
    .await?;
    Ok(())
}

/// Locks the lease row if `holder` still holds it (inside the caller's transaction).
async fn still_held(conn: &mut sqlx::PgConnection, holder: Uuid) -> Result<bool, sqlx::Error> {
    let held: Option<i32> =
        sqlx::query_scalar("select 1 from snapshot_leases where key = $1 and holder = $2 for update")
            .bind(LEASE_KEY)
            .bind(holder)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(held.is_some())
}

/// Whether some worker holds the snapshot lease (is taking a snapshot) right now.
async fn being_taken(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from snapshot_leases where key = $1 and expires_at > clock_timestamp())",
    )
    .bind(LEASE_KEY)
    .fetch_one(pool)
    .await
}

async fn release(conn: &mut sqlx::PgConnection, holder: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("delete from snapshot_leases where key = $1 and holder = $2")
        .bind(LEASE_KEY)
        .bind(holder)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks the snapshot complete, deletes older ones (keeping the latest few) and releases the lease,
/// in one transaction, provided the lease is still held.
async fn complete(pool: &PgPool, s: &Snapshot, holder: Uuid) -> Result<(), Failure> {
    let mut tx = pool.begin().await?;
    if !still_held(&mut tx, holder).await? {
        return Err(Failure::Transient {
            reason: "lost the membership snapshot's lease before it was complete".into(),
            retry_after: None,
        });
    }
    let (ids, names): (Vec<i64>, Vec<&str>) = s.names.iter().map(|(id, n)| (*id, n.as_str())).unzip();
    sqlx::query(
        "update segment_snapshots set state = 'complete', finished_at = clock_timestamp(), members = $2, calls = $3,
             segment_ids = $4, segment_names = $5
         where id = $1",
    )
    .bind(s.id)
    .bind(s.members)
    .bind(s.calls)
    .bind(ids)
    .bind(names)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "delete from segment_snapshots where id not in
             (select id from segment_snapshots where state = 'complete' order by taken_at desc, id desc limit $1)",
    )
    .bind(KEPT)
    .execute(&mut *tx)
    .await?;
    release(&mut tx, holder).await?;
    tx.commit().await?;
    Ok(())
}

/// Records that the workspace is over the limit (no members kept) and releases the lease.
async fn too_large(pool: &PgPool, id: i64, holder: Uuid, seen: usize, calls: i32) -> Result<(), Failure> {
    let mut tx = pool.begin().await?;
    sqlx::query("delete from segment_snapshot_members where snapshot_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from segment_snapshots where state = 'too_large' and id <> $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "update segment_snapshots set state = 'too_large', finished_at = clock_timestamp(), members = $2, calls = $3
         where id = $1",
    )
    .bind(id)
    .bind(seen as i64)
    .bind(calls)
    .execute(&mut *tx)
    .await?;
    release(&mut tx, holder).await?;
    tx.commit().await?;
    Ok(())
}

/// After a failure: deletes the partial snapshot and releases the lease. If that fails too, the
/// lease expires and the next taker deletes the partial rows.
async fn discard(pool: &PgPool, id: Option<i64>, holder: Uuid) {
    let r = async {
        let mut tx = pool.begin().await?;
        if let Some(id) = id {
            sqlx::query("delete from segment_snapshots where id = $1 and state = 'writing'")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        release(&mut tx, holder).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = r {
        tracing::warn!("could not clean up the failed membership snapshot ({e}); its lease expires");
    }
}
