//! The benchmark harness: `deploy/local/bench.sh` runs it against the machine's real PostgreSQL and
//! RabbitMQ, with the release binaries and the in-process Customer.io simulator. Each step can be
//! skipped, starts its own processes (so that each peak RSS belongs to one step) and prints its
//! figures beside their targets:
//!
//! 1. ingress: accepted webhooks/s and p50/p99 driven by wrk at each of a few concurrency levels, beside the broker's own ceiling
//!    (confirmed, persistent, mandatory publishes of the same command, same queue kind, same
//!    concurrency), in alternating rounds so that both see the same shared machine; and the
//!    ingress's CPU time per webhook;
//! 2. worker, simulator unthrottled: `update` syncs/s over distinct contacts with 2 workers, beside
//!    the figure of the pipeline it replaced;
//! 3. worker, simulator at 10 req/s: time to drain a burst of `update` webhooks over 20 segments,
//!    App API calls spent and 429s seen, with 4 workers;
//! 4. worker, simulator unthrottled: a burst of `add`s for new contacts with the password return on,
//!    2 workers: new users/s, one user and one password return per contact;
//! 5. worker: a membership snapshot of a large workspace (500,000 memberships) taken for a backlog
//!    of `update`s, 2 workers: how long it took;
//!
//! and the peak RSS of every ingress and worker process, per step.

mod adds;
mod ingress;
pub mod load;
pub mod report;
mod snapshot;
mod updates;
mod world;
mod wrk;

use std::time::{Duration, Instant};

use crate::{
    env::ACCESS_KEY,
    procs::{ingress_env, worker_env, Proc},
    TestEnv,
};
use report::{peak_rss_mb, peak_rss_mib};

#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds of wrk load in the ingress step, over all rounds.
    pub ingress_seconds: u64,
    /// The concurrency levels of the ingress step, each measured against the ceiling.
    pub ingress_connections: Vec<usize>,
    pub connections: usize,
    pub contacts: usize,
    pub segments: i64,
    pub adds: usize,
    pub snapshot_members: usize,
    pub snapshot_updates: usize,
    pub skip_ingress: bool,
    pub skip_unthrottled: bool,
    pub skip_throttled: bool,
    pub skip_add_burst: bool,
    pub skip_snapshot: bool,
}

/// Worker peak RSS target in every step, MiB.
const WORKER_RSS_MIB: f64 = 128.0;
/// Ingress peak RSS target, MB.
const INGRESS_RSS_MB: f64 = 64.0;

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

    /// True when every measured target was met.
    pub fn all_met(&self) -> bool {
        self.targets.iter().all(|(_, m)| *m)
    }

    /// Each worker's peak RSS (VmHWM over the process's life, which is this step's) against the target.
    fn workers_rss(&mut self, step: &str, workers: &[Proc]) {
        let each: Vec<f64> = workers
            .iter()
            .map(|w| peak_rss_mib(w.child.id()).unwrap_or(f64::NAN))
            .collect();
        let text = each.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(", ");
        self.target(
            format!("{step}: worker peak RSS {text} MiB (≤ {WORKER_RSS_MIB} MiB each)"),
            each.iter().all(|m| *m <= WORKER_RSS_MIB),
        );
    }

    fn ingress_rss(&mut self, step: &str, ingress: &Proc) {
        let mb = peak_rss_mb(ingress.child.id()).unwrap_or(f64::NAN);
        self.target(
            format!("{step}: ingress peak RSS {mb:.1} MB (≤ {INGRESS_RSS_MB} MB)"),
            mb <= INGRESS_RSS_MB,
        );
    }
}

pub async fn run(o: Options) -> Report {
    let mut r = Report {
        lines: Vec::new(),
        targets: Vec::new(),
    };
    r.line(format!("machine: {}", report::machine()));
    if !o.skip_ingress {
        ingress::run(&o, &mut r).await;
    }
    if !o.skip_unthrottled {
        updates::unthrottled(&o, &mut r).await;
    }
    if !o.skip_throttled {
        updates::throttled(&o, &mut r).await;
    }
    if !o.skip_add_burst {
        adds::run(&o, &mut r).await;
    }
    if !o.skip_snapshot {
        snapshot::run(&o, &mut r).await;
    }
    r
}

/// Starts the release ingress against `env`; returns the process and its public URL.
async fn start_ingress(env: &TestEnv) -> (Proc, String) {
    let (mut vars, port, admin_port) = ingress_env(ACCESS_KEY, &env.namespace);
    vars.push(("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())));
    let p = Proc::spawn("ingress", &[], &vars);
    let url = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    crate::wait_until("the ingress to be ready", Duration::from_secs(30), || {
        let (c, u) = (c.clone(), format!("http://127.0.0.1:{admin_port}/readyz"));
        async move { c.get(u).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    (p, url)
}

/// Starts `n` release workers at App API `rate` requests/s, with `extra` settings.
fn start_workers(env: &TestEnv, n: usize, rate: &str, extra: &[(&'static str, String)]) -> Vec<Proc> {
    (0..n)
        .map(|_| {
            let mut vars = worker_env(env);
            vars.push(("CIO_APP_RATE_LIMIT", rate.to_string()));
            vars.push(("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())));
            vars.extend(extra.iter().cloned());
            Proc::spawn("worker", &["run"], &vars)
        })
        .collect()
}

fn stop(procs: Vec<Proc>) {
    for mut p in procs {
        p.terminate(Duration::from_secs(30));
    }
}

async fn finished(env: &TestEnv) -> i64 {
    env.count("select count(*) from webhook_events where status not in ('processing', 'retrying')")
        .await
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
