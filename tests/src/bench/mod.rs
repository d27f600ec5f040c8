//! The benchmark harness (issue 6): `deploy/local/bench.sh` runs it against the machine's real
//! PostgreSQL and RabbitMQ, with the release binaries and the in-process Customer.io simulator.
//!
//! 1. ingress: accepted webhooks/s and p50/p99 at N connections, beside the broker's own ceiling
//!    (confirmed, persistent, mandatory publishes of the same command, same queue kind, same
//!    concurrency), in alternating rounds so that both see the same shared machine; and the
//!    ingress's CPU time per webhook;
//! 2. worker, simulator unthrottled: `update` syncs/s over distinct contacts with 2 workers;
//! 3. worker, simulator at 10 req/s: time to drain a burst of `update` webhooks over 20 segments,
//!    App API calls spent and 429s seen, with 4 workers;
//! 4. peak RSS of the ingress and of each worker during these runs.

pub mod load;
pub mod report;
mod world;

use std::time::{Duration, Instant};

use shared::{command::Action, publisher::Publisher};

use crate::{
    env::ACCESS_KEY,
    procs::{free_port, worker_env, Proc},
    sim::SimConfig,
    TestEnv,
};
use report::{ms, peak_rss_mb, percentile};

/// The ingress run and the broker's ceiling alternate in this many rounds.
const INGRESS_ROUNDS: usize = 4;

#[derive(Debug, Clone)]
pub struct Options {
    pub requests: usize,
    pub connections: usize,
    pub contacts: usize,
    pub segments: i64,
    pub skip_ingress: bool,
    pub skip_unthrottled: bool,
    pub skip_throttled: bool,
}

/// Starts the release ingress against `env`; returns the process and its public URL.
async fn start_ingress(env: &TestEnv) -> (Proc, String) {
    let (port, admin_port) = (free_port(), free_port());
    let p = Proc::spawn(
        "ingress",
        &[],
        &[
            ("ACCESS_KEYS", ACCESS_KEY.to_string()),
            ("INGRESS_ADDR", format!("127.0.0.1:{port}")),
            ("INGRESS_ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
            ("AMQP_URL", crate::env::amqp_url()),
            ("AMQP_NAMESPACE", env.namespace.clone()),
            ("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())),
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    crate::wait_until("the ingress to be ready", Duration::from_secs(30), || {
        let (c, u) = (c.clone(), format!("http://127.0.0.1:{admin_port}/readyz"));
        async move { c.get(u).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    (p, url)
}

fn start_workers(env: &TestEnv, n: usize, rate: &str) -> Vec<Proc> {
    (0..n)
        .map(|_| {
            let mut vars = worker_env(env);
            vars.push(("CIO_APP_RATE_LIMIT", rate.to_string()));
            vars.push(("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())));
            Proc::spawn("worker", &["run"], &vars)
        })
        .collect()
}

async fn finished(env: &TestEnv) -> i64 {
    sqlx::query_scalar("select count(*) from webhook_events where status not in ('processing', 'retrying')")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Waits (bounded) until `n` events finished; returns when the last one did.
async fn drain(env: &TestEnv, n: usize, limit: Duration) -> Instant {
    crate::wait_until(&format!("{n} events to finish"), limit, || async {
        (finished(env).await >= n as i64).then_some(())
    })
    .await;
    Instant::now()
}

/// App API calls answered, by endpoint (ids folded into `{id}`), most frequent first.
fn calls_by_endpoint(env: &TestEnv) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in env.simh.requests() {
        if r.api != crate::sim::Api::App || r.status == 0 {
            continue;
        }
        let path: Vec<&str> = r
            .path
            .split('/')
            .enumerate()
            .map(|(i, part)| match (i, part) {
                // /v1/customers/{id}/… and /v1/segments/{id}/…
                (3, p) if p != "attributes" => "{id}",
                (_, p) => p,
            })
            .collect();
        *counts.entry(format!("{} {}", r.method, path.join("/"))).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
        .iter()
        .map(|(e, n)| format!("{n} {e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rss(p: &Proc) -> f64 {
    peak_rss_mb(p.child.id()).unwrap_or(f64::NAN)
}

pub struct Report {
    lines: Vec<String>,
    targets: Vec<(String, bool)>,
}

impl Report {
    fn line(&mut self, s: String) {
        println!("{s}");
        self.lines.push(s);
    }
    fn target(&mut self, what: String, met: bool) {
        println!("  target {}: {what}", if met { "met" } else { "NOT MET" });
        self.targets.push((what, met));
    }
}

pub async fn run(o: Options) -> Report {
    let mut r = Report {
        lines: Vec::new(),
        targets: Vec::new(),
    };
    r.line(format!("machine: {}", report::machine()));
    let mut ingress_rss = 0f64;
    let mut worker_rss = 0f64;

    if !o.skip_ingress {
        let env = TestEnv::new().await;
        let (mut ingress, url) = start_ingress(&env).await;
        let pid = ingress.child.id();
        // The pid lets a profiler attach (`perf record -g -p PID`) during the measured run.
        r.line(format!("ingress pid {pid}"));
        // The broker's ceiling for the same work: the same command, published persistent,
        // mandatory and confirmed by this process, on a fresh namespace.
        let env2 = TestEnv::new().await;
        let publisher = Publisher::new(&env2.amqp(), "cio-bench ceiling");
        // Warm up connections and the broker channels.
        load::webhooks(&url, ACCESS_KEY, "update", 500, o.connections, |i| {
            format!("warm{i}@bench.example.com")
        })
        .await;
        load::publishes(&publisher, 500, o.connections, |i| {
            load::command(Action::Update, format!("warm{i}@bench.example.com"))
        })
        .await;
        // Rounds alternate between the two, so that both see the same shared machine.
        let per_round = o.requests.div_ceil(INGRESS_ROUNDS);
        let (mut runs, mut ceilings, mut cpu, mut loader_cpu) = (Vec::new(), Vec::new(), Some(0.0), Some(0.0));
        for base in (0..o.requests).step_by(per_round.max(1)) {
            let n = per_round.min(o.requests - base);
            let before = report::cpu_seconds(pid);
            let loader_before = report::cpu_seconds(std::process::id());
            runs.push(
                load::webhooks(&url, ACCESS_KEY, "update", n, o.connections, move |i| {
                    format!("contact{}@bench.example.com", base + i)
                })
                .await,
            );
            let add = |total: Option<f64>, before: Option<f64>, after: Option<f64>| Some(total? + after? - before?);
            cpu = add(cpu, before, report::cpu_seconds(pid));
            loader_cpu = add(loader_cpu, loader_before, report::cpu_seconds(std::process::id()));
            ceilings.push(
                load::publishes(&publisher, n, o.connections, move |i| {
                    load::command(Action::Update, format!("contact{}@bench.example.com", base + i))
                })
                .await,
            );
        }
        let (run, ceiling) = (load::Run::merge(runs), load::Run::merge(ceilings));
        ingress_rss = ingress_rss.max(rss(&ingress));
        let p50 = percentile(&run.latencies, 50.0);
        let p99 = percentile(&run.latencies, 99.0);
        r.line(format!(
            "ingress: {} webhooks at {} connections ({INGRESS_ROUNDS} rounds alternating with the ceiling): {:.0} accepted/s, p50 {}, p99 {}, {} refused",
            run.count,
            o.connections,
            run.per_second(),
            ms(p50),
            ms(p99),
            run.failures
        ));
        // CPU per webhook is what the ingress takes from the broker on a shared machine, and
        // unlike throughput it hardly depends on what else the machine is doing.
        if let (Some(c), Some(l)) = (cpu, loader_cpu) {
            r.line(format!(
                "ingress CPU: {c:.2} s for {} webhooks, {:.0} µs per webhook (the load generator: {:.0} µs)",
                run.count,
                c * 1e6 / run.count as f64,
                l * 1e6 / run.count as f64
            ));
        }
        ingress.terminate(Duration::from_secs(10));
        r.line(format!(
            "broker ceiling: {} confirmed persistent mandatory publishes at {} in flight: {:.0}/s, p50 {}, p99 {}",
            ceiling.count,
            o.connections,
            ceiling.per_second(),
            ms(percentile(&ceiling.latencies, 50.0)),
            ms(percentile(&ceiling.latencies, 99.0))
        ));
        let share = run.per_second() / ceiling.per_second();
        r.target(
            format!("ingress at {:.0}% of the broker's ceiling (≥ 60%)", share * 100.0),
            share >= 0.6,
        );
        r.target(
            format!("ingress p99 {} (≤ 10 ms)", ms(p99)),
            p99 <= Duration::from_millis(10),
        );
        r.target(
            format!("{} ingress answers other than 200 (zero)", run.failures),
            run.failures == 0,
        );
    }

    if !o.skip_unthrottled {
        let env = TestEnv::with_sim(SimConfig {
            app_rate_limit: None,
            ..Default::default()
        })
        .await;
        world::seed(&env, o.contacts, o.segments).await;
        let publisher = Publisher::new(&env.amqp(), "cio-bench loader");
        load::publishes(&publisher, o.contacts, o.connections, |i| {
            load::command(Action::Update, world::email(i))
        })
        .await;
        env.simh.reset_log();
        let started = Instant::now();
        let workers = start_workers(&env, 2, "1000000");
        let done = drain(&env, o.contacts, Duration::from_secs(600)).await;
        let secs = (done - started).as_secs_f64();
        let rate = o.contacts as f64 / secs;
        for w in &workers {
            worker_rss = worker_rss.max(rss(w));
        }
        let ok = world::succeeded(&env).await;
        r.line(format!(
            "worker, simulator unthrottled: {} update syncs of distinct contacts with 2 workers in {secs:.1} s: {rate:.0} syncs/s ({ok} succeeded), {} App API calls",
            o.contacts,
            env.simh.app_request_count()
        ));
        r.line(format!("  calls: {}", calls_by_endpoint(&env)));
        r.target(
            format!("{rate:.0} syncs/s unthrottled with 2 workers (≥ 1,000/s)"),
            rate >= 1000.0,
        );
        for mut w in workers {
            w.terminate(Duration::from_secs(30));
        }
    }

    if !o.skip_throttled {
        let env = TestEnv::with_sim(SimConfig {
            app_rate_limit: Some(10),
            ..Default::default()
        })
        .await;
        world::seed(&env, o.contacts, o.segments).await;
        let (mut ingress, url) = start_ingress(&env).await;
        env.simh.reset_log();
        let workers = start_workers(&env, 4, "10");
        let started = Instant::now();
        let sent = load::webhooks(&url, ACCESS_KEY, "update", o.contacts, o.connections, world::email).await;
        let ingested = started.elapsed();
        let done = drain(&env, o.contacts - sent.failures, Duration::from_secs(900)).await;
        let secs = (done - started).as_secs_f64();
        for w in &workers {
            worker_rss = worker_rss.max(rss(w));
        }
        ingress_rss = ingress_rss.max(rss(&ingress));
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
        ingress.terminate(Duration::from_secs(10));
        for mut w in workers {
            w.terminate(Duration::from_secs(30));
        }
    }

    if ingress_rss > 0.0 {
        r.target(
            format!("ingress peak RSS {ingress_rss:.1} MB (≤ 64 MB)"),
            ingress_rss <= 64.0,
        );
    }
    if worker_rss > 0.0 {
        r.target(
            format!("worker peak RSS {worker_rss:.1} MB (≤ 128 MB)"),
            worker_rss <= 128.0,
        );
    }
    r
}

impl Report {
    /// True when every measured target was met.
    pub fn all_met(&self) -> bool {
        self.targets.iter().all(|(_, m)| *m)
    }
}
