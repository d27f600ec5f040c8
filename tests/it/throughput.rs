//! Spending the Customer.io budget well: coalescing duplicates, batched reads under
//! backlog that give the same result as one-by-one reads, single calls for a lone webhook.

use futures_util::{stream, StreamExt};
use serde_json::json;
use testkit::{sim::SimConfig, TestEnv};

use testkit::send;

/// Sends webhooks with bounded concurrency; returns their event ids.
async fn send_many(url: &str, query: &str, emails: Vec<String>) -> Vec<String> {
    stream::iter(emails)
        .map(|e| {
            let (u, q) = (url.to_string(), query.to_string());
            async move { send(&u, &q, &e).await }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// "METHOD /path" of every request the simulator received.
fn request_lines(env: &TestEnv) -> Vec<String> {
    env.simh
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_updates_for_ten_contacts_cost_at_most_thirty_syncs() {
    let mut env = TestEnv::new().await;
    env.simh.add_segment(1, "VIP", "manual");
    let emails: Vec<String> = (0..10).map(|i| format!("dup{i}@example.com")).collect();
    for e in &emails {
        env.simh.add_person(e, json!({"First Name": "Dup"}));
        env.simh.add_to_segment(1, e);
        sqlx::query("insert into users (email, username, password_hash, role) values ($1, $1, 'x', 'subscriber')")
            .bind(e)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    let url = env.start_ingress().await;
    // The burst waits in the queue (as behind a backlog), then two workers take it.
    let burst: Vec<String> = (0..1000).map(|i| emails[i % 10].clone()).collect();
    let ids = send_many(&url, "wpf_action=update", burst).await;
    env.start_worker(env.worker_settings()).await;
    env.start_worker(env.worker_settings()).await;
    for id in &ids {
        assert_eq!(env.wait_final(id).await, "succeeded", "{id}");
    }
    let syncs = env
        .count("select count(*) from event_log where message like 'Loaded meta data%'")
        .await;
    let coalesced = env
        .count("select count(*) from event_log where message like 'Already done by event%'")
        .await;
    assert!(syncs <= 30, "{syncs} syncs for 1,000 webhooks of 10 contacts");
    assert_eq!(
        syncs + coalesced,
        1000,
        "every webhook was either synced or satisfied by a later-started sync"
    );
    assert_eq!(env.simh.count_status(429), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_webhook_takes_the_single_calls() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("alone@example.com", json!({}));
    let url = env.start_ingress().await;
    env.start_worker(env.worker_settings()).await;
    let id = send(&url, "wpf_action=add", "alone@example.com").await;
    assert_eq!(env.wait_final(&id).await, "succeeded");
    let paths = request_lines(&env);
    assert!(
        paths
            .iter()
            .any(|p| p == "GET /v1/customers/alone%40example.com/attributes"),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("membership") || p == "POST /v1/customers/attributes"),
        "{paths:?}"
    );
}

/// Seeds the same contacts, segments and users in an environment (the simulator numbers cio_ids in order).
async fn seed_world(env: &TestEnv) -> Vec<String> {
    for (id, name) in [
        (1, "VIP"),
        (2, "Trial"),
        (3, "Newsletter"),
        (4, "Churn risk"),
        (5, "Beta"),
    ] {
        env.simh
            .add_segment(id, name, if id % 2 == 0 { "dynamic" } else { "manual" });
    }
    let emails: Vec<String> = (0..40).map(|i| format!("World{i}@Example.com")).collect();
    for (i, e) in emails.iter().enumerate() {
        let attrs = if i % 3 == 0 {
            json!({"First Name": format!("F{i}"), "Last Name": "", "plan": "free"})
        } else {
            json!({"First Name": format!("F{i}"), "Last Name": format!("L{i}"), "plan": "pro"})
        };
        env.simh.add_person(&e.to_lowercase(), attrs);
        for seg in 1..=5 {
            if (i + seg) % 3 == 0 {
                env.simh.add_to_segment(seg as i64, &e.to_lowercase());
            }
        }
        if i % 2 == 0 {
            sqlx::query("insert into users (email, username, password_hash, role, last_name) values ($1, $1, 'x', 'subscriber', 'Kept')")
                .bind(e.to_lowercase())
                .execute(&env.pool)
                .await
                .unwrap();
        }
    }
    env.simh.remove_person("world39@example.com");
    emails
}

async fn dump(env: &TestEnv) -> String {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select concat_ws('|', u.email, u.username, u.role, u.cio_id, u.customer_id, u.first_name, u.last_name, u.display_name,
                (select string_agg(meta_key || '=' || meta_value, ',' order by meta_key) from user_meta m where m.user_id = u.id),
                (select string_agg(segment_id::text, ',' order by segment_id) from user_segments s where s.user_id = u.id))
         from users u order by u.email",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let segs: Vec<(String,)> = sqlx::query_as("select concat_ws('|', id, name, type) from segments order by id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let events: Vec<(String,)> = sqlx::query_as(
        "select concat_ws('|', lower(email), action, status) from webhook_events order by lower(email), action",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    // The activity log too (segment names, field lists), with user ids folded: creation order
    // may differ between the two runs.
    let log: Vec<(String,)> = sqlx::query_as(
        "select concat_ws('|', lower(e.email), e.action,
                (select string_agg(regexp_replace(l.message, '#[0-9]+', '#N', 'g'), ' / ' order by l.at, l.id)
                 from event_log l where l.event_id = e.event_id))
         from webhook_events e order by lower(e.email), e.action",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    [rows, segs, events, log]
        .concat()
        .into_iter()
        .map(|r| r.0)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Queues an add for every even contact and an update for every odd one, then runs one worker.
async fn run_world(batch_size: usize) -> (String, usize, Vec<String>) {
    let mut env = TestEnv::with_sim(SimConfig {
        app_rate_limit: None,
        ..Default::default()
    })
    .await;
    let emails = seed_world(&env).await;
    let mut s = env.worker_settings();
    s.field_map = worker::fieldmap::FieldMap::from_toml(
        "[fields]\n\"email\" = \"email\"\n\"First Name\" = \"first_name\"\n\"Last Name\" = \"last_name\"\n\"plan\" = \"plan\"\n",
    )
    .unwrap();
    s.batch_size = batch_size;
    s.not_found_attempts = 1; // the missing contact ends at once
    s.app_rate_limit = 1000.0;
    let url = env.start_ingress().await;
    let mut ids = Vec::new();
    for (i, e) in emails.iter().enumerate() {
        let action = if i % 4 == 1 {
            "wpf_action=update"
        } else {
            "wpf_action=add"
        };
        ids.push(send(&url, action, e).await);
    }
    env.start_worker(s).await;
    for id in &ids {
        env.wait_final(id).await;
    }
    let calls = env.simh.app_request_count();
    let paths = request_lines(&env);
    (dump(&env).await, calls, paths)
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_reads_give_the_same_tables_as_one_by_one_reads_for_fewer_calls() {
    let (single, single_calls, single_paths) = run_world(1).await;
    let (batched, batched_calls, batched_paths) = run_world(100).await;
    assert!(
        !single_paths
            .iter()
            .any(|p| p.starts_with("POST /v1/customers/attributes")),
        "batch size 1 never batches"
    );
    assert!(
        batched_paths
            .iter()
            .any(|p| p.starts_with("POST /v1/customers/attributes")),
        "{batched_paths:?}"
    );
    assert!(
        batched_paths.iter().any(|p| p.contains("/membership")),
        "{batched_paths:?}"
    );
    assert_eq!(single, batched, "both paths give the same result");
    assert!(
        single.contains("contact_not_found"),
        "the missing contact is reported on both paths"
    );
    assert!(
        batched_calls * 4 < single_calls,
        "batched: {batched_calls} App API calls, one by one: {single_calls}"
    );
}
