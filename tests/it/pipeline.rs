//! The whole path through the real broker: ingress → RabbitMQ → several workers → Postgres.

use futures_util::future::join_all;
use serde_json::json;
use testkit::{send, TestEnv};

#[tokio::test]
async fn thirty_concurrent_adds_on_three_workers_make_exactly_one_user() {
    let mut env = TestEnv::new().await;
    env.simh.add_segment(1, "VIP", "manual");
    env.simh.add_person("rush@example.com", json!({"First Name": "Rush"}));
    env.simh.add_to_segment(1, "rush@example.com");
    let url = env.start_ingress().await;
    for _ in 0..3 {
        env.start_worker(env.worker_settings()).await;
    }
    let ids = join_all((0..30).map(|_| send(&url, "wpf_action=add", "rush@example.com"))).await;
    for id in &ids {
        assert_eq!(env.wait_final(id).await, "succeeded");
    }
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
    let created: i64 = sqlx::query_scalar("select count(*) from event_log where message like 'Created user #%'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(created, 1, "one event created the user, the others refreshed it");
    assert_eq!(
        env.simh.count_status(429),
        0,
        "the shared limiter kept the simulator happy"
    );
}

#[tokio::test]
async fn each_action_flows_from_webhook_to_tables() {
    let mut env = TestEnv::new().await;
    env.simh.add_segment(5, "Trial", "dynamic");
    env.simh.add_person("flow@example.com", json!({"First Name": "Flo"}));
    env.simh.add_to_segment(5, "flow@example.com");
    let url = env.start_ingress().await;
    let mut s = env.worker_settings();
    s.not_found_attempts = 1; // the ghost ends at once instead of after a minute of retries
    env.start_worker(s).await;

    let update_first = send(&url, "wpf_action=update", "flow@example.com").await;
    assert_eq!(env.wait_final(&update_first).await, "no_user");
    let add = send(&url, "wpf_action=add&role=customer", "flow@example.com").await;
    assert_eq!(env.wait_final(&add).await, "succeeded");
    let tags = send(&url, "wpf_action=update_tags&tags=5,6", "flow@example.com").await;
    assert_eq!(env.wait_final(&tags).await, "succeeded");
    let ghost = send(&url, "wpf_action=add", "ghost@example.com").await;
    assert_eq!(env.wait_final(&ghost).await, "contact_not_found");

    let (role, segs): (String, Vec<i64>) = sqlx::query_as(
        "select u.role, array_agg(s.segment_id order by s.segment_id) from users u
         join user_segments s on s.user_id = u.id group by u.role",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((role.as_str(), segs), ("customer", vec![5, 6]));
}
