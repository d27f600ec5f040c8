//! Segment membership snapshots: stored page by page and read back per contact, taken once for all
//! workers under a renewed lease, skipped for a workspace over the size limit, and never left
//! half-written.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use testkit::{
    sim::{Api, Fault, FaultKind, SimConfig},
    TestEnv,
};
use uuid::Uuid;
use worker::{
    cio::CioClient,
    sync::snapshot::{Snapshot, SnapshotSettings, Snapshots},
};

/// Segments 1 VIP, 2 Trial, 3 Newsletter holding 7 memberships of 5 people; returns the cio_ids
/// of jane and john.
fn seed(env: &TestEnv) -> (String, String) {
    let jane = env.simh.add_person("jane@example.com", json!({}));
    let john = env.simh.add_person("john@example.com", json!({}));
    for e in ["Ana@Example.com", "li@example.org", "sam@example.net"] {
        env.simh.add_person(e, json!({}));
    }
    env.simh.add_segment(1, "VIP", "manual");
    env.simh.add_segment(2, "Trial", "dynamic");
    env.simh.add_segment(3, "Newsletter", "manual");
    for (seg, email) in [
        (1, "jane@example.com"),
        (1, "li@example.org"),
        (2, "john@example.com"),
        (2, "sam@example.net"),
        (3, "jane@example.com"),
        (3, "Ana@Example.com"),
        (3, "sam@example.net"),
    ] {
        env.simh.add_to_segment(seg, email);
    }
    (jane, john)
}

async fn unthrottled() -> (TestEnv, CioClient) {
    let env = TestEnv::with_sim(SimConfig {
        app_rate_limit: None,
        ..Default::default()
    })
    .await;
    let mut s = env.worker_settings();
    s.app_rate_limit = 10_000.0;
    let cio = env.worker(s).await.ctx.cio.clone();
    (env, cio)
}

/// Pages of 2, so that a segment can take several calls; a short lease.
fn settings(max_members: usize) -> SnapshotSettings {
    SnapshotSettings {
        max_members,
        lease: Duration::from_secs(1),
        max_wait: Duration::from_secs(30),
        page_size: 2,
    }
}

/// Membership pages requested so far.
fn membership_calls(env: &TestEnv) -> usize {
    env.simh
        .requests()
        .iter()
        .filter(|r| r.api == Api::App && r.path.ends_with("/membership"))
        .count()
}

/// (complete, writing, too_large) snapshots, member rows, leases.
async fn tables(env: &TestEnv) -> (i64, i64, i64, i64, i64) {
    (
        env.count("select count(*) from segment_snapshots where state = 'complete'")
            .await,
        env.count("select count(*) from segment_snapshots where state = 'writing'")
            .await,
        env.count("select count(*) from segment_snapshots where state = 'too_large'")
            .await,
        env.count("select count(*) from segment_snapshot_members").await,
        env.count("select count(*) from snapshot_leases").await,
    )
}

fn received() -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(1)
}

/// Another worker (`holder`) starts taking a snapshot; returns once it holds the lease, with the
/// task that ends with its snapshot (and fails if taking it failed).
async fn start_holding(
    env: &TestEnv,
    cio: &CioClient,
    holder: Snapshots,
    at: chrono::DateTime<Utc>,
) -> tokio::task::JoinHandle<Option<Snapshot>> {
    let task = tokio::spawn({
        let (pool, cio) = (env.pool.clone(), cio.clone());
        async move { holder.fresh(&pool, &cio, at).await.unwrap() }
    });
    testkit::wait_until(
        "the other worker to hold the lease",
        Duration::from_secs(10),
        || async { (env.count("select count(*) from snapshot_leases").await == 1).then_some(()) },
    )
    .await;
    task
}

#[tokio::test(flavor = "multi_thread")]
async fn memberships_are_read_back_for_the_asked_contacts_by_cio_id_or_email() {
    let (env, cio) = unthrottled().await;
    let (_, john) = seed(&env);
    let snaps = Snapshots::with_settings(settings(1000));
    let at = received();
    assert!(
        !snaps.known_fresh(at).await,
        "nothing is known before the first snapshot"
    );
    let snap = snaps.fresh(&env.pool, &cio, at).await.unwrap().expect("a snapshot");
    assert_eq!(snap.members, 7);
    assert_eq!(
        (snap.name(1), snap.name(2), snap.name(3), snap.name(4)),
        (Some("VIP"), Some("Trial"), Some("Newsletter"), None)
    );
    // 1 catalogue + pages of 2: VIP 1, Trial 1, Newsletter 2.
    assert_eq!((snap.calls, membership_calls(&env)), (5, 4));
    assert!(snaps.known_fresh(at).await);
    assert!(!snaps.known_fresh(Utc::now() + chrono::Duration::hours(1)).await);

    let sets = snap
        .memberships(
            &env.pool,
            &[
                (None, "JANE@example.com"),
                // By cio_id, though the e-mail differs (changed since).
                (Some(john.as_str()), "john.renamed@example.com"),
                (None, "nobody@example.com"),
                // An unknown cio_id: found by the e-mail, stored lower-cased.
                (Some("no-such-cio-id"), "ana@example.COM"),
                (None, "sam@example.net"),
            ],
        )
        .await
        .unwrap();
    let ids = |v: &[i64]| v.iter().copied().collect::<std::collections::BTreeSet<i64>>();
    assert_eq!(sets, vec![ids(&[1, 3]), ids(&[2]), ids(&[]), ids(&[3]), ids(&[2, 3])]);
    assert!(snap.memberships(&env.pool, &[]).await.unwrap().is_empty());
    assert_eq!(tables(&env).await, (1, 0, 0, 7, 0), "complete, lease released");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_asking_at_once_take_one_snapshot() {
    let (env, cio) = unthrottled().await;
    seed(&env);
    // A lease long enough that only the race between the two can make a second snapshot.
    let long_lease = || SnapshotSettings {
        lease: Duration::from_secs(30),
        ..settings(1000)
    };
    let (a, b) = (
        Snapshots::with_settings(long_lease()),
        Snapshots::with_settings(long_lease()),
    );
    let at = received();
    let (x, y) = tokio::join!(a.fresh(&env.pool, &cio, at), b.fresh(&env.pool, &cio, at));
    let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
    assert_eq!(x.id, y.id);
    assert_eq!(membership_calls(&env), 4, "one snapshot's pages");
    // Both know it now; asking again costs no call.
    assert!(a.known_fresh(at).await && b.known_fresh(at).await);
    let again = b.fresh(&env.pool, &cio, at).await.unwrap().unwrap();
    assert_eq!((again.id, membership_calls(&env)), (x.id, 4));
    // A webhook received after it needs a new one; the older is kept beside it.
    let later = a.fresh(&env.pool, &cio, Utc::now()).await.unwrap().unwrap();
    assert!(later.id > x.id && later.taken_at >= x.taken_at);
    assert_eq!(tables(&env).await, (2, 0, 0, 14, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_renews_its_lease_keeps_the_others_waiting_past_its_length() {
    let (env, cio) = unthrottled().await;
    seed(&env);
    // Each page takes 800 ms: the snapshot takes over 3 s, three times the 1 s lease.
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Delay(Duration::from_millis(800))).with_path("/membership"));
    let (a, b) = (
        Snapshots::with_settings(settings(1000)),
        Snapshots::with_settings(settings(1000)),
    );
    let at = received();
    let holder = start_holding(&env, &cio, a, at).await;
    let waited = std::time::Instant::now();
    let got = b.fresh(&env.pool, &cio, at).await.unwrap().unwrap();
    let waited = waited.elapsed();
    let taken = holder.await.unwrap().unwrap();
    assert_eq!(got.id, taken.id, "the waiting worker got the holder's snapshot");
    assert_eq!(membership_calls(&env), 4, "and took none itself");
    assert!(
        waited > settings(0).lease * 2,
        "it waited {waited:?}, past the lease, because the holder renewed it"
    );
    assert_eq!(tables(&env).await, (1, 0, 0, 7, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_taken_over_and_its_partial_snapshot_removed() {
    let (env, cio) = unthrottled().await;
    seed(&env);
    // A worker died while writing: its lease runs out in 800 ms and is never renewed.
    let dead: (chrono::DateTime<Utc>,) = sqlx::query_as(
        "insert into snapshot_leases (key, holder, taken_at, expires_at)
         values ('segment-membership', $1, clock_timestamp(), clock_timestamp() + interval '800 milliseconds')
         returning expires_at",
    )
    .bind(Uuid::new_v4())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "with s as (insert into segment_snapshots (state, taken_at) values ('writing', now()) returning id)
         insert into segment_snapshot_members (snapshot_id, segment_id, cio_id, email)
         select id, 9, 'x' || i, 'x' || i || '@example.com' from s, generate_series(1, 5) i",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let snaps = Snapshots::with_settings(settings(1000));
    let snap = snaps.fresh(&env.pool, &cio, received()).await.unwrap().unwrap();
    assert!(snap.taken_at >= dead.0, "taken over once the lease had expired");
    assert_eq!(tables(&env).await, (1, 0, 0, 7, 0), "the partial rows are gone");
    let sets = snap.memberships(&env.pool, &[(None, "x1@example.com")]).await.unwrap();
    assert!(sets[0].is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_over_the_limit_gets_no_snapshot_and_is_remembered() {
    let (env, cio) = unthrottled().await;
    seed(&env);
    let small = Snapshots::with_settings(settings(4));
    assert!(small.fresh(&env.pool, &cio, received()).await.unwrap().is_none());
    assert_eq!(
        tables(&env).await,
        (0, 0, 1, 0, 0),
        "no complete snapshot and no members kept"
    );
    let calls = membership_calls(&env);
    assert!(calls >= 2, "it stopped once the pages seen passed the limit");
    assert!(!small.known_fresh(received()).await);
    // Remembered, also by another worker: no further call.
    let other = Snapshots::with_settings(settings(4));
    assert!(small.fresh(&env.pool, &cio, Utc::now()).await.unwrap().is_none());
    assert!(other.fresh(&env.pool, &cio, Utc::now()).await.unwrap().is_none());
    assert_eq!(membership_calls(&env), calls);
    // A worker allowed more takes one, which replaces the verdict.
    let large = Snapshots::with_settings(settings(100));
    let snap = large.fresh(&env.pool, &cio, Utc::now()).await.unwrap().unwrap();
    assert_eq!(snap.members, 7);
    assert_eq!(tables(&env).await, (1, 0, 0, 7, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_midway_leaves_no_partial_snapshot() {
    let (env, cio) = unthrottled().await;
    seed(&env);
    // VIP and Trial are stored, then the Newsletter's first page fails.
    env.simh.inject(
        Fault::new(Api::App, FaultKind::Status(500))
            .with_path("/segments/3/membership")
            .with_times(1),
    );
    let snaps = Snapshots::with_settings(settings(1000));
    let err = snaps.fresh(&env.pool, &cio, received()).await.unwrap_err();
    assert!(matches!(err, worker::sync::Failure::Transient { .. }), "{err:?}");
    assert_eq!(membership_calls(&env), 3);
    assert_eq!(
        tables(&env).await,
        (0, 0, 0, 0, 0),
        "nothing left behind, lease released"
    );
    assert!(!snaps.known_fresh(received()).await);
    // The next attempt takes it at once (no lease to wait for).
    let t = std::time::Instant::now();
    let snap = snaps.fresh(&env.pool, &cio, received()).await.unwrap().unwrap();
    assert!(t.elapsed() < settings(0).lease, "no wait for a released lease");
    assert_eq!(snap.members, 7);
    assert_eq!(tables(&env).await, (1, 0, 0, 7, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_batched_path_names_the_segments_it_read_from_a_snapshot() {
    let mut env = TestEnv::new().await;
    seed(&env);
    let emails: Vec<String> = (0..30).map(|i| format!("member{i}@example.com")).collect();
    for (i, e) in emails.iter().enumerate() {
        env.simh.add_person(e, json!({"First Name": "M"}));
        env.simh.add_to_segment(1 + (i as i64 % 3), e);
    }
    sqlx::query(
        "insert into users (email, username, password_hash, role) select e, e, 'x', 'subscriber' from unnest($1::text[]) e",
    )
    .bind(&emails)
    .execute(&env.pool)
    .await
    .unwrap();
    let url = env.start_ingress().await;
    // A backlog: more contacts needing segments than a snapshot costs calls.
    let mut ids = Vec::new();
    for e in &emails {
        ids.push(testkit::send(&url, "wpf_action=update", e).await);
    }
    env.start_worker(env.worker_settings()).await;
    for id in &ids {
        assert_eq!(env.wait_final(id).await, "succeeded");
    }
    assert!(
        env.count("select count(*) from segment_snapshots where state = 'complete'")
            .await
            >= 1
    );
    let names = ["VIP", "Trial", "Newsletter"];
    for (i, id) in ids.iter().enumerate() {
        let log = env.event_log(id).await;
        let want = format!("Loaded segment(s): {}", names[i % 3]);
        assert!(log.iter().any(|l| l.starts_with(&want)), "{want} in {log:?}");
    }
    let segments = env
        .count("select count(*) from user_segments s join users u on u.id = s.user_id where u.email like 'member%'")
        .await;
    assert_eq!(segments, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_too_small_for_a_snapshot_uses_the_one_being_taken() {
    let (env, cio) = unthrottled().await;
    seed(&env);
    let (a, b) = (
        Snapshots::with_settings(settings(1000)),
        Snapshots::with_settings(settings(1000)),
    );
    let at = received();
    // None stored and none being taken: the batch reads per contact (no snapshot, no call).
    assert!(b.stored_or_coming(&env.pool, at).await.unwrap().is_none());
    assert_eq!(membership_calls(&env), 0);
    // Another worker is taking one (slowly): the small batch waits for it instead.
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Delay(Duration::from_millis(300))).with_path("/membership"));
    let holder = start_holding(&env, &cio, a, at).await;
    let got = b
        .stored_or_coming(&env.pool, at)
        .await
        .unwrap()
        .expect("the snapshot being taken");
    let taken = holder.await.unwrap().unwrap();
    assert_eq!(got.id, taken.id);
    assert_eq!(
        membership_calls(&env),
        4,
        "one snapshot's pages, taken by the other worker"
    );
    // Stored now: found at once, and it serves the batch's contacts.
    assert_eq!(
        b.stored_or_coming(&env.pool, at).await.unwrap().map(|s| s.id),
        Some(taken.id)
    );
}
