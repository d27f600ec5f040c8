//! The logs of a clean start, as an operator first sees them: plain text when not written to a
//! terminal, and no warning or error from either binary.

use std::time::Duration;

use testkit::{
    env::ACCESS_KEY,
    procs::{ingress_env, worker_env, Proc},
    TestEnv,
};

/// Log lines of a level that means trouble (text format: the level is the second field).
fn alarming(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|lv| lv == "WARN" || lv == "ERROR")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_start_logs_plain_text_without_warnings_or_errors() {
    let env = TestEnv::new().await;
    // The default configuration of a first start: no SMTP server (the welcome e-mail is off, a
    // choice rather than a fault) and a fresh namespace.
    let mut vars = worker_env(&env);
    vars.push(("LOG_FORMAT", "text".into()));
    let http = vars.iter().find(|(k, _)| *k == "WORKER_HTTP_ADDR").unwrap().1.clone();
    // A fresh namespace: nothing declared yet, as on a first start.
    let mut worker = Proc::spawn("worker", &["run"], &vars);
    let (mut ingress_vars, _, admin_port) = ingress_env(ACCESS_KEY, &env.namespace);
    ingress_vars.push(("LOG_FORMAT", "text".into()));
    let mut ingress = Proc::spawn("ingress", &[], &ingress_vars);
    let client = reqwest::Client::new();
    // The queue gauges appear once the worker has read the queues (after the topology exists).
    testkit::wait_until("the worker's queue gauges", Duration::from_secs(30), || {
        let c = client.clone();
        let url = format!("http://{http}/metrics");
        async move {
            let body = c.get(url).send().await.ok()?.text().await.ok()?;
            body.contains("cio_commands_queued").then_some(())
        }
    })
    .await;
    testkit::wait_until("the ingress ready", Duration::from_secs(30), || {
        let c = client.clone();
        let url = format!("http://127.0.0.1:{admin_port}/readyz");
        async move { c.get(url).send().await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    assert!(worker.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()));
    assert!(ingress.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()));
    for (name, log) in [("worker", worker.output()), ("ingress", ingress.output())] {
        assert!(log.lines().count() > 1, "{name} logged: {log}");
        assert!(!log.contains('\u{1b}'), "{name} wrote colour codes to a file: {log:?}");
        assert!(alarming(&log).is_empty(), "{name} on a clean start:\n{log}");
    }
}
