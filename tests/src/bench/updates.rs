//! Steps 2 and 3: `update` syncs of distinct contacts with the simulator unthrottled (syncs/s), and
//! a burst of `update` webhooks drained at Customer.io's 10 requests/s.

use std::time::{Duration, Instant};

use shared::{command::Action, publisher::Publisher};

use super::{calls_by_endpoint, drain, load, start_ingress, start_workers, stop, world, Options, Report};
use crate::{env::ACCESS_KEY, sim::SimConfig, TestEnv};

/// The unthrottled step's `update` syncs/s on the pipeline before the set-based one (commit 48fe9e9,
/// one sync per transaction): that commit's release build, `cio-bench --skip-ingress
/// --skip-throttled` (10,000 contacts over 20 segments, 2 workers), on the development machine
/// (2 cores, shared with other builds: load average 9–14). Median of five runs, which gave 330,
/// 522, 561, 615 and 656 syncs/s. Printed beside today's figure from the same setup.
const BASELINE_SYNCS_PER_SEC: f64 = 561.0;

pub async fn unthrottled(o: &Options, r: &mut Report) {
    let env = TestEnv::with_sim(SimConfig {
        app_rate_limit: None,
        ..Default::default()
    })
    .await;
    world::people(&env, o.contacts, o.segments, world::email);
    world::users(&env, o.contacts).await;
    let publisher = Publisher::new(&env.amqp(), "cio-bench loader");
    load::publishes(&publisher, o.contacts, o.connections, |i| {
        load::command(Action::Update, world::email(i))
    })
    .await;
    env.simh.reset_log();
    let started = Instant::now();
    let workers = start_workers(&env, 2, "1000000", &[]);
    let done = drain(&env, o.contacts, Duration::from_secs(600)).await;
    let secs = (done - started).as_secs_f64();
    let rate = o.contacts as f64 / secs;
    let ok = world::succeeded(&env).await;
    r.line(format!(
        "worker, simulator unthrottled: {} update syncs of distinct contacts with 2 workers in {secs:.1} s: {rate:.0} syncs/s ({ok} succeeded), {} App API calls; before the set-based pipeline: {BASELINE_SYNCS_PER_SEC:.0} syncs/s",
        o.contacts,
        env.simh.app_request_count()
    ));
    r.line(format!("  calls: {}", calls_by_endpoint(&env)));
    r.target(
        format!("{rate:.0} syncs/s unthrottled with 2 workers (≥ 1,000/s; {BASELINE_SYNCS_PER_SEC:.0}/s before)"),
        rate >= 1000.0,
    );
    r.workers_rss("unthrottled updates", &workers);
    stop(workers);
}

pub async fn throttled(o: &Options, r: &mut Report) {
    let env = TestEnv::with_sim(SimConfig {
        app_rate_limit: Some(10),
        ..Default::default()
    })
    .await;
    world::people(&env, o.contacts, o.segments, world::email);
    world::users(&env, o.contacts).await;
    let (mut ingress, url) = start_ingress(&env).await;
    env.simh.reset_log();
    let workers = start_workers(&env, 4, "10", &[]);
    let started = Instant::now();
    let sent = load::webhooks(&url, ACCESS_KEY, "update", o.contacts, o.connections, world::email).await;
    let ingested = started.elapsed();
    let done = drain(&env, o.contacts - sent.failures, Duration::from_secs(900)).await;
    let secs = (done - started).as_secs_f64();
    let calls = env.simh.app_request_count();
    let throttled = env.simh.count_status(429);
    let ok = world::succeeded(&env).await;
    r.line(format!(
        "worker, simulator at 10 req/s: burst of {} update webhooks ({} segments) with 4 workers: ingested in {:.1} s, drained in {secs:.1} s ({ok} succeeded), {calls} App API calls, {throttled} × 429",
        o.contacts, o.segments, ingested.as_secs_f64()
    ));
    r.line(format!("  calls: {}", calls_by_endpoint(&env)));
    r.target(format!("burst drained in {secs:.1} s (≤ 30 s)"), secs <= 30.0);
    r.target(format!("{throttled} × 429 from the simulator (zero)"), throttled == 0);
    r.ingress_rss("throttled burst", &ingress);
    r.workers_rss("throttled burst", &workers);
    ingress.terminate(Duration::from_secs(10));
    stop(workers);
}
