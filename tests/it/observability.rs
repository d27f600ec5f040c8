//! Operable in production: metrics after real traffic, JSON logs that follow one webhook across
//! processes by its event id, and secrets (keys, generated passwords) absent from every log line.

use std::time::Duration;

use serde_json::{json, Value};
use testkit::{
    env::{ACCESS_KEY, SECRETS_KEY},
    metrics::scrape,
    procs::{free_port, ingress_env, worker_env, Proc},
    wait_for, wait_until, TestEnv,
};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_logs_and_redaction_after_real_traffic() {
    let env = TestEnv::new().await;
    env.simh.add_person("obs@example.com", json!({"First Name": "Obs"}));
    let (mut ingress_vars, iport, iadmin) = ingress_env(ACCESS_KEY, &env.namespace);
    ingress_vars.extend([
        ("LOG_FORMAT", "json".into()),
        // The per-webhook "webhook queued" line is at debug.
        ("RUST_LOG", "info,ingress=debug".into()),
    ]);
    let mut ingress = Proc::spawn("ingress", &[], &ingress_vars);
    let wport = free_port();
    let mut vars = worker_env(&env);
    vars.retain(|(k, _)| *k != "WORKER_HTTP_ADDR");
    vars.extend([
        ("WORKER_HTTP_ADDR", format!("127.0.0.1:{wport}")),
        ("LOG_FORMAT", "json".into()),
        ("RETURN_PASSWORD_FIELD", "password".into()),
        ("SECRETS_KEY", SECRETS_KEY.into()),
    ]);
    let mut worker = Proc::spawn("worker", &["run"], &vars);
    let (iurl, wurl) = (format!("http://127.0.0.1:{iport}"), format!("http://127.0.0.1:{wport}"));
    let iadmin_url = format!("http://127.0.0.1:{iadmin}");
    for u in [&iadmin_url, &wurl] {
        wait_until("ready", Duration::from_secs(30), || async {
            reqwest::get(format!("{u}/readyz"))
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await;
    }
    let r = reqwest::Client::new()
        .post(format!("{iurl}/?wpf_action=add&access_key={ACCESS_KEY}"))
        .json(&json!({"email": "obs@example.com"}))
        .send()
        .await
        .unwrap();
    let event = r.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = reqwest::get(format!("{iurl}/?wpf_action=add&access_key=wrong-key-999"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let password = wait_until("the password return", Duration::from_secs(20), || async {
        env.simh
            .track_puts()
            .first()
            .and_then(|p| p.body["password"].as_str().map(str::to_string))
    })
    .await;

    let im = scrape(&format!("{iadmin_url}/metrics")).await;
    assert!(
        im.contains(r#"cio_ingress_requests_total{action="add",status="200",key_label=""} 1"#),
        "{im}"
    );
    assert!(
        im.contains(r#"cio_ingress_requests_total{action="none",status="403",key_label=""} 1"#),
        "{im}"
    );
    assert!(im.contains("cio_ingress_publish_seconds_count 1"), "{im}");
    // The simulator records the password return before the worker counts the delivery, and the
    // gauges are refreshed every few seconds: poll until every series is there.
    let expected = [
        r#"cio_worker_commands_total{action="add",outcome="succeeded"} 1"#,
        r#"cio_api_calls_total{endpoint="attributes",status="200"} 1"#,
        "cio_rate_limiter_wait_seconds_count",
        r#"cio_worker_lag_seconds_count{action="add"} 1"#,
        r#"cio_outbox_deliveries_total{kind="password_return",result="sent"} 1"#,
        "cio_outbox_backlog",
        "cio_dead_letters 0",
        "cio_commands_queued",
    ];
    wait_for("every worker series", Duration::from_secs(20), || async {
        let m = scrape(&format!("{wurl}/metrics")).await;
        let missing: Vec<&str> = expected.iter().copied().filter(|s| !m.contains(s)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?} in\n{m}"))
        }
    })
    .await;

    assert!(ingress.terminate(Duration::from_secs(10)).unwrap().success());
    assert!(worker.terminate(Duration::from_secs(15)).unwrap().success());
    let (ilog, wlog) = (ingress.output(), worker.output());
    let mut followed = (false, false);
    for (which, log) in [("ingress", &ilog), ("worker", &wlog)] {
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{which} line is not JSON ({e}): {line}"));
            if v["event_id"] == event.as_str() {
                if which == "ingress" {
                    followed.0 = true;
                } else {
                    followed.1 = true;
                }
            }
        }
        for secret in [
            ACCESS_KEY,
            password.as_str(),
            SECRETS_KEY,
            "sim-app-key",
            "sim-track-key",
        ] {
            assert!(!log.contains(secret), "{which} log contains a secret");
        }
    }
    assert_eq!(followed, (true, true), "the event id is in both processes' logs");
}
