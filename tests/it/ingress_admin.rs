//! The operator endpoints live on the admin address only, and readiness is cached so that probes
//! cannot churn broker channels (against the real binary, whose metrics are its own).

use std::time::{Duration, Instant};

use testkit::{
    env::ACCESS_KEY,
    metrics::{scrape, series},
    procs::{ingress_env, Proc},
    wait_until, TestEnv,
};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_readiness_are_on_the_admin_port_only_and_readiness_is_cached() {
    let env = TestEnv::new().await;
    let (vars, port, admin_port) = ingress_env(ACCESS_KEY, &env.namespace);
    let mut p = Proc::spawn("ingress", &[], &vars);
    let (public, admin) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{admin_port}"),
    );
    let c = reqwest::Client::new();
    wait_until("the admin port to say ready", Duration::from_secs(30), || {
        let (c, u) = (c.clone(), format!("{admin}/readyz"));
        async move { c.get(u).send().await.ok().filter(|r| r.status() == 200) }
    })
    .await;

    // The public port: webhooks and /healthz, nothing for operators.
    for path in ["/metrics", "/readyz"] {
        let r = c.get(format!("{public}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the public port");
    }
    assert_eq!(c.get(format!("{public}/healthz")).send().await.unwrap().status(), 200);
    let r = c
        .get(format!("{public}/?wpf_action=test&access_key={ACCESS_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The admin port: metrics (with the request just made) and readiness.
    let metrics = scrape(&format!("{admin}/metrics")).await;
    assert_eq!(
        series(
            &metrics,
            r#"cio_ingress_requests_total{action="test",status="200",key_label=""}"#
        )
        .unwrap_or(0.0),
        1.0,
        "{metrics}"
    );
    let before = series(&metrics, "cio_ingress_readiness_checks_total").unwrap_or(0.0);
    assert!(before >= 1.0, "{metrics}");

    // A storm of probes, at once and one after another, reaches the broker about once a second.
    let started = Instant::now();
    let storm: Vec<_> = (0..100)
        .map(|_| {
            let (c, u) = (c.clone(), format!("{admin}/readyz"));
            tokio::spawn(async move { c.get(u).send().await.unwrap().status() })
        })
        .collect();
    for s in storm {
        assert_eq!(s.await.unwrap(), 200);
    }
    for _ in 0..100 {
        assert_eq!(c.get(format!("{admin}/readyz")).send().await.unwrap().status(), 200);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = scrape(&format!("{admin}/metrics")).await;
    let checks = series(&metrics, "cio_ingress_readiness_checks_total").unwrap_or(0.0) - before;
    assert!(
        checks <= elapsed.ceil() + 1.0,
        "{checks} broker checks for 200 probes in {elapsed:.1} s"
    );
    assert!(p.terminate(Duration::from_secs(10)).unwrap().success());
}
