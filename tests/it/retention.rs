//! Retention and erasure: `worker prune --older-than` and `worker erase --email`, on a populated
//! database, keep what they must (recent and unfinished events, pending outbox work, users).

use std::time::Duration;

use testkit::{procs::worker_cmd, wait_until, TestEnv};
use uuid::Uuid;

/// An event received and (when `finished`) finished `days_ago`, with two log lines.
async fn event(env: &TestEnv, email: &str, status: &str, days_ago: i32, finished: bool) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "insert into webhook_events (event_id, action, email, status, attempts, received_at, finished_at)
         values ($1, 'add', $2, $3, 1, now() - make_interval(days => $4),
                 case when $5 then now() - make_interval(days => $4) end)",
    )
    .bind(id)
    .bind(email)
    .bind(status)
    .bind(days_ago)
    .bind(finished)
    .execute(&env.pool)
    .await
    .unwrap();
    for line in ["Received add webhook", "Done"] {
        sqlx::query("insert into event_log (event_id, level, message) values ($1, 'info', $2)")
            .bind(id)
            .bind(line)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    id
}

/// A coalescing row for `email`'s `add`, last started `days_ago`.
async fn claim(env: &TestEnv, email: &str, days_ago: i32) -> String {
    let key = format!("add|{}|-|-|-|false", email.to_lowercase());
    sqlx::query(
        "insert into contact_syncs (key, last_started_at, last_status)
         values ($1, now() - make_interval(days => $2), 'succeeded')",
    )
    .bind(&key)
    .bind(days_ago)
    .execute(&env.pool)
    .await
    .unwrap();
    key
}

async fn user(env: &TestEnv, email: &str) -> i64 {
    sqlx::query_scalar(
        "insert into users (email, username, password_hash, role) values ($1, $1, 'x', 'subscriber') returning id",
    )
    .bind(email)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn pending_outbox(env: &TestEnv, user_id: i64, event: Uuid) {
    sqlx::query(
        "insert into outbox (kind, user_id, event_id, recipient) values ('welcome_email', $1, $2, 'x@example.com')",
    )
    .bind(user_id)
    .bind(event)
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn exists(env: &TestEnv, id: Uuid) -> bool {
    sqlx::query_scalar("select exists (select 1 from webhook_events where event_id = $1)")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn log_lines(env: &TestEnv, id: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from event_log where event_id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn claim_exists(env: &TestEnv, key: &str) -> bool {
    sqlx::query_scalar("select exists (select 1 from contact_syncs where key = $1)")
        .bind(key)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_old_finished_events_and_keeps_recent_unfinished_and_pending_work() {
    let env = TestEnv::new().await;
    let old = [
        event(&env, "a@example.com", "succeeded", 40, true).await,
        event(&env, "b@example.com", "no_user", 35, true).await,
        event(&env, "c@example.com", "rejected", 31, true).await,
    ];
    let recent = event(&env, "d@example.com", "succeeded", 2, true).await;
    let old_retrying = event(&env, "e@example.com", "retrying", 40, false).await;
    let old_dead = event(&env, "f@example.com", "dead", 40, true).await;
    let old_with_outbox = event(&env, "g@example.com", "succeeded", 40, true).await;
    let g = user(&env, "g@example.com").await;
    pending_outbox(&env, g, old_with_outbox).await;
    let stale = claim(&env, "a@example.com", 40).await;
    let fresh = claim(&env, "d@example.com", 1).await;

    let (code, out) = worker_cmd(&env, &["prune", "--older-than", "30d"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("       3 event(s)"), "{out}");
    assert!(out.contains("       6 log line(s)"), "{out}");
    assert!(out.contains("       1 coalescing row(s)"), "{out}");
    assert!(
        out.contains("kept 1 finished event(s) whose outbox rows are still pending"),
        "{out}"
    );
    for id in old {
        assert!(!exists(&env, id).await, "{id} pruned");
        assert_eq!(log_lines(&env, id).await, 0, "its log lines too");
    }
    for id in [recent, old_retrying, old_dead, old_with_outbox] {
        assert!(exists(&env, id).await, "{id} kept");
        assert_eq!(log_lines(&env, id).await, 2, "with its log lines");
    }
    assert!(!claim_exists(&env, &stale).await && claim_exists(&env, &fresh).await);

    let (_, again) = worker_cmd(&env, &["prune", "--older-than", "30d"]);
    assert!(
        again.contains("       0 event(s)"),
        "a second prune finds nothing: {again}"
    );
    let (code, out) = worker_cmd(&env, &["prune", "--older-than", "soon"]);
    assert_eq!(code, 2, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn erase_removes_one_persons_records_and_keeps_the_user_and_everyone_else() {
    let env = TestEnv::new().await;
    let jane_user = user(&env, "Jane@Example.com").await;
    let jane = [
        event(&env, "jane@example.com", "succeeded", 3, true).await,
        event(&env, "JANE@example.com", "dead", 1, true).await,
    ];
    let jane_in_flight = event(&env, "jane@example.com", "processing", 0, false).await;
    let jane_pending = event(&env, "jane@example.com", "succeeded", 0, true).await;
    pending_outbox(&env, jane_user, jane_pending).await;
    let jane_claim = claim(&env, "jane@example.com", 1).await;
    let bob = event(&env, "bob@example.com", "succeeded", 3, true).await;
    let bob_claim = claim(&env, "bob@example.com", 1).await;

    let (code, out) = worker_cmd(&env, &["erase", "--email", "Jane@EXAMPLE.com"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("       2 event(s)"), "{out}");
    assert!(out.contains("       4 log line(s)"), "{out}");
    assert!(out.contains("       1 coalescing row(s)"), "{out}");
    assert!(
        out.contains("kept 1 event(s) whose outbox rows are still pending"),
        "{out}"
    );
    assert!(out.contains("kept 1 event(s) a worker is still processing"), "{out}");
    for id in jane {
        assert!(!exists(&env, id).await);
        assert_eq!(log_lines(&env, id).await, 0);
    }
    assert!(exists(&env, jane_in_flight).await && exists(&env, jane_pending).await);
    assert!(!claim_exists(&env, &jane_claim).await);
    let users: i64 = sqlx::query_scalar("select count(*) from users where id = $1")
        .bind(jane_user)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(users, 1, "the user row belongs to the application");
    assert!(exists(&env, bob).await && log_lines(&env, bob).await == 2);
    assert!(claim_exists(&env, &bob_claim).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_run_with_retention_days_prunes_shortly_after_the_start() {
    let mut env = TestEnv::new().await;
    let old = event(&env, "old@example.com", "succeeded", 10, true).await;
    let recent = event(&env, "new@example.com", "succeeded", 2, true).await;
    let mut s = env.worker_settings();
    s.retention_days = 7;
    s.retention_first_run = Duration::from_millis(200);
    env.start_worker(s).await;
    wait_until("the scheduled prune", Duration::from_secs(20), || async {
        (!exists(&env, old).await).then_some(())
    })
    .await;
    assert_eq!(log_lines(&env, old).await, 0);
    assert!(exists(&env, recent).await, "younger than RETENTION_DAYS");
}
