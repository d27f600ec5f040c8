//! The scriptable operator commands: `worker events list`, `--output json`, and the dead-letter
//! queue's `list --limit` and `purge`, run as an operator runs them.

use serde_json::Value;
use testkit::{
    console::publish_dead_letters,
    procs::{worker_cmd, worker_output},
    TestEnv,
};
use uuid::Uuid;

/// Records an event as the worker would, received `hours_ago`, with one log line.
async fn event(env: &TestEnv, email: &str, action: &str, status: &str, hours_ago: i32) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "insert into webhook_events (event_id, action, email, status, attempts, received_at, finished_at)
         values ($1, $2, $3, $4, 1, now() - make_interval(hours => $5), now() - make_interval(hours => $5))",
    )
    .bind(id)
    .bind(action)
    .bind(email)
    .bind(status)
    .bind(hours_ago)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("insert into event_log (event_id, level, message) values ($1, 'info', 'Received webhook')")
        .bind(id)
        .execute(&env.pool)
        .await
        .unwrap();
    id
}

/// Runs a command with `--output json`; every stdout line must be a JSON object.
fn json_lines(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let (code, out, err) = worker_output(env, &all, &[]);
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{out}")))
        .inspect(|v| assert!(v.is_object(), "{v}"))
        .collect()
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// The dead-letter queue's length once every letter a command gave back is ready again: the broker
/// requeues them asynchronously, after the command's connection has closed. Bounded: returns what
/// it last saw after 10 s.
async fn dead_len(env: &TestEnv, want: u32) -> u32 {
    let q = env.names().dead_queue();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = env.queue_len(&q).await;
        if n == want || std::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_list_filters_newest_first_and_prints_json_lines() {
    let env = TestEnv::new().await;
    let jane_old = event(&env, "jane@example.com", "add", "succeeded", 30).await;
    let jane_new = event(&env, "Jane@Example.com", "update", "dead", 1).await;
    let bob = event(&env, "bob@example.com", "add", "succeeded", 2).await;
    let ann = event(&env, "ann@example.com", "add", "no_user", 3).await;

    let all = json_lines(&env, &["events", "list"]);
    assert_eq!(
        ids(&all),
        [jane_new, bob, ann, jane_old].map(|u| u.to_string()),
        "newest first"
    );
    let jane = json_lines(&env, &["events", "list", "--email", "JANE@example.com"]);
    assert_eq!(
        ids(&jane),
        [jane_new, jane_old].map(|u| u.to_string()),
        "e-mails fold case"
    );
    let dead = json_lines(&env, &["events", "list", "--status", "dead"]);
    assert_eq!(ids(&dead), [jane_new.to_string()]);
    assert_eq!(dead[0]["email"], "Jane@Example.com");
    assert_eq!(dead[0]["status"], "dead");
    let recent_adds = json_lines(&env, &["events", "list", "--action", "add", "--since", "6h"]);
    assert_eq!(ids(&recent_adds), [bob, ann].map(|u| u.to_string()));
    let limited = json_lines(&env, &["events", "list", "--limit", "2"]);
    assert_eq!(ids(&limited), [jane_new, bob].map(|u| u.to_string()));

    let (code, text) = worker_cmd(&env, &["events", "list", "--email", "bob@example.com"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&bob.to_string()) && text.contains("1 event(s)"), "{text}");
    assert!(!text.contains(&ann.to_string()), "{text}");
    let (code, err) = worker_cmd(&env, &["events", "list", "--status", "finished"]);
    assert_eq!(code, 2, "an unknown status is a usage error: {err}");

    let shown = json_lines(&env, &["events", "show", &bob.to_string()]);
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["status"], "succeeded");
    assert_eq!(shown[0]["log"][0]["message"], "Received webhook");
    let outbox = json_lines(&env, &["outbox", "list"]);
    assert!(outbox.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_shows_exactly_the_limit_and_leaves_the_queue_whole() {
    let env = TestEnv::new().await;
    let emails: Vec<String> = (0..7).map(|i| format!("dead{i}@example.com")).collect();
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    let published = publish_dead_letters(&env, &refs, "gave up after 3 attempts: boom").await;
    assert_eq!(dead_len(&env, 7).await, 7);

    let page = json_lines(&env, &["dlq", "list", "--limit", "3"]);
    assert_eq!(ids(&page), published[..3], "the head of the queue, in order");
    assert_eq!(page[0]["contact"], "dead0@example.com");
    assert_eq!(page[0]["attempts"], 3);
    assert_eq!(page[0]["command"]["event_id"], published[0]);
    assert_eq!(dead_len(&env, 7).await, 7, "listing removes nothing");

    let (code, text) = worker_cmd(&env, &["dlq", "list", "--limit", "3"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("3 dead letter(s) shown; 7 match, 7 in the queue (raise --limit for more)"),
        "{text}"
    );
    // The queue kept its order: the same page again.
    assert_eq!(ids(&json_lines(&env, &["dlq", "list", "--limit", "3"])), published[..3]);
    let none = json_lines(&env, &["dlq", "list", "--action", "update"]);
    assert!(none.is_empty(), "{none:?}");
    let shown = json_lines(&env, &["dlq", "show", &published[4]]);
    assert_eq!(ids(&shown), [published[4].clone()]);
    assert_eq!(dead_len(&env, 7).await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_purge_saves_the_letters_to_a_file_before_removing_them() {
    let env = TestEnv::new().await;
    let published = publish_dead_letters(
        &env,
        &["p0@example.com", "p1@example.com", "p2@example.com", "p3@example.com"],
        "boom",
    )
    .await;
    let dir = std::env::temp_dir().join(format!("purge-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();

    let (code, out) = worker_cmd(&env, &["dlq", "purge", "--all"]);
    assert_eq!(code, 2, "--all without --yes is refused: {out}");
    assert!(out.contains("--yes"), "{out}");
    let (code, out) = worker_cmd(&env, &["dlq", "purge", &published[1]]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&published[1]) && out.contains("1 dead letter(s) would be deleted; nothing was deleted"),
        "{out}"
    );
    assert_eq!(dead_len(&env, 4).await, 4, "nothing is deleted without --yes");

    let one = dir.join("one.jsonl");
    let (code, out) = worker_cmd(
        &env,
        &["dlq", "purge", &published[1], "--yes", "--to", one.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 dead letter(s) deleted; saved to"), "{out}");
    let saved: Vec<Value> = std::fs::read_to_string(&one)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&saved), [published[1].clone()]);
    assert_eq!(saved[0]["error"], "boom");
    assert_eq!(saved[0]["command"]["contact"]["email"], "p1@example.com");
    assert_eq!(dead_len(&env, 3).await, 3);

    let rest = dir.join("rest.jsonl");
    let (code, out) = worker_cmd(
        &env,
        &["dlq", "purge", "--all", "--yes", "--to", rest.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let saved: Vec<Value> = std::fs::read_to_string(&rest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        ids(&saved),
        [published[0].clone(), published[2].clone(), published[3].clone()]
    );
    assert_eq!(dead_len(&env, 0).await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
