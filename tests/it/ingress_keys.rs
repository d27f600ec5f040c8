//! Access keys at the ingress: one key per request, Basic auth, labels that travel with the
//! command and into the metrics, and keys refused or warned about at start.

use std::time::Duration;

use base64::Engine;
use ingress::auth::AccessKey;
use lapin::{options::BasicGetOptions, types::AMQPValue};
use serde_json::{json, Value};
use testkit::{
    env::ACCESS_KEY,
    metrics::scrape,
    procs::{ingress_env, Proc},
    TestEnv,
};

const CRM_KEY: &str = "crm-journeys-key-0123456789";

/// Takes one message from the namespace's commands queue.
async fn take_command(env: &TestEnv) -> Option<lapin::message::BasicGetMessage> {
    let (_conn, ch) = env.channel().await;
    ch.basic_get(
        env.names().commands_queue().as_str().into(),
        BasicGetOptions { no_ack: true },
    )
    .await
    .unwrap()
}

fn key_label(msg: &lapin::message::BasicGetMessage) -> Option<String> {
    let headers = msg.delivery.properties.headers().as_ref()?;
    match headers.inner().get(shared::headers::KEY_LABEL)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        other => panic!("unexpected header type {other:?}"),
    }
}

async fn labelled_ingress(env: &mut TestEnv) -> testkit::env::IngressUrls {
    let mut s = env.ingress_settings();
    s.access_keys = vec![
        AccessKey::labelled("onboarding", ACCESS_KEY),
        AccessKey::labelled("crm", CRM_KEY),
        AccessKey::unlabelled("plain-unlabelled-key-000"),
    ];
    env.start_ingress_at(s).await
}

#[tokio::test]
async fn the_label_of_the_key_travels_with_the_command_and_into_the_metrics() {
    let mut env = TestEnv::new().await;
    let urls = labelled_ingress(&mut env).await;
    let c = reqwest::Client::new();
    let send = |query: String| {
        let c = c.clone();
        let url = urls.public.clone();
        async move {
            c.post(format!("{url}/?{query}"))
                .json(&json!({"email": "label@example.com"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send(format!("wpf_action=add&access_key={CRM_KEY}")).await, 200);
    let msg = take_command(&env).await.expect("queued");
    assert_eq!(key_label(&msg).as_deref(), Some("crm"));
    assert_eq!(send(format!("wpf_action=update&access_key={ACCESS_KEY}")).await, 200);
    let msg = take_command(&env).await.expect("queued");
    assert_eq!(key_label(&msg).as_deref(), Some("onboarding"));
    // An unlabelled key sets no label header.
    assert_eq!(
        send("wpf_action=update&access_key=plain-unlabelled-key-000".into()).await,
        200
    );
    let msg = take_command(&env).await.expect("queued");
    assert_eq!(key_label(&msg), None);

    let m = scrape(&format!("{}/metrics", urls.admin)).await;
    // Metrics are per process (other tests share it): look for at least our requests.
    let count = |series: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count(r#"cio_ingress_requests_total{action="add",status="200",key_label="crm"}"#) >= 1.0,
        "{m}"
    );
    assert!(
        count(r#"cio_ingress_requests_total{action="update",status="200",key_label="onboarding"}"#) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn several_distinct_keys_are_refused_and_basic_auth_carries_one() {
    let mut env = TestEnv::new().await;
    let urls = labelled_ingress(&mut env).await;
    let url = &urls.public;
    let c = reqwest::Client::new();
    let body = json!({"email": "basic@example.com"});
    // Two valid keys are still two keys: refused, nothing queued.
    let r = c
        .post(format!("{url}/?wpf_action=add&access_key={ACCESS_KEY}"))
        .header("x-access-key", CRM_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"error": ingress::request::SEVERAL_KEYS}));
    // A thousand guesses in one request: refused the same way, none compared.
    let guesses: String = (0..1000).map(|i| format!("&access_key=guess-{i:04}")).collect();
    let r = c
        .post(format!("{url}/?wpf_action=add{guesses}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(take_command(&env).await.is_none());

    // https://journey:KEY@host/ : the key as the password of Basic auth.
    let r = c
        .post(format!("{url}/?wpf_action=add"))
        .basic_auth("any-journey", Some(CRM_KEY))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let msg = take_command(&env).await.expect("queued");
    assert_eq!(key_label(&msg).as_deref(), Some("crm"));
    // The same key in the URL and in Basic auth is one key.
    let token = base64::engine::general_purpose::STANDARD.encode(format!("u:{CRM_KEY}"));
    let r = c
        .post(format!("{url}/?wpf_action=test&access_key={CRM_KEY}"))
        .header("authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A wrong Basic password is a wrong key.
    let r = c
        .post(format!("{url}/?wpf_action=test"))
        .basic_auth("any-journey", Some("not-a-key-00000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

fn start_binary(keys: &str, namespace: &str) -> (Proc, u16, u16) {
    let (vars, port, admin) = ingress_env(keys, namespace);
    (Proc::spawn("ingress", &[], &vars), port, admin)
}

#[test]
fn placeholder_keys_from_the_examples_stop_the_binary_naming_the_label_only() {
    // The values shipped in deploy/.env.example and deploy/k8s/secret.example.yaml.
    for (keys, named) in [
        ("change-me-access-key", "#1 (unlabelled)"),
        ("real-key-0123456789abcdef,crm:CHANGE-ME-access-key", "'crm'"),
    ] {
        let (mut p, _, _) = start_binary(keys, "never_declared");
        let status = p
            .wait_exit(Duration::from_secs(10))
            .expect("the ingress refuses to start");
        assert_eq!(status.code(), Some(2));
        let out = p.output();
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
        assert!(
            out.contains("ACCESS_KEYS") && out.contains(named) && out.contains("placeholder"),
            "{out}"
        );
        assert!(!out.to_ascii_lowercase().contains("change-me-access-key"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn short_keys_start_with_a_warning_naming_the_label_never_the_value() {
    let env = TestEnv::new().await;
    let (mut p, port, admin) = start_binary("journeys:short-key-0123,long-enough-key-0123456789", &env.namespace);
    testkit::wait_until("the ingress to listen", Duration::from_secs(20), || async {
        reqwest::get(format!("http://127.0.0.1:{admin}/healthz")).await.ok()
    })
    .await;
    let ok = reqwest::get(format!(
        "http://127.0.0.1:{port}/?wpf_action=test&access_key=short-key-0123"
    ))
    .await
    .unwrap();
    assert_eq!(ok.status(), 200, "a short key still works");
    assert!(p.terminate(Duration::from_secs(10)).unwrap().success());
    let out = p.output();
    let warning = out
        .lines()
        .find(|l| l.contains("shorter than 20 characters"))
        .unwrap_or_else(|| panic!("no warning in:\n{out}"));
    assert!(warning.contains("'journeys'"), "{warning}");
    assert!(!out.contains("short-key-0123"), "the key never reaches the log:\n{out}");
    assert_eq!(out.matches("shorter than 20 characters").count(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_stores_the_label_with_the_event() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("stored-label@example.com", json!({}));
    env.simh.add_person("plain@example.com", json!({}));
    let urls = labelled_ingress(&mut env).await;
    let w = env.worker(env.worker_settings()).await;
    env.run_worker(w);
    let c = reqwest::Client::new();
    for (key, email) in [
        (CRM_KEY, "stored-label@example.com"),
        ("plain-unlabelled-key-000", "plain@example.com"),
    ] {
        let r = c
            .post(format!("{}/?wpf_action=add&access_key={key}", urls.public))
            .json(&json!({ "email": email }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let rows: Vec<(String, String, Option<String>)> =
        testkit::wait_until("both events to finish", Duration::from_secs(30), || async {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "select email, status, key_label from webhook_events where status not in ('processing', 'retrying') order by email",
            )
            .fetch_all(&env.pool)
            .await
            .unwrap();
            (rows.len() == 2).then_some(rows)
        })
        .await;
    assert_eq!(
        rows,
        vec![
            ("plain@example.com".into(), "succeeded".into(), None),
            (
                "stored-label@example.com".into(),
                "succeeded".into(),
                Some("crm".into())
            ),
        ]
    );
}
