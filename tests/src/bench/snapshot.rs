//! Step 5: a membership snapshot of a large workspace. A backlog of `update` commands arrives in
//! full batches, so the first batch takes a snapshot of every segment (500,000 memberships by
//! default, paged 30,000 at a time) and every batch reads its contacts' memberships back from it.
//! Prints how long the snapshot took, what it cost, and each worker's peak RSS.

use std::time::{Duration, Instant};

use shared::{command::Action, publisher::Publisher};

use super::{calls_by_endpoint, drain, load, start_workers, stop, world, Options, Report};
use crate::{sim::SimConfig, TestEnv};

pub async fn run(o: &Options, r: &mut Report) {
    let env = TestEnv::with_sim(SimConfig {
        app_rate_limit: None,
        ..Default::default()
    })
    .await;
    // Everyone is in segment 1 (a large segment of many pages); segments 2.. share them out.
    let people = o.snapshot_members / 2;
    let seeded = Instant::now();
    world::add_segments(&env, o.segments);
    for i in 0..people {
        let e = world::email(i);
        world::add_person(&env, i, &e);
        env.simh.add_to_segment(1, &e);
        env.simh.add_to_segment(2 + (i as i64 % (o.segments - 1)), &e);
    }
    let seeded = seeded.elapsed();
    let updates = o.snapshot_updates.min(people);
    world::users(&env, updates).await;
    let publisher = Publisher::new(&env.amqp(), "cio-bench loader");
    load::publishes(&publisher, updates, o.connections, |i| {
        load::command(Action::Update, world::email(i))
    })
    .await;
    // A backlog has waited in the queue: a snapshot serves only webhooks received at least the
    // clock-skew margin (500 ms) before it was taken, so one taken sooner would not serve the
    // last of them and a second snapshot would be taken for those.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.simh.reset_log();
    let started = Instant::now();
    let limit = (2 * o.snapshot_members).max(1_000_000);
    let workers = start_workers(&env, 2, "1000000", &[("SNAPSHOT_MAX_MEMBERS", limit.to_string())]);
    let done = drain(&env, updates, Duration::from_secs(900)).await;
    let secs = (done - started).as_secs_f64();

    let snaps: Vec<(i64, i32, f64)> = sqlx::query_as(
        "select members, calls, extract(epoch from finished_at - taken_at)::float8
         from segment_snapshots where state = 'complete' order by taken_at",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let bytes = env
        .count("select pg_total_relation_size('segment_snapshot_members')")
        .await;
    let rows = env.count("select count(*) from segment_snapshot_members").await;
    let segments_written = env.count("select count(*) from user_segments").await;
    let unknown = env
        .count("select count(*) from event_log where message like '%Unknown Segment%'")
        .await;
    let ok = world::succeeded(&env).await;
    r.line(format!(
        "worker, snapshot of a large workspace: {people} people, {} memberships in {} segments (simulator seeded in {:.1} s); {updates} update commands with 2 workers, SNAPSHOT_MAX_MEMBERS={limit}: drained in {secs:.1} s ({ok} succeeded)",
        2 * people,
        o.segments,
        seeded.as_secs_f64()
    ));
    for (members, calls, took) in &snaps {
        r.line(format!(
            "  snapshot: {members} memberships, {calls} App API calls, taken in {took:.1} s"
        ));
    }
    r.line(format!(
        "  stored: {rows} membership rows in {:.0} MB ({:.0} bytes a membership with its indexes)",
        bytes as f64 / 1e6,
        bytes as f64 / rows.max(1) as f64
    ));
    r.line(format!("  calls: {}", calls_by_endpoint(&env)));
    r.target(
        format!(
            "{} complete snapshot(s) of {} memberships taken for the backlog (exactly one)",
            snaps.len(),
            2 * people
        ),
        snaps.len() == 1 && snaps[0].0 == 2 * people as i64,
    );
    r.target(
        format!(
            "{segments_written} segment memberships synced for {updates} contacts (2 each), {unknown} unnamed segments logged (none)"
        ),
        segments_written == 2 * updates as i64 && unknown == 0 && ok == updates as i64,
    );
    r.workers_rss(&format!("snapshot of {} memberships", 2 * people), &workers);
    stop(workers);
}
