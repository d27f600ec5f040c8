//! Faults survived (issue "Faults survived"): delayed retries, dead letters and their replay,
//! broker and database outages, crashes, graceful shutdown. All against the real services.

use std::time::Duration;

use futures_util::future::join_all;
use lapin::{
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties,
};
use serde_json::json;
use shared::headers;
use sqlx::{AssertSqlSafe, Connection};
use testkit::{
    env::{pg_server, ACCESS_KEY, SECRETS_KEY},
    procs::{worker_cmd, worker_env, Proc},
    sim::{Api, Fault, FaultKind},
    wait_until, TestEnv,
};

use testkit::send;

async fn wait_status(env: &TestEnv, event: &str, want: &str, within: Duration) {
    wait_until(&format!("event {event} to be {want}"), within, || async {
        (env.event_status(event).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

async fn attempts(env: &TestEnv, event: &str) -> i32 {
    sqlx::query_scalar("select attempts from webhook_events where event_id = $1::uuid")
        .bind(event)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Takes the dead letters of the namespace (acking them) and returns their error headers.
async fn dead_letter_errors(env: &TestEnv) -> Vec<String> {
    let (_c, ch) = env.channel().await;
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            env.names().dead_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        out.push(shared::headers::header_str(&m.delivery.properties, headers::ERROR).unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_with_growing_delays_until_they_succeed() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("retry@example.com", json!({}));
    env.simh.inject(
        Fault::new(Api::App, FaultKind::Status(503))
            .with_contact("retry@example.com")
            .with_times(2),
    );
    let url = env.start_ingress().await;
    env.start_worker(env.worker_settings()).await;
    let id = send(&url, "wpf_action=add", "retry@example.com").await;
    wait_status(&env, &id, "succeeded", Duration::from_secs(40)).await;
    assert_eq!(attempts(&env, &id).await, 3);
    let log = env.event_log(&id).await;
    let retries: Vec<&String> = log.iter().filter(|l| l.contains("retrying in about")).collect();
    assert_eq!(retries.len(), 2, "{log:?}");
    // About 1 s, then about 10 s, each in a jitter variant never shorter than the tier.
    let first = ["about 1s (attempt 1 of 10)", "about 1.3s (attempt 1 of 10)"];
    let second = ["about 10s (attempt 2 of 10)", "about 13s (attempt 2 of 10)"];
    assert!(first.iter().any(|f| retries[0].contains(f)), "{log:?}");
    assert!(second.iter().any(|f| retries[1].contains(f)), "{log:?}");
    assert!(retries[0].contains("503"), "the cause is named: {log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn storms_of_429s_5xx_and_timeouts_all_complete_after_recovery() {
    let mut env = TestEnv::new().await;
    let emails: Vec<String> = (0..6).map(|i| format!("storm{i}@example.com")).collect();
    for e in &emails {
        env.simh.add_person(e, json!({}));
    }
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Status(429)).with_times(3));
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Status(502)).with_times(3));
    env.simh.inject(
        Fault::new(Api::App, FaultKind::Delay(Duration::from_millis(1500)))
            .with_contact("storm0@example.com")
            .with_times(1),
    );
    let url = env.start_ingress().await;
    let mut s = env.worker_settings();
    s.cio.timeout = Duration::from_millis(700);
    env.start_worker(s.clone()).await;
    env.start_worker(s).await;
    let ids = join_all(emails.iter().map(|e| send(&url, "wpf_action=add", e))).await;
    for id in &ids {
        let done = tokio::time::timeout(
            Duration::from_secs(60),
            wait_status(&env, id, "succeeded", Duration::from_secs(60)),
        )
        .await;
        assert!(
            done.is_ok(),
            "event {id}: {:?} {:?}",
            env.event_status(id).await,
            env.event_log(id).await
        );
    }
    let retried: i64 = sqlx::query_scalar("select count(*) from webhook_events where attempts > 1")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(retried >= 1, "attempts are recorded");
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(users, 6);
    assert!(env.simh.count_status(429) >= 1 && env.simh.count_status(502) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_credentials_park_the_command_and_a_replay_succeeds_after_the_fix() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("creds@example.com", json!({}));
    env.simh.inject(Fault::new(Api::App, FaultKind::Status(401)));
    let url = env.start_ingress().await;
    env.start_worker(env.worker_settings()).await;
    let id = send(&url, "wpf_action=add", "creds@example.com").await;
    wait_status(&env, &id, "dead", Duration::from_secs(20)).await;
    assert_eq!(attempts(&env, &id).await, 1, "a permanent failure is not retried");
    let log = env.event_log(&id).await.join("\n");
    assert!(log.contains("(401)") && log.contains("dead-letter queue"), "{log}");

    let dlq = env.names().dead_queue();
    wait_until("the dead letter", Duration::from_secs(10), || async {
        (env.queue_len(&dlq).await == 1).then_some(())
    })
    .await;
    let (code, listing) = worker_cmd(&env, &["dlq", "list"]);
    assert_eq!(code, 0, "{listing}");
    assert!(
        listing.contains(&id) && listing.contains("creds@example.com") && listing.contains("401"),
        "{listing}"
    );
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    let (code, shown) = worker_cmd(&env, &["dlq", "show", &id]);
    assert_eq!(code, 0);
    assert!(shown.contains("credentials refused"), "{shown}");
    assert_eq!(
        env.queue_len(&dlq).await,
        1,
        "listing and showing leave the dead letter in place"
    );

    env.simh.clear_faults();
    let (code, out) = worker_cmd(&env, &["dlq", "replay", &id]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 dead letter(s) replayed"), "{out}");
    wait_status(&env, &id, "succeeded", Duration::from_secs(20)).await;
    assert_eq!(env.queue_len(&dlq).await, 0);
    let (_, again) = worker_cmd(&env, &["dlq", "replay", "--all"]);
    assert!(
        again.contains("0 dead letter(s) replayed"),
        "rerunning is harmless: {again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_and_undecodable_messages_are_dead_lettered_with_reasons() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("flaky@example.com", json!({}));
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Status(500)).with_contact("flaky@example.com"));
    let url = env.start_ingress().await;
    let mut s = env.worker_settings();
    s.max_attempts = 2;
    env.start_worker(s).await;
    let id = send(&url, "wpf_action=update", "flaky@example.com").await;
    wait_status(&env, &id, "dead", Duration::from_secs(20)).await;

    let (_c, ch) = env.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            env.names().commands_exchange().as_str().into(),
            shared::topology::COMMAND_KEY.into(),
            BasicPublishOptions::default(),
            b"this is not a command",
            BasicProperties::default().with_message_id("garbage-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let dlq = env.names().dead_queue();
    wait_until("two dead letters", Duration::from_secs(20), || async {
        (env.queue_len(&dlq).await == 2).then_some(())
    })
    .await;
    let (code, listing) = worker_cmd(&env, &["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(
        listing.contains("garbage-1") && listing.contains("undecodable command"),
        "{listing}"
    );
    let mut errors = dead_letter_errors(&env).await;
    errors.sort();
    assert!(
        errors[0].starts_with("gave up after 2 attempts") && errors[0].contains("500"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("undecodable command"), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_crashes_every_consumer_is_dead_lettered_by_the_delivery_limit() {
    let mut env = TestEnv::new().await;
    let url = env.start_ingress().await;
    let id = send(&url, "wpf_action=add", "poison@example.com").await;
    let queue = env.names().commands_queue();
    let dlq = env.names().dead_queue();
    // A "worker" that takes the message and dies without settling it, again and again.
    for _ in 0..(shared::topology::DELIVERY_LIMIT + 3) {
        if env.queue_len(&dlq).await == 1 {
            break;
        }
        let (conn, ch) = env.channel().await;
        let got = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap();
        drop(got);
        conn.close(320, "simulated crash".into()).await.ok();
    }
    wait_until(
        "the broker to dead-letter the poison message",
        Duration::from_secs(10),
        || async { (env.queue_len(&dlq).await == 1).then_some(()) },
    )
    .await;
    let (_, listing) = worker_cmd(&env, &["dlq", "list"]);
    assert!(
        listing.contains(&id) && listing.contains("dead-lettered by the broker"),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_broker_connections_under_load_lose_no_acknowledged_webhook() {
    let mut env = TestEnv::with_sim(testkit::sim::SimConfig {
        app_rate_limit: None,
        ..Default::default()
    })
    .await;
    for i in 0..20 {
        env.simh.add_person(&format!("load{i}@example.com"), json!({}));
    }
    let url = env.start_ingress().await;
    env.start_worker(env.worker_settings()).await;
    env.start_worker(env.worker_settings()).await;
    let ns = env.namespace.clone();
    // Cut the namespace's connections three times while the webhooks flow: after 30, 70 and 110 answers.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = answered.clone();
    let cutter = tokio::spawn(async move {
        for threshold in [30, 70, 110] {
            wait_until("the load to reach the next cut", Duration::from_secs(60), || async {
                (seen.load(std::sync::atomic::Ordering::SeqCst) >= threshold).then_some(())
            })
            .await;
            tokio::task::spawn_blocking({
                let ns = ns.clone();
                move || testkit::broker::close_connections(&ns)
            })
            .await
            .unwrap();
        }
    });
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for round in 0..15 {
        let batch = join_all((0..10).map(|i| {
            let c = client.clone();
            let u = format!("{url}/?wpf_action=add&access_key={ACCESS_KEY}");
            async move {
                c.post(u)
                    .json(&json!({"email": format!("load{}@example.com", (round * 10 + i) % 20)}))
                    .send()
                    .await
            }
        }))
        .await;
        for r in batch {
            let r = r.unwrap();
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match r.status().as_u16() {
                200 => accepted.push(
                    r.json::<serde_json::Value>().await.unwrap()["event_id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                ),
                503 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    cutter.await.unwrap();
    assert!(
        accepted.len() >= 100,
        "most webhooks were accepted ({} accepted, {refused} refused)",
        accepted.len()
    );
    for id in &accepted {
        let s = env.wait_final(id).await;
        assert_eq!(s, "succeeded", "event {id}");
    }
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(users, 20, "no duplicates");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_is_retried_later_and_readiness_says_so() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("dbdown@example.com", json!({}));
    let url = env.start_ingress().await;
    let w = env.worker(env.worker_settings()).await;
    let health = worker::http::router(w.health());
    env.run_worker(w);
    let ready = || {
        let h = health.clone();
        async move {
            let r = tower::ServiceExt::oneshot(
                h,
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            );
            r.await.unwrap().status().as_u16()
        }
    };
    wait_until("the worker to be ready", Duration::from_secs(20), || async {
        (ready().await == 200).then_some(())
    })
    .await;

    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_server()))
        .await
        .unwrap();
    let db = env.db_name.clone();
    sqlx::query(AssertSqlSafe(format!("alter database {db} allow_connections false")))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(ready().await, 503, "readiness reflects the database outage");

    let id = send(&url, "wpf_action=add", "dbdown@example.com").await;
    // The worker cannot record anything; the command goes to a delayed retry instead of being lost.
    let names = env.names();
    let retry_queues: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|v| names.retry_queue(&format!("1s.{v}")))
        .collect();
    let commands = env.names().commands_queue();
    wait_until(
        "the command to be parked for a retry",
        Duration::from_secs(20),
        || async {
            let mut n = env.queue_len(&commands).await;
            for q in &retry_queues {
                n += env.queue_len(q).await;
            }
            (n > 0).then_some(())
        },
    )
    .await;
    sqlx::query(AssertSqlSafe(format!("alter database {db} allow_connections true")))
        .execute(&mut admin)
        .await
        .unwrap();
    wait_status(&env, &id, "succeeded", Duration::from_secs(60)).await;
    wait_until("readiness to recover", Duration::from_secs(20), || async {
        (ready().await == 200).then_some(())
    })
    .await;
}

fn binary_worker(env: &TestEnv, extra: &[(&'static str, String)]) -> Proc {
    let mut vars = worker_env(env);
    vars.extend_from_slice(extra);
    Proc::spawn("worker", &["run"], &vars)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_worker_finish_what_it_holds() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("slow@example.com", json!({}));
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Delay(Duration::from_millis(1500))).with_times(1));
    let url = env.start_ingress().await;
    let mut w = binary_worker(&env, &[]);
    let id = send(&url, "wpf_action=add", "slow@example.com").await;
    wait_status(&env, &id, "processing", Duration::from_secs(20)).await;
    let status = w
        .terminate(Duration::from_secs(15))
        .expect("the worker exits within its grace period");
    assert!(status.success(), "{}", w.output());
    assert_eq!(
        env.event_status(&id).await.as_deref(),
        Some("succeeded"),
        "{}\n{:?}",
        w.output(),
        env.event_log(&id).await
    );
    assert!(w.output().contains("worker stopped"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_delivery_loses_nothing_and_duplicates_nothing() {
    let mut env = TestEnv::with_sim(testkit::sim::SimConfig {
        app_rate_limit: None,
        ..Default::default()
    })
    .await;
    let emails: Vec<String> = (0..8).map(|i| format!("crash{i}@example.com")).collect();
    for e in &emails {
        env.simh.add_person(e, json!({}));
    }
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Delay(Duration::from_secs(3))).with_path("/attributes"));
    let url = env.start_ingress().await;
    let pw = [
        ("RETURN_PASSWORD_FIELD", "password".to_string()),
        ("SECRETS_KEY", SECRETS_KEY.to_string()),
    ];
    let mut doomed = binary_worker(&env, &pw);
    let mut ids = Vec::new();
    for e in emails.iter().chain(emails.iter()) {
        ids.push(send(&url, "wpf_action=add", e).await);
    }
    wait_until(
        "the first worker to hold deliveries",
        Duration::from_secs(20),
        || async {
            let n: i64 = sqlx::query_scalar("select count(*) from webhook_events where status = 'processing'")
                .fetch_one(&env.pool)
                .await
                .unwrap();
            (n >= 4).then_some(())
        },
    )
    .await;
    doomed.signal("-KILL");
    doomed.wait_exit(Duration::from_secs(5)).expect("killed");
    env.simh.clear_faults();
    let _survivor = binary_worker(&env, &pw);
    for id in &ids {
        wait_status(&env, id, "succeeded", Duration::from_secs(60)).await;
    }
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(users, 8);
    wait_until("every password to be returned", Duration::from_secs(30), || async {
        let sent: i64 =
            sqlx::query_scalar("select count(*) from outbox where kind = 'password_return' and status = 'sent'")
                .fetch_one(&env.pool)
                .await
                .unwrap();
        (sent == 8).then_some(())
    })
    .await;
    for e in &emails {
        let puts = env
            .simh
            .track_puts()
            .into_iter()
            .filter(|p| {
                env.simh
                    .email_of(&p.identifier)
                    .is_some_and(|x| x.eq_ignore_ascii_case(e))
            })
            .count();
        assert_eq!(puts, 1, "exactly one password return for {e}");
    }
}
