//! What each action does to the public tables, through the worker's pipeline (`sync::process`,
//! a batch of one) against the real database and the simulator.

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use serde_json::json;
use shared::command::Action;
use testkit::{
    pipeline::{command as cmd, run_one as run},
    TestEnv,
};
use worker::sync::{ledger::EventStatus, Outcome};

fn seed_jane(env: &TestEnv) -> String {
    env.simh.add_segment(1, "VIP", "manual");
    env.simh.add_segment(2, "Trial", "dynamic");
    env.simh.add_segment(3, "Newsletter", "manual");
    let cio = env.simh.add_person(
        "jane@example.com",
        json!({"First Name": "Jane", "Last Name": "Doe", "plan": "pro"}),
    );
    env.simh.add_to_segment(1, "jane@example.com");
    env.simh.add_to_segment(2, "jane@example.com");
    cio
}

#[derive(Debug, sqlx::FromRow)]
struct User {
    id: i64,
    email: String,
    username: String,
    password_hash: String,
    role: String,
    cio_id: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    display_name: Option<String>,
}

async fn users(env: &TestEnv) -> Vec<User> {
    sqlx::query_as("select id, email, username, password_hash, role, cio_id, first_name, last_name, display_name from users order by id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn segments_of(env: &TestEnv, user: i64) -> Vec<i64> {
    sqlx::query_scalar("select segment_id from user_segments where user_id = $1 order by 1")
        .bind(user)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn add_creates_the_user_with_fields_segments_role_and_a_wp_fusion_style_log() {
    let env = TestEnv::new().await;
    let cio = seed_jane(&env);
    let w = env.worker(env.worker_settings()).await;
    let mut c = cmd(Action::Add, "Jane@Example.com");
    c.role = Some("customer".into());
    let out = run(&w, &c).await;
    let Outcome::Succeeded { user_id, created: true } = out else {
        panic!("{out:?}")
    };
    let u = users(&env).await;
    assert_eq!(u.len(), 1);
    let u = &u[0];
    assert_eq!(u.id, user_id);
    assert_eq!(u.email, "jane@example.com", "the Customer.io e-mail, as mapped");
    assert_eq!(u.username, "jane@example.com");
    assert_eq!(u.role, "customer");
    assert_eq!(u.cio_id.as_deref(), Some(cio.as_str()));
    assert_eq!(
        (u.first_name.as_deref(), u.last_name.as_deref()),
        (Some("Jane"), Some("Doe"))
    );
    assert_eq!(u.display_name.as_deref(), Some("Jane Doe"));
    assert!(u.password_hash.starts_with("$argon2id$"));
    assert_eq!(segments_of(&env, user_id).await, vec![1, 2]);
    // The catalogue (names and types) came from GET /v1/segments the first time.
    let names: Vec<String> = sqlx::query_scalar("select name || ':' || type from segments order by id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(names, vec!["VIP:manual", "Trial:dynamic", "Newsletter:manual"]);
    let log = env.event_log(&c.event_id.to_string()).await;
    assert_eq!(log[0], "Received add webhook for contact Jane@Example.com");
    assert_eq!(
        log[1],
        "Loaded meta data from Customer.io: email: jane@example.com, First Name: Jane, Last Name: Doe"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with(&format!("Created user #{user_id} (role customer"))),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l == "Loaded segment(s): VIP, Trial (2 added, 0 removed)"),
        "{log:?}"
    );
    assert_eq!(
        env.event_status(&c.event_id.to_string()).await.as_deref(),
        Some("succeeded")
    );
    // No outbox rows: neither feature was asked for.
    let n: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn add_for_an_existing_user_refreshes_it_without_a_duplicate() {
    let env = TestEnv::new().await;
    seed_jane(&env);
    let w = env.worker(env.worker_settings()).await;
    run(&w, &cmd(Action::Add, "jane@example.com")).await;
    let before = users(&env).await.remove(0);
    env.simh.set_attribute("jane@example.com", "First Name", json!("Janet"));
    let mut again = cmd(Action::Add, "JANE@example.com");
    again.send_notification = true;
    let out = run(&w, &again).await;
    assert_eq!(
        out,
        Outcome::Succeeded {
            user_id: before.id,
            created: false
        }
    );
    let after = users(&env).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].first_name.as_deref(), Some("Janet"));
    assert_eq!(after[0].password_hash, before.password_hash, "no new password");
    let n: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "no e-mail for an existing user");
    let log = env.event_log(&again.event_id.to_string()).await;
    assert!(log.iter().any(|l| l.contains("already exists")), "{log:?}");
}

#[tokio::test]
async fn refused_roles_fall_back_to_the_default_with_a_warning_naming_them() {
    let env = TestEnv::new().await;
    env.simh.add_person("a@example.com", json!({}));
    env.simh.add_person("b@example.com", json!({}));
    let w = env.worker(env.worker_settings()).await;
    let mut a = cmd(Action::Add, "a@example.com");
    a.role = Some("administrator".into());
    let mut b = cmd(Action::Add, "b@example.com");
    b.role = Some("wizard".into());
    run(&w, &a).await;
    run(&w, &b).await;
    let u = users(&env).await;
    assert_eq!((u[0].role.as_str(), u[1].role.as_str()), ("subscriber", "subscriber"));
    let la = env.event_log(&a.event_id.to_string()).await;
    assert!(
        la.iter().any(|l| l.contains("Role administrator is protected")),
        "{la:?}"
    );
    let lb = env.event_log(&b.event_id.to_string()).await;
    assert!(
        lb.iter().any(|l| l.contains("Role wizard is not a registered role")),
        "{lb:?}"
    );
}

#[tokio::test]
async fn usernames_get_a_digit_suffix_and_a_taken_mapped_login_is_rejected() {
    let env = TestEnv::new().await;
    env.simh.add_person("x@example.com", json!({"username": "bob"}));
    env.simh.add_person("y@example.com", json!({"username": "bob"}));
    env.simh.add_person("z@example.com", json!({}));
    let mut s = env.worker_settings();
    s.field_map =
        worker::fieldmap::FieldMap::from_toml("[fields]\n\"email\" = \"email\"\n\"username\" = \"user_login\"\n")
            .unwrap();
    let w = env.worker(s).await;
    // Someone already owns the username "z@example.com".
    sqlx::query("insert into users (email, username, password_hash, role) values ('other@example.com', 'z@example.com', 'x', 'subscriber')")
        .execute(&env.pool)
        .await
        .unwrap();
    assert!(matches!(
        run(&w, &cmd(Action::Add, "x@example.com")).await,
        Outcome::Succeeded { created: true, .. }
    ));
    let y = cmd(Action::Add, "y@example.com");
    let out = run(&w, &y).await;
    assert!(
        matches!(&out, Outcome::Rejected(r) if r.contains("user_login bob")),
        "{out:?}"
    );
    assert_eq!(
        env.event_status(&y.event_id.to_string()).await.as_deref(),
        Some("rejected")
    );
    run(&w, &cmd(Action::Add, "z@example.com")).await;
    let z: String = sqlx::query_scalar("select username from users where email = 'z@example.com'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(z.starts_with("z@example.com") && z.len() > "z@example.com".len(), "{z}");
    assert!(z["z@example.com".len()..].chars().all(|c| c.is_ascii_digit()), "{z}");
}

#[tokio::test]
async fn mapped_password_is_used_and_verifies() {
    let env = TestEnv::new().await;
    env.simh
        .add_person("p@example.com", json!({"pw": "chosen-in-customer-io"}));
    let mut s = env.worker_settings();
    s.field_map = worker::fieldmap::FieldMap::from_toml("[fields]\n\"pw\" = \"user_pass\"\n").unwrap();
    let w = env.worker(s).await;
    let c = cmd(Action::Add, "p@example.com");
    run(&w, &c).await;
    let u = users(&env).await.remove(0);
    let h = PasswordHash::new(&u.password_hash).unwrap();
    assert!(Argon2::default().verify_password(b"chosen-in-customer-io", &h).is_ok());
    let log = env.event_log(&c.event_id.to_string()).await.join("\n");
    assert!(
        !log.contains("chosen-in-customer-io"),
        "the password never reaches the log"
    );
}

#[tokio::test]
async fn update_without_a_local_user_is_no_user() {
    let env = TestEnv::new().await;
    seed_jane(&env);
    let w = env.worker(env.worker_settings()).await;
    let c = cmd(Action::Update, "jane@example.com");
    assert_eq!(run(&w, &c).await, Outcome::NoUser);
    assert!(users(&env).await.is_empty());
    let log = env.event_log(&c.event_id.to_string()).await;
    assert!(log.iter().any(|l| l.contains("no matching user found")), "{log:?}");
}

#[tokio::test]
async fn update_refreshes_fields_meta_segments_and_role_but_empty_values_do_not_clear() {
    let env = TestEnv::new().await;
    seed_jane(&env);
    let mut s = env.worker_settings();
    s.field_map = worker::fieldmap::FieldMap::from_toml(
        "[fields]\n\"email\" = \"email\"\n\"First Name\" = \"first_name\"\n\"Last Name\" = \"last_name\"\n\"plan\" = \"plan\"\n",
    )
    .unwrap();
    let w = env.worker(s).await;
    let Outcome::Succeeded { user_id, .. } = run(&w, &cmd(Action::Add, "jane@example.com")).await else {
        panic!()
    };
    env.simh.set_attribute("jane@example.com", "Last Name", json!(""));
    env.simh.set_attribute("jane@example.com", "plan", json!("enterprise"));
    env.simh.remove_from_segment(2, "jane@example.com");
    env.simh.add_to_segment(3, "jane@example.com");
    let mut c = cmd(Action::Update, "jane@example.com");
    c.role = Some("customer".into());
    assert_eq!(
        run(&w, &c).await,
        Outcome::Succeeded {
            user_id,
            created: false
        }
    );
    let u = users(&env).await.remove(0);
    assert_eq!(
        u.last_name.as_deref(),
        Some("Doe"),
        "empty attribute kept the local value"
    );
    assert_eq!(u.role, "customer");
    let plan: String = sqlx::query_scalar("select meta_value from user_meta where user_id = $1 and meta_key = 'plan'")
        .bind(user_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(plan, "enterprise");
    assert_eq!(segments_of(&env, user_id).await, vec![1, 3]);
    let log = env.event_log(&c.event_id.to_string()).await;
    assert!(
        log.iter()
            .any(|l| l == "Loaded segment(s): VIP, Newsletter (1 added, 1 removed)"),
        "{log:?}"
    );
}

#[tokio::test]
async fn protected_users_keep_role_and_email() {
    let env = TestEnv::new().await;
    let cio = env.simh.add_person("boss@example.com", json!({"First Name": "Big"}));
    sqlx::query("insert into users (email, username, password_hash, role, cio_id) values ('old-boss@example.com', 'boss', 'h', 'administrator', $1)")
        .bind(&cio)
        .execute(&env.pool)
        .await
        .unwrap();
    let w = env.worker(env.worker_settings()).await;
    let mut c = cmd(Action::Update, "boss@example.com");
    c.role = Some("subscriber".into());
    assert!(matches!(run(&w, &c).await, Outcome::Succeeded { .. }));
    let u = users(&env).await.remove(0);
    assert_eq!(
        (u.role.as_str(), u.email.as_str(), u.username.as_str()),
        ("administrator", "old-boss@example.com", "boss")
    );
    assert_eq!(u.first_name.as_deref(), Some("Big"));
    let log = env.event_log(&c.event_id.to_string()).await;
    assert!(
        log.iter().any(|l| l.contains("protected role administrator")),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_user_is_matched_by_cio_id_after_an_email_change() {
    let env = TestEnv::new().await;
    let cio = env.simh.add_person("new@example.com", json!({}));
    sqlx::query("insert into users (email, username, password_hash, role, cio_id) values ('old@example.com', 'old', 'h', 'subscriber', $1)")
        .bind(&cio)
        .execute(&env.pool)
        .await
        .unwrap();
    let w = env.worker(env.worker_settings()).await;
    let c = cmd(Action::Add, "new@example.com");
    assert!(matches!(run(&w, &c).await, Outcome::Succeeded { created: false, .. }));
    let u = users(&env).await;
    assert_eq!(u.len(), 1, "no duplicate");
    assert_eq!(u[0].email, "new@example.com");
}

#[tokio::test]
async fn update_tags_uses_url_tags_without_asking_customer_io_for_segments() {
    let env = TestEnv::new().await;
    seed_jane(&env);
    let w = env.worker(env.worker_settings()).await;
    let Outcome::Succeeded { user_id, .. } = run(&w, &cmd(Action::Add, "jane@example.com")).await else {
        panic!()
    };
    env.simh.reset_log();
    let mut c = cmd(Action::UpdateTags, "jane@example.com");
    c.tags = Some(vec![3, 99]);
    assert!(matches!(run(&w, &c).await, Outcome::Succeeded { .. }));
    assert_eq!(segments_of(&env, user_id).await, vec![3, 99]);
    let paths: Vec<String> = env.simh.requests().iter().map(|r| r.path.clone()).collect();
    assert!(!paths.iter().any(|p| p.starts_with("/v1/customers")), "{paths:?}");
    assert!(
        paths.iter().any(|p| p == "/v1/segments"),
        "the unknown ids refreshed the catalogue: {paths:?}"
    );
    let log = env.event_log(&c.event_id.to_string()).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("Loaded segment(s): Newsletter, (Unknown Segment: 99)")),
        "{log:?}"
    );
}

#[tokio::test]
async fn update_tags_without_a_user_spends_no_api_call() {
    let env = TestEnv::new().await;
    seed_jane(&env);
    let w = env.worker(env.worker_settings()).await;
    env.simh.reset_log();
    assert_eq!(
        run(&w, &cmd(Action::UpdateTags, "jane@example.com")).await,
        Outcome::NoUser
    );
    assert_eq!(env.simh.app_request_count(), 0);
}

#[tokio::test]
async fn unknown_contact_is_contact_not_found() {
    let env = TestEnv::new().await;
    let mut s = env.worker_settings();
    s.not_found_attempts = 1; // no retries for a 404
    let w = env.worker(s).await;
    let c = cmd(Action::Add, "ghost@example.com");
    assert_eq!(run(&w, &c).await, Outcome::ContactNotFound);
    assert!(users(&env).await.is_empty());
    assert_eq!(
        env.event_status(&c.event_id.to_string()).await.as_deref(),
        Some("contact_not_found")
    );
}

#[tokio::test]
async fn a_redelivered_finished_event_changes_nothing() {
    let env = TestEnv::new().await;
    seed_jane(&env);
    let w = env.worker(env.worker_settings()).await;
    let c = cmd(Action::Add, "jane@example.com");
    run(&w, &c).await;
    env.simh.reset_log();
    assert_eq!(run(&w, &c).await, Outcome::AlreadyDone(EventStatus::Succeeded));
    assert_eq!(env.simh.app_request_count(), 0);
}
