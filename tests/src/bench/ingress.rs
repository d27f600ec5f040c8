//! Step 1: the ingress's accepted webhooks/s and latency under wrk, at each concurrency level beside
//! the broker's own ceiling for the same publishes at the same number in flight, in alternating
//! rounds so that both see the same shared machine; and the CPU time the ingress spends per webhook.

use std::time::Duration;

use shared::{command::Action, publisher::Publisher};

use super::{
    load,
    report::{self, ms, percentile},
    start_ingress, wrk, Options, Report,
};
use crate::{env::ACCESS_KEY, TestEnv};

/// The ingress run and the broker's ceiling alternate in this many rounds.
const ROUNDS: usize = 4;

pub async fn run(o: &Options, r: &mut Report) {
    if !wrk::available() {
        r.target("the ingress step needs wrk (apt-get install wrk)".into(), false);
        return;
    }
    let env = TestEnv::new().await;
    let (mut ingress, url) = start_ingress(&env).await;
    let pid = ingress.child.id();
    // The pid lets a profiler attach (`perf record -g -p PID`) during the measured run.
    r.line(format!("ingress pid {pid}"));
    // The broker's ceiling for the same work: the same command, published persistent, mandatory
    // and confirmed by this process, on a fresh namespace.
    let env2 = TestEnv::new().await;
    let publisher = Publisher::new(&env2.amqp(), "cio-bench ceiling");
    for &connections in &o.ingress_connections {
        level(o, r, &url, pid, &publisher, connections).await;
    }
    r.ingress_rss("ingress", &ingress);
    ingress.terminate(Duration::from_secs(10));
}

/// One concurrency level: rounds of wrk load alternating with the broker's ceiling at the same
/// number in flight, and the targets judged on the pooled rounds.
async fn level(o: &Options, r: &mut Report, url: &str, pid: u32, publisher: &Publisher, connections: usize) {
    let webhooks = |tag: String, seconds: u64| {
        let url = url.to_string();
        async move {
            tokio::task::spawn_blocking(move || {
                wrk::webhooks(
                    &url,
                    ACCESS_KEY,
                    "update",
                    connections,
                    Duration::from_secs(seconds),
                    &tag,
                )
            })
            .await
            .expect("wrk")
        }
    };
    // Warm up the connections and the broker channels.
    webhooks(format!("w{connections}-"), 1).await;
    load::publishes(publisher, 500, connections, move |i| {
        load::command(Action::Update, format!("w{connections}-{i}@bench.example.com"))
    })
    .await;
    let (mut runs, mut ceilings, mut cpu) = (Vec::new(), Vec::new(), Some(0.0));
    let add = |total: Option<f64>, before: Option<f64>, after: Option<f64>| Some(total? + after? - before?);
    for round in 0..ROUNDS {
        let before = report::cpu_seconds(pid);
        let run = webhooks(
            format!("c{connections}r{round}-"),
            (o.ingress_seconds / ROUNDS as u64).max(1),
        )
        .await;
        cpu = add(cpu, before, report::cpu_seconds(pid));
        // The ceiling publishes as many commands as the ingress accepted in the round.
        let n = run.count;
        runs.push(run);
        ceilings.push(
            load::publishes(publisher, n, connections, move |i| {
                load::command(Action::Update, format!("p{connections}r{round}-{i}@bench.example.com"))
            })
            .await,
        );
    }
    let (run, ceiling) = (load::Run::merge(runs), load::Run::merge(ceilings));
    let p99 = percentile(&run.latencies, 99.0);
    r.line(format!(
        "ingress (wrk) at {connections} connections: {} webhooks in {ROUNDS} rounds alternating with the ceiling: {:.0} accepted/s, p50 {}, p99 {}, {} failed",
        run.count,
        run.per_second(),
        ms(percentile(&run.latencies, 50.0)),
        ms(p99),
        run.failures
    ));
    // CPU per webhook is what the ingress takes from the broker on a shared machine, and unlike
    // throughput it hardly depends on what else the machine is doing.
    if let Some(c) = cpu {
        r.line(format!(
            "ingress CPU at {connections} connections: {c:.2} s for {} webhooks, {:.0} µs per webhook",
            run.count,
            c * 1e6 / run.count as f64,
        ));
    }
    r.line(format!(
        "broker ceiling at {connections} in flight: {} confirmed persistent mandatory publishes: {:.0}/s, p50 {}, p99 {}",
        ceiling.count,
        ceiling.per_second(),
        ms(percentile(&ceiling.latencies, 50.0)),
        ms(percentile(&ceiling.latencies, 99.0))
    ));
    let share = run.per_second() / ceiling.per_second();
    r.target(
        format!(
            "{connections} connections: ingress at {:.0}% of the broker's ceiling (≥ 60%)",
            share * 100.0
        ),
        share >= 0.6,
    );
    r.target(
        format!("{connections} connections: ingress p99 {} (≤ 10 ms)", ms(p99)),
        p99 <= Duration::from_millis(10),
    );
    r.target(
        format!(
            "{connections} connections: every webhook answered 200 ({} failed)",
            run.failures
        ),
        run.failures == 0,
    );
}
