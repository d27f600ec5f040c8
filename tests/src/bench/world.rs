//! The benchmark's world: contacts in the simulator spread over segments, and their users in Postgres.

use serde_json::json;

use crate::TestEnv;

pub fn email(i: usize) -> String {
    format!("contact{i}@bench.example.com")
}

/// Contacts that have no user yet (the `add` burst).
pub fn new_email(i: usize) -> String {
    format!("new{i}@bench.example.com")
}

/// `segments` segments, and `contacts` people (`email_of(i)`) in 1–2 of them each.
pub fn people(env: &TestEnv, contacts: usize, segments: i64, email_of: fn(usize) -> String) {
    add_segments(env, segments);
    for i in 0..contacts {
        let e = email_of(i);
        add_person(env, i, &e);
        env.simh.add_to_segment(1 + (i as i64 % segments), &e);
        if i % 3 == 0 {
            env.simh.add_to_segment(1 + ((i as i64 / 3 + 7) % segments), &e);
        }
    }
}

pub fn add_segments(env: &TestEnv, segments: i64) {
    for s in 1..=segments {
        env.simh.add_segment(
            s,
            &format!("Segment {s}"),
            if s % 2 == 0 { "dynamic" } else { "manual" },
        );
    }
}

pub fn add_person(env: &TestEnv, i: usize, email: &str) {
    let plan = ["free", "pro", "team"][i % 3];
    env.simh.add_person(
        email,
        json!({"First Name": format!("First{i}"), "Last Name": format!("Last{i}"), "plan": plan}),
    );
}

/// A local user for each of the first `contacts` contacts (`email(i)`).
pub async fn users(env: &TestEnv, contacts: usize) {
    sqlx::query(
        "insert into users (email, username, password_hash, role)
         select 'contact' || i || '@bench.example.com', 'contact' || i || '@bench.example.com', 'x', 'subscriber'
         from generate_series(0, $1 - 1) as i",
    )
    .bind(contacts as i64)
    .execute(&env.pool)
    .await
    .unwrap();
}

pub async fn succeeded(env: &TestEnv) -> i64 {
    sqlx::query_scalar("select count(*) from webhook_events where status = 'succeeded'")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}
