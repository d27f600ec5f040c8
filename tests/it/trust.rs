//! Trust boundaries: what Customer.io data and webhook fields may change (identity, e-mail, roles,
//! order), secrets kept out of logs, side effects that survive long outages, and Customer.io's
//! eventual consistency. Through the worker's pipeline (`sync::process`), its outbox, the real
//! ingress and RabbitMQ where the path involves them, against Postgres, the simulator and a real
//! SMTP server.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use chrono::Utc;
use serde_json::json;
use shared::command::{Action, SyncV1};
use testkit::{
    env::SECRETS_KEY,
    sim::{Api, Fault, FaultKind},
    smtp::SmtpSink,
    wait_until, TestEnv,
};
use uuid::Uuid;
use worker::{
    secretbox::SecretBox,
    sync::{ledger::EventStatus, Incoming, Outcome, Settlement},
    Worker,
};

const WAIT: Duration = Duration::from_secs(40);
const OTHER_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

// ---------------------------------------------------------------------------------------------
// helpers

use testkit::pipeline::{command as cmd, run_one as run};

/// One command at a given delivery attempt.
async fn run_attempt(w: &Worker, c: &SyncV1, attempt: u32) -> Settlement {
    let inc = Incoming {
        cmd: c.clone(),
        attempt,
        key_label: None,
    };
    worker::sync::process(&w.ctx, vec![inc]).await.remove(0)
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct User {
    id: i64,
    email: String,
    role: String,
    cio_id: Option<String>,
}

async fn user(env: &TestEnv, id: i64) -> User {
    sqlx::query_as("select id, email, role, cio_id from users where id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn user_count(env: &TestEnv) -> i64 {
    sqlx::query_scalar("select count(*) from users")
        .fetch_one(&env.pool)
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

async fn event_row(env: &TestEnv, id: Uuid) -> (String, Option<String>) {
    sqlx::query_as("select status, last_error from webhook_events where event_id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn created(o: Outcome) -> i64 {
    match o {
        Outcome::Succeeded { user_id, .. } => user_id,
        other => panic!("expected success, got {other:?}"),
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    kind: String,
    recipient: String,
    status: String,
    attempts: i32,
}

async fn outbox(env: &TestEnv) -> Vec<OutboxRow> {
    sqlx::query_as("select id, kind, recipient, status, attempts from outbox order by id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Delivers due outbox rows with this worker until none is left; how many it delivered.
async fn deliver_all(w: &Worker) -> usize {
    let mut n = 0;
    while w.outbox.deliver_next().await.unwrap() {
        n += 1;
        assert!(n < 100, "the outbox does not drain");
    }
    n
}

fn verifies(hash: &str, password: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), &PasswordHash::new(hash).unwrap())
        .is_ok()
}

async fn hash_of(env: &TestEnv, id: i64) -> String {
    sqlx::query_scalar("select password_hash from users where id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Everything logged on this thread while the guard lives, through the binaries' own text
/// format (`shared::telemetry::text_subscriber`) at the given filter.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn start(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
        let c = Captured::default();
        let writer = c.clone();
        let subscriber =
            shared::telemetry::text_subscriber(tracing_subscriber::EnvFilter::new(filter), move || writer.clone());
        (c, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. identity

/// A `cio_id` in the body naming another person's profile is rejected (add, update); the
/// victim's account is untouched; `update_tags` never matches by the body's cio_id.
#[tokio::test]
async fn a_webhook_cio_id_naming_another_profile_is_rejected() {
    let env = TestEnv::new().await;
    env.simh.add_segment(1, "VIP", "manual");
    let victim_cio = env.simh.add_person("jane@example.com", json!({"First Name": "Jane"}));
    env.simh.add_to_segment(1, "jane@example.com");
    env.simh
        .add_person("mallory@example.com", json!({"First Name": "Mallory"}));
    let w = env.worker(env.worker_settings()).await;
    let jane = created(run(&w, &cmd(Action::Add, "jane@example.com")).await);
    let before = user(&env, jane).await;

    for action in [Action::Add, Action::Update] {
        let mut c = cmd(action, "mallory@example.com");
        c.contact.cio_id = Some(victim_cio.clone());
        match run(&w, &c).await {
            Outcome::Rejected(reason) => assert!(reason.contains(&victim_cio), "{reason}"),
            other => panic!("{action}: expected rejected, got {other:?}"),
        }
        let (status, error) = event_row(&env, c.event_id).await;
        assert_eq!(status, EventStatus::Rejected.as_str());
        assert!(error.is_some_and(|e| e.contains("another e-mail")));
        let log = env.event_log(&c.event_id.to_string()).await;
        assert!(log.iter().any(|l| l.starts_with("Rejected: cio_id")), "{log:?}");
    }
    assert_eq!(user(&env, jane).await, before);
    assert_eq!(user_count(&env).await, 1, "no user for mallory either");

    // update_tags matches by e-mail only: mallory has no user, so nothing changes for jane.
    let mut tags = cmd(Action::UpdateTags, "mallory@example.com");
    tags.contact.cio_id = Some(victim_cio.clone());
    tags.tags = Some(vec![]);
    assert_eq!(run(&w, &tags).await, Outcome::NoUser);
    assert_eq!(segments_of(&env, jane).await, vec![1]);

    // The profile's own cio_id with its e-mail is fine.
    let mut ok = cmd(Action::Update, "jane@example.com");
    ok.contact.cio_id = Some(victim_cio.clone());
    assert_eq!(created(run(&w, &ok).await), jane);
}

/// A user stays tied to its Customer.io profile: a profile with the same e-mail but another
/// cio_id (deleted and re-created) does not take the account over.
#[tokio::test]
async fn a_users_stored_cio_id_is_never_replaced() {
    let env = TestEnv::new().await;
    let cio = env.simh.add_person("jane@example.com", json!({"First Name": "Jane"}));
    let w = env.worker(env.worker_settings()).await;
    let jane = created(run(&w, &cmd(Action::Add, "jane@example.com")).await);
    assert_eq!(user(&env, jane).await.cio_id.as_deref(), Some(cio.as_str()));

    env.simh.remove_person("jane@example.com");
    let other = env
        .simh
        .add_person("jane@example.com", json!({"First Name": "Impostor"}));
    assert_ne!(other, cio);
    let c = cmd(Action::Update, "jane@example.com");
    match run(&w, &c).await {
        Outcome::Rejected(reason) => assert!(reason.contains("never replaced"), "{reason}"),
        other => panic!("expected rejected, got {other:?}"),
    }
    assert_eq!(user(&env, jane).await.cio_id.as_deref(), Some(cio.as_str()));
    let first: Option<String> = sqlx::query_scalar("select first_name from users where id = $1")
        .bind(jane)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("Jane"));
    let log = env.event_log(&c.event_id.to_string()).await;
    assert!(log.iter().any(|l| l.starts_with("Rejected: user #")), "{log:?}");
}

/// Addresses fold the same way in Rust and in SQL whatever the collation: a user stored as
/// `Ünal@…` is the user of a webhook for `ünal@…` even when the column's collation is "C"
/// (where `lower()` folds ASCII only).
#[tokio::test]
async fn non_ascii_emails_match_on_any_collation() {
    let env = TestEnv::new().await;
    sqlx::query(r#"alter table users alter column email type text collate "C""#)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into users (email, username, password_hash, role) values ('Ünal@example.com', 'unal', 'x', 'subscriber')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    env.simh.add_person("ünal@example.com", json!({"First Name": "Ünal"}));
    let w = env.worker(env.worker_settings()).await;
    let id = created(run(&w, &cmd(Action::Update, "ünal@example.com")).await);
    assert_eq!(user(&env, id).await.email, "Ünal@example.com");
    // And an add never makes a second account for the same address.
    assert_eq!(created(run(&w, &cmd(Action::Add, "ünal@example.com")).await), id);
    assert_eq!(user_count(&env).await, 1);
}

// ---------------------------------------------------------------------------------------------
// 3. roles

/// Only roles marked assignable may be given by a webhook; a role an operator adds is refused
/// (default role, log naming it) until they mark it assignable.
#[tokio::test]
async fn a_webhook_gives_only_assignable_roles() {
    let env = TestEnv::new().await;
    env.simh.add_person("ed@example.com", json!({}));
    env.simh.add_person("cu@example.com", json!({}));
    sqlx::query("insert into roles (name) values ('editor')")
        .execute(&env.pool)
        .await
        .unwrap();
    let w = env.worker(env.worker_settings()).await;

    let mut add = cmd(Action::Add, "ed@example.com");
    add.role = Some("editor".into());
    let ed = created(run(&w, &add).await);
    assert_eq!(user(&env, ed).await.role, "subscriber");
    let log = env.event_log(&add.event_id.to_string()).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("Role editor is not assignable") && l.contains("default role subscriber")),
        "{log:?}"
    );
    let mut update = cmd(Action::Update, "ed@example.com");
    update.role = Some("editor".into());
    run(&w, &update).await;
    assert_eq!(user(&env, ed).await.role, "subscriber");

    let mut cu = cmd(Action::Add, "cu@example.com");
    cu.role = Some("customer".into());
    let cu = created(run(&w, &cu).await);
    assert_eq!(user(&env, cu).await.role, "customer", "seeded assignable");

    sqlx::query("update roles set assignable = true where name = 'editor'")
        .execute(&env.pool)
        .await
        .unwrap();
    let mut update = cmd(Action::Update, "ed@example.com");
    update.role = Some("editor".into());
    run(&w, &update).await;
    assert_eq!(user(&env, ed).await.role, "editor");
}

// ---------------------------------------------------------------------------------------------
// 5. secrets stay secret

/// The worker refuses to start with a field map that copies the password-return attribute
/// anywhere but `user_pass`.
#[tokio::test]
async fn start_up_refuses_a_field_map_that_copies_the_returned_password() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("fieldmap-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("map.toml");
    std::fs::write(&file, "[fields]\n\"email\" = \"email\"\n\"password\" = \"pw_copy\"\n").unwrap();
    let mut child = std::process::Command::new(testkit::procs::bin_dir().join("worker"))
        .arg("run")
        .env_clear()
        .envs(testkit::procs::worker_env(&env))
        .env("RETURN_PASSWORD_FIELD", "password")
        .env("SECRETS_KEY", SECRETS_KEY)
        .env("FIELD_MAP_FILE", &file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until("the worker to refuse to start", WAIT, || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    if status.success() {
        panic!("the worker started");
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("FIELD_MAP_FILE") && text.contains("user_pass"), "{text}");
    std::fs::remove_dir_all(&dir).ok();

    // The same check guards a worker built in-process.
    let mut s = TestEnv::with_password_return(env.worker_settings());
    s.field_map = worker::fieldmap::FieldMap::from_toml("[fields]\n\"password\" = \"pw_copy\"\n").unwrap();
    assert!(Worker::build(s, env.pool.clone()).await.is_err());
    let mut s = TestEnv::with_password_return(env.worker_settings());
    s.field_map = worker::fieldmap::FieldMap::from_toml("[fields]\n\"password\" = \"user_pass\"\n").unwrap();
    assert!(Worker::build(s, env.pool.clone()).await.is_ok());
}

/// At info the process log names events and users by id, never the address or attribute
/// values; at debug it has the readable lines, with control characters escaped so that a value
/// cannot forge a log line. The event log in Postgres keeps the readable lines.
#[tokio::test]
async fn process_logs_carry_ids_at_info_and_escape_values_at_debug() {
    let env = TestEnv::new().await;
    env.simh.add_person(
        "jane@example.com",
        json!({"First Name": "Janet\nERROR forged line", "Last Name": "Doe-Secretvalue"}),
    );
    let w = env.worker(env.worker_settings()).await;

    let c = cmd(Action::Add, "jane@example.com");
    let id = {
        let (logs, _guard) = Captured::start("info,testkit=off");
        let id = created(run(&w, &c).await);
        let text = logs.text();
        assert!(text.contains(&c.event_id.to_string()), "{text}");
        assert!(text.contains(&format!("user_id={id}")), "{text}");
        for private in ["jane@example.com", "Janet", "Secretvalue"] {
            assert!(!text.contains(private), "{private} at info: {text}");
        }
        id
    };
    let log = env.event_log(&c.event_id.to_string()).await;
    assert!(
        log.iter()
            .any(|l| l == "Received add webhook for contact jane@example.com"),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("Doe-Secretvalue")), "{log:?}");

    let (logs, _guard) = Captured::start("debug,testkit=off");
    let c = cmd(Action::Update, "jane@example.com");
    assert_eq!(created(run(&w, &c).await), id);
    let text = logs.text();
    assert!(
        text.contains("jane@example.com"),
        "the readable lines are there at debug"
    );
    assert!(text.contains(r"Janet\nERROR forged line"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("ERROR forged")),
        "a value forged a log line: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. e-mail changes

/// Customer.io changing a contact's e-mail changes the user's, and the old address gets a notice
/// over SMTP (through the outbox); never for protected users, never when `SYNC_EMAIL_CHANGES` is
/// off.
#[tokio::test]
async fn email_changes_follow_customer_io_and_tell_the_old_address() {
    let sink = SmtpSink::start().await;
    let env = TestEnv::new().await;
    env.simh.add_person("jane@example.com", json!({}));
    env.simh.add_person("boss@example.com", json!({}));
    env.simh.add_person("kept@example.com", json!({}));
    let mut s = env.worker_settings();
    s.mail = Some(sink.mail_settings("https://app.example.org/login"));
    let w = env.worker(s.clone()).await;
    let jane = created(run(&w, &cmd(Action::Add, "jane@example.com")).await);
    let boss = created(run(&w, &cmd(Action::Add, "boss@example.com")).await);
    let kept = created(run(&w, &cmd(Action::Add, "kept@example.com")).await);
    sqlx::query("update users set role = 'administrator' where id = $1")
        .bind(boss)
        .execute(&env.pool)
        .await
        .unwrap();

    env.simh
        .set_attribute("jane@example.com", "email", json!("jane.new@example.com"));
    env.simh
        .set_attribute("boss@example.com", "email", json!("boss.new@example.com"));
    env.simh
        .set_attribute("kept@example.com", "email", json!("kept.new@example.com"));
    run(&w, &cmd(Action::Update, "jane.new@example.com")).await;
    run(&w, &cmd(Action::Update, "boss.new@example.com")).await;
    let mut off = s.clone();
    off.sync_email_changes = false;
    let w_off = env.worker(off).await;
    run(&w_off, &cmd(Action::Update, "kept.new@example.com")).await;

    assert_eq!(user(&env, jane).await.email, "jane.new@example.com");
    assert_eq!(user(&env, boss).await.email, "boss@example.com", "protected");
    assert_eq!(
        user(&env, kept).await.email,
        "kept@example.com",
        "SYNC_EMAIL_CHANGES=false"
    );

    let notices: Vec<OutboxRow> = outbox(&env)
        .await
        .into_iter()
        .filter(|r| r.kind == "email_change_notice")
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].recipient, "jane@example.com");
    deliver_all(&w).await;
    let mails: Vec<_> = sink
        .messages()
        .into_iter()
        .filter(|m| m.rcpt_to == vec!["jane@example.com".to_string()])
        .collect();
    assert_eq!(mails.len(), 1, "{:?}", sink.messages());
    assert!(mails[0].data.contains("login e-mail"), "{}", mails[0].data);
    assert!(
        !mails[0].data.contains("jane.new@example.com"),
        "the notice does not name the new address"
    );
    let sent: String = sqlx::query_scalar("select status from outbox where id = $1")
        .bind(notices[0].id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(sent, "sent");
}

// ---------------------------------------------------------------------------------------------
// 6. side effects survive long outages

/// A failing password return is retried for as long as the row is younger than
/// `OUTBOX_GIVE_UP_AFTER`, however many attempts that takes; past that age it is `dead`.
/// Through the ingress, RabbitMQ and a running worker.
#[tokio::test]
async fn outbox_rows_give_up_by_age_not_by_attempts() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("down@example.com", json!({}));
    env.simh.inject(Fault::new(Api::Track, FaultKind::Status(503)));
    let ingress = env.start_ingress().await;
    env.start_worker(TestEnv::with_password_return(env.worker_settings()))
        .await;
    let event = testkit::send(&ingress, "wpf_action=add", "down@example.com").await;
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let row = wait_until("a failed password return", WAIT, || async {
        outbox(&env).await.into_iter().find(|r| r.attempts >= 1)
    })
    .await;
    // Many attempts later (as after hours of outage), it is still retried.
    sqlx::query("update outbox set attempts = 50, next_attempt_at = now() where id = $1")
        .bind(row.id)
        .execute(&env.pool)
        .await
        .unwrap();
    let r = wait_until("attempt 51", WAIT, || async {
        outbox(&env)
            .await
            .into_iter()
            .find(|r| r.id == row.id && r.attempts >= 51)
    })
    .await;
    assert_eq!(r.status, "pending");
    // Older than OUTBOX_GIVE_UP_AFTER (24 h): the next failure gives it up.
    sqlx::query("update outbox set pending_since = now() - interval '25 hours', next_attempt_at = now() where id = $1")
        .bind(row.id)
        .execute(&env.pool)
        .await
        .unwrap();
    wait_until("the row to be dead", WAIT, || async {
        outbox(&env)
            .await
            .into_iter()
            .find(|r| r.id == row.id && r.status == "dead")
    })
    .await;
    let log = env.event_log(&event).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("Gave up sending the generated password") && l.contains("OUTBOX_GIVE_UP_AFTER")),
        "{log:?}"
    );
}

/// A worker without the password return or SMTP leaves those rows to a worker that has them.
#[tokio::test]
async fn a_worker_claims_only_rows_it_can_deliver() {
    let sink = SmtpSink::start().await;
    let env = TestEnv::new().await;
    env.simh.add_person("jane@example.com", json!({}));
    let mut full = TestEnv::with_password_return(env.worker_settings());
    full.mail = Some(sink.mail_settings("https://app.example.org/login"));
    let able = env.worker(full).await;
    let unable = env.worker(env.worker_settings()).await;
    let mut c = cmd(Action::Add, "jane@example.com");
    c.send_notification = true;
    created(run(&able, &c).await);
    assert_eq!(outbox(&env).await.len(), 2);

    assert!(!unable.outbox.deliver_next().await.unwrap(), "nothing it can deliver");
    assert!(outbox(&env)
        .await
        .iter()
        .all(|r| r.status == "pending" && r.attempts == 0));
    assert_eq!(deliver_all(&able).await, 2);
    assert!(outbox(&env).await.iter().all(|r| r.status == "sent"));
}

/// Rotating the key: a password sealed with the old key is delivered by a worker whose ring has
/// a new first key and still the old one; what the new ring seals needs only the new key.
#[tokio::test]
async fn a_key_ring_rotation_never_strands_a_pending_password() {
    let env = TestEnv::new().await;
    env.simh.add_person("old@example.com", json!({}));
    env.simh.add_person("new@example.com", json!({}));
    let old = env.worker(TestEnv::with_password_return(env.worker_settings())).await;
    let with_ring = |ring: &str| {
        let mut s = TestEnv::with_password_return(env.worker_settings());
        s.password_return.as_mut().unwrap().secrets = SecretBox::ring(ring).unwrap();
        s
    };
    let rotated = env
        .worker(with_ring(&format!("k2:{OTHER_KEY},default:{SECRETS_KEY}")))
        .await;
    let new_only = env.worker(with_ring(&format!("k2:{OTHER_KEY}"))).await;

    let u_old = created(run(&old, &cmd(Action::Add, "old@example.com")).await);
    assert_eq!(deliver_all(&rotated).await, 1);
    let u_new = created(run(&rotated, &cmd(Action::Add, "new@example.com")).await);
    assert_eq!(deliver_all(&new_only).await, 1);
    assert!(
        outbox(&env).await.iter().all(|r| r.status == "sent"),
        "{:?}",
        outbox(&env).await
    );
    let puts = env.simh.track_puts();
    assert_eq!(puts.len(), 2);
    for (put, user) in puts.iter().zip([u_old, u_new]) {
        let pw = put.body["password"].as_str().unwrap();
        assert!(verifies(&hash_of(&env, user).await, pw));
    }
}

/// The password return addresses the person by `cio_<id>`: an e-mail change in Customer.io
/// before delivery cannot send the password to whoever has the old address.
#[tokio::test]
async fn the_password_return_addresses_the_person_by_cio_id() {
    let env = TestEnv::new().await;
    let cio = env.simh.add_person("jane@example.com", json!({}));
    let w = env.worker(TestEnv::with_password_return(env.worker_settings())).await;
    let jane = created(run(&w, &cmd(Action::Add, "jane@example.com")).await);
    env.simh
        .set_attribute("jane@example.com", "email", json!("jane.new@example.com"));
    assert_eq!(deliver_all(&w).await, 1);
    let puts = env.simh.track_puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].identifier, format!("cio_{cio}"));
    let pw = puts[0].body["password"].as_str().unwrap();
    assert!(verifies(&hash_of(&env, jane).await, pw));
    let person = env.simh.person_by_cio_id(&cio).unwrap();
    assert_eq!(person.email.as_deref(), Some("jane.new@example.com"));
    assert_eq!(person.attributes.get("password").map(String::as_str), Some(pw));
    assert!(
        env.simh.person("jane@example.com").is_none(),
        "no profile made for the old address"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. order

/// A delayed command carrying URL state never undoes a newer one applied to the same user.
#[tokio::test]
async fn an_older_command_with_url_state_is_skipped() {
    let env = TestEnv::new().await;
    env.simh.add_segment(1, "VIP", "manual");
    env.simh.add_segment(2, "Trial", "manual");
    env.simh.add_person("jane@example.com", json!({}));
    let w = env.worker(env.worker_settings()).await;
    let jane = created(run(&w, &cmd(Action::Add, "jane@example.com")).await);

    let mut older = cmd(Action::UpdateTags, "jane@example.com");
    older.tags = Some(vec![2]);
    older.received_at = Utc::now() - chrono::Duration::minutes(5);
    let mut newer = cmd(Action::UpdateTags, "jane@example.com");
    newer.tags = Some(vec![1]);
    created(run(&w, &newer).await);
    let o = run(&w, &older).await;
    assert_eq!(
        o,
        Outcome::Satisfied {
            by: newer.event_id,
            status: EventStatus::Succeeded
        }
    );
    assert_eq!(segments_of(&env, jane).await, vec![1]);
    let log = env.event_log(&older.event_id.to_string()).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("Skipped: event") && l.contains(&newer.event_id.to_string())),
        "{log:?}"
    );

    // The same for a role.
    let mut older_role = cmd(Action::Update, "jane@example.com");
    older_role.role = Some("customer".into());
    older_role.received_at = Utc::now() - chrono::Duration::minutes(1);
    let mut newer_role = cmd(Action::Update, "jane@example.com");
    newer_role.role = Some("subscriber".into());
    created(run(&w, &newer_role).await);
    assert!(matches!(run(&w, &older_role).await, Outcome::Satisfied { .. }));
    assert_eq!(user(&env, jane).await.role, "subscriber");
}

// ---------------------------------------------------------------------------------------------
// 7. Customer.io's eventual consistency

/// A 404 on `add` is retried (about 1 s, 10 s, 1 min) before the event ends
/// `contact_not_found`: a profile created moments after the journey fired is synced. Through the
/// ingress, RabbitMQ's retry queues and a running worker.
#[tokio::test]
async fn a_contact_not_found_yet_is_retried_before_giving_up() {
    let mut env = TestEnv::new().await;
    let ingress = env.start_ingress().await;
    env.start_worker(env.worker_settings()).await;
    let event = testkit::send(&ingress, "wpf_action=add", "late@example.com").await;
    wait_until("the first 404 to be retried", WAIT, || async {
        env.event_status(&event).await.filter(|s| s == "retrying")
    })
    .await;
    env.simh.add_person("late@example.com", json!({}));
    let status = wait_until("the event to finish", Duration::from_secs(90), || async {
        env.event_status(&event)
            .await
            .filter(|s| !matches!(s.as_str(), "processing" | "retrying"))
    })
    .await;
    assert_eq!(status, "succeeded");
    assert_eq!(user_count(&env).await, 1);

    // The last attempt gives up.
    let w = env.worker(env.worker_settings()).await;
    let c = cmd(Action::Update, "never@example.com");
    assert!(matches!(run_attempt(&w, &c, 1).await, Settlement::Retry { .. }));
    assert_eq!(
        run_attempt(&w, &c, worker::sync::NOT_FOUND_ATTEMPTS).await,
        Settlement::Done(Outcome::ContactNotFound)
    );
}
