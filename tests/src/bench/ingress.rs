//! Step 1: the ingress's accepted webhooks/s and latency, beside the broker's own ceiling for the
//! same publishes.

use std::time::Duration;

use shared::{command::Action, publisher::Publisher};

use super::{
    load,
    report::{ms, percentile},
    start_ingress, Options, Report,
};
use crate::{env::ACCESS_KEY, TestEnv};

pub async fn run(o: &Options, r: &mut Report) {
    let env = TestEnv::new().await;
    let (mut ingress, url) = start_ingress(&env).await;
    // Warm up connections and the broker channel.
    load::webhooks(&url, ACCESS_KEY, "update", 500, o.connections, |i| {
        format!("warm{i}@bench.example.com")
    })
    .await;
    let run = load::webhooks(&url, ACCESS_KEY, "update", o.requests, o.connections, |i| {
        format!("contact{i}@bench.example.com")
    })
    .await;
    let p50 = percentile(&run.latencies, 50.0);
    let p99 = percentile(&run.latencies, 99.0);
    r.line(format!(
        "ingress: {} webhooks at {} connections: {:.0} accepted/s, p50 {}, p99 {}, {} refused",
        run.count,
        o.connections,
        run.per_second(),
        ms(p50),
        ms(p99),
        run.failures
    ));
    r.ingress_rss("ingress", &ingress);
    ingress.terminate(Duration::from_secs(10));
    // The broker's ceiling for the same work, on a fresh namespace.
    let env2 = TestEnv::new().await;
    let publisher = Publisher::new(&env2.amqp(), "cio-bench ceiling");
    let warm = load::publishes(&publisher, 500, o.connections, |i| {
        load::command(Action::Update, format!("warm{i}@bench.example.com"))
    })
    .await;
    drop(warm);
    let ceiling = load::publishes(&publisher, o.requests, o.connections, |i| {
        load::command(Action::Update, format!("contact{i}@bench.example.com"))
    })
    .await;
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
        format!("ingress at {:.0}% of the broker's ceiling (≥ 50%)", share * 100.0),
        share >= 0.5,
    );
    r.target(
        format!("ingress p99 {} (≤ 10 ms)", ms(p99)),
        p99 <= Duration::from_millis(10),
    );
}
