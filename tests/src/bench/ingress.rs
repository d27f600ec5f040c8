//! Step 1: the ingress's accepted webhooks/s and latency, beside the broker's own ceiling for the
//! same publishes, in alternating rounds so that both see the same shared machine; and the CPU time
//! the ingress spends per webhook.

use std::time::Duration;

use shared::{command::Action, publisher::Publisher};

use super::{
    load,
    report::{self, ms, percentile},
    start_ingress, Options, Report,
};
use crate::{env::ACCESS_KEY, TestEnv};

/// The ingress run and the broker's ceiling alternate in this many rounds.
const ROUNDS: usize = 4;

pub async fn run(o: &Options, r: &mut Report) {
    let env = TestEnv::new().await;
    let (mut ingress, url) = start_ingress(&env).await;
    let pid = ingress.child.id();
    // The pid lets a profiler attach (`perf record -g -p PID`) during the measured run.
    r.line(format!("ingress pid {pid}"));
    // The broker's ceiling for the same work: the same command, published persistent, mandatory
    // and confirmed by this process, on a fresh namespace.
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
    let per_round = o.requests.div_ceil(ROUNDS).max(1);
    let (mut runs, mut ceilings) = (Vec::new(), Vec::new());
    let (mut cpu, mut loader_cpu) = (Some(0.0), Some(0.0));
    let add = |total: Option<f64>, before: Option<f64>, after: Option<f64>| Some(total? + after? - before?);
    for base in (0..o.requests).step_by(per_round) {
        let n = per_round.min(o.requests - base);
        let (before, loader_before) = (report::cpu_seconds(pid), report::cpu_seconds(std::process::id()));
        runs.push(
            load::webhooks(&url, ACCESS_KEY, "update", n, o.connections, move |i| {
                format!("contact{}@bench.example.com", base + i)
            })
            .await,
        );
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
    let p99 = percentile(&run.latencies, 99.0);
    r.line(format!(
        "ingress: {} webhooks at {} connections ({ROUNDS} rounds alternating with the ceiling): {:.0} accepted/s, p50 {}, p99 {}, {} refused",
        run.count,
        o.connections,
        run.per_second(),
        ms(percentile(&run.latencies, 50.0)),
        ms(p99),
        run.failures
    ));
    // CPU per webhook is what the ingress takes from the broker on a shared machine, and unlike
    // throughput it hardly depends on what else the machine is doing.
    if let (Some(c), Some(l)) = (cpu, loader_cpu) {
        r.line(format!(
            "ingress CPU: {c:.2} s for {} webhooks, {:.0} µs per webhook (the load generator: {:.0} µs)",
            run.count,
            c * 1e6 / run.count as f64,
            l * 1e6 / run.count as f64
        ));
    }
    r.ingress_rss("ingress", &ingress);
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
        format!("every webhook answered 200 ({} refused)", run.failures),
        run.failures == 0,
    );
}
