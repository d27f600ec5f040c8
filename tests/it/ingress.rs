//! The ingress endpoint, one test per row of the README's response table, against the real broker.
//! (Slow clients, keys and labels, the admin port and the limits have their own `ingress_*` files.)

use std::time::Duration;

use lapin::options::BasicGetOptions;
use serde_json::{json, Value};
use shared::command::Command;
use testkit::env::ACCESS_KEY;
use testkit::TestEnv;

async fn post(url: &str, query: &str, body: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = reqwest::Client::new()
        .post(format!("{url}/?{query}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v, headers)
}

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

#[tokio::test]
async fn queued_webhook_is_a_persistent_command_in_the_broker() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingress().await;
    let (status, body, _) = post(
        &url,
        &format!("wpf_action=add&access_key={ACCESS_KEY}&send_notification=true&role=customer"),
        r#"{"email":"jane+vip@example.com","id":"42"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["action"], "add");
    let event_id = body["event_id"].as_str().unwrap().to_string();

    let msg = take_command(&env).await.expect("the command is in the queue");
    let p = &msg.delivery.properties;
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.message_id().as_ref().map(|m| m.as_str().to_string()),
        Some(event_id.clone())
    );
    assert_eq!(
        p.content_type().as_ref().map(|c| c.as_str().to_string()).as_deref(),
        Some("application/json")
    );
    let Command::SyncV1(cmd) = Command::decode(&msg.delivery.data).unwrap();
    assert_eq!(cmd.event_id.to_string(), event_id);
    assert_eq!(cmd.contact.email, "jane+vip@example.com");
    assert_eq!(cmd.contact.id.as_deref(), Some("42"));
    assert!(cmd.send_notification);
    assert_eq!(cmd.role.as_deref(), Some("customer"));
}

#[tokio::test]
async fn every_method_and_both_paths_are_accepted_with_any_key_source() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingress().await;
    let c = reqwest::Client::new();
    let q = format!("wpf_action=update&access_key={ACCESS_KEY}&email=a%40b.co");
    for (method, path) in [("GET", "/"), ("PUT", "/webhook"), ("PATCH", "/"), ("POST", "/webhook")] {
        let r = c
            .request(method.parse().unwrap(), format!("{url}{path}?{q}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
    }
    let r = c
        .post(format!("{url}/?wpf_action=update_tags&tags=1,2"))
        .header("x-access-key", ACCESS_KEY)
        .json(&json!({"email": "a@b.co"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{url}/?wpf_action=add_user"))
        .bearer_auth("rotated-key-4567")
        .json(&json!({"email": "a@b.co"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the second configured key works too");
    let r = c
        .post(format!("{url}/"))
        .form(&[
            ("wpf_action", "update"),
            ("access_key", ACCESS_KEY),
            ("contact_id", "c@d.io"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "form body");
    let mut n = 0;
    while take_command(&env).await.is_some() {
        n += 1;
    }
    assert_eq!(n, 7);
}

#[tokio::test]
async fn test_action_answers_success_and_queues_nothing() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingress().await;
    let (status, body, _) = post(&url, &format!("wpf_action=test&access_key={ACCESS_KEY}"), "").await;
    assert_eq!((status, body), (200, json!({"success": true})));
    assert!(take_command(&env).await.is_none());
}

#[tokio::test]
async fn bad_keys_are_403_and_bad_requests_are_400_naming_the_problem() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingress().await;
    let body = r#"{"email":"a@b.co"}"#;
    for q in [
        "wpf_action=add",
        "wpf_action=add&access_key=wrong-key-123",
        "access_key=",
    ] {
        let (status, v, _) = post(&url, q, body).await;
        assert_eq!((status, v), (403, json!({"error": "invalid access key"})), "{q}");
    }
    let k = format!("access_key={ACCESS_KEY}");
    let cases = [
        (k.clone(), body, "wpf_action is missing"),
        (format!("{k}&wpf_action=delete"), body, "unknown wpf_action"),
        (format!("{k}&wpf_action=add"), "{not json", "not valid JSON"),
        (format!("{k}&wpf_action=add"), "[]", "JSON object"),
        (format!("{k}&wpf_action=add"), "{}", "no contact e-mail"),
        (
            format!("{k}&wpf_action=add"),
            r#"{"email":"nobody"}"#,
            "malformed contact e-mail",
        ),
        // An address the welcome e-mail could not be sent to is refused here, not later.
        (
            format!("{k}&wpf_action=add"),
            r#"{"email":"jane..doe@example.com"}"#,
            "not allowed in an address",
        ),
        (format!("{k}&wpf_action=update_tags&tags=VIP"), body, "tags must be"),
    ];
    for (q, b, want) in cases {
        let (status, v, _) = post(&url, &q, b).await;
        assert_eq!(status, 400, "{q} {b}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
        assert!(!msg.contains(ACCESS_KEY));
    }
    assert!(take_command(&env).await.is_none(), "nothing refused was queued");
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingress().await;
    let big = format!(r#"{{"email":"a@b.co","pad":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, v, _) = post(&url, &format!("wpf_action=add&access_key={ACCESS_KEY}"), &big).await;
    assert_eq!(status, 413);
    assert!(v["error"].as_str().unwrap().contains("64 KiB"));
    let just_under = format!(r#"{{"email":"a@b.co","pad":"{}"}}"#, "x".repeat(60 * 1024));
    let (status, _, _) = post(&url, &format!("wpf_action=add&access_key={ACCESS_KEY}"), &just_under).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unroutable_publish_is_503_with_retry_after_never_200() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingress().await;
    let names = env.names();
    let (_conn, ch) = env.channel().await;
    ch.queue_unbind(
        names.commands_queue().as_str().into(),
        names.commands_exchange().as_str().into(),
        shared::topology::COMMAND_KEY.into(),
        Default::default(),
    )
    .await
    .unwrap();
    let (status, v, headers) = post(
        &url,
        &format!("wpf_action=add&access_key={ACCESS_KEY}"),
        r#"{"email":"a@b.co"}"#,
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    assert_eq!(v, json!({"error": "the webhook could not be queued: retry later"}));
}

#[tokio::test]
async fn broker_unreachable_is_503_within_the_publish_timeout_without_the_brokers_words() {
    let mut env = TestEnv::new().await;
    let mut s = env.ingress_settings();
    s.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    s.amqp.publish_timeout = Duration::from_secs(2);
    let urls = env.spawn_ingress(s).await;
    let url = urls.public.clone();
    let started = std::time::Instant::now();
    let (status, v, headers) = testkit::wait_until("the ingress to answer", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/?wpf_action=add&access_key={ACCESS_KEY}"))
                .json(&json!({"email": "a@b.co"}))
                .send()
                .await
                .ok()?;
            let (status, headers) = (r.status().as_u16(), r.headers().clone());
            Some((status, r.json::<Value>().await.unwrap_or(Value::Null), headers))
        }
    })
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    // The broker's own words ("Connection refused", "IO error", ...) stay in the log.
    assert_eq!(v, json!({"error": "the webhook could not be queued: retry later"}));
    assert!(started.elapsed() < Duration::from_secs(8));
    let ready = reqwest::get(format!("{}/readyz", urls.admin)).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(reqwest::get(format!("{url}/healthz")).await.unwrap().status(), 200);
    env.stop_services().await;
}

#[tokio::test]
async fn readiness_checks_the_broker_and_the_commands_queue() {
    let mut env = TestEnv::new().await;
    let urls = env.start_ingress_at(env.ingress_settings()).await;
    let ready = format!("{}/readyz", urls.admin);
    assert_eq!(reqwest::get(&ready).await.unwrap().status(), 200);
    let (_conn, ch) = env.channel().await;
    ch.queue_delete(env.names().commands_queue().as_str().into(), Default::default())
        .await
        .unwrap();
    // The answer is cached for about a second; then the missing queue shows.
    let r = testkit::wait_until("readiness to notice the missing queue", Duration::from_secs(10), || {
        let ready = ready.clone();
        async move { reqwest::get(ready).await.ok().filter(|r| r.status() == 503) }
    })
    .await;
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("commands queue"), "{body}");
}
