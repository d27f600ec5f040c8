//! The transactional outbox: the password return to Customer.io's Track API and
//! the welcome e-mail over SMTP, end to end through the ingress, RabbitMQ and in-process workers,
//! against the simulator and a real SMTP server started by the test (`testkit::smtp`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use chrono::Utc;
use serde_json::{json, Value};
use shared::command::{Action, Contact, SyncV1};
use testkit::{
    env::SECRETS_KEY,
    sim::{Api, Fault, FaultKind, RecordedRequest},
    smtp::SmtpSink,
    wait_until, TestEnv,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LOGIN_URL: &str = "https://app.example.org/login";
const WAIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------------
// helpers

/// Everything the process logs while the guard lives (this thread; `#[tokio::test]` runs the
/// workers' tasks on it), at debug level and trace for the project's crates.
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
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let c = Captured::default();
        let writer = c.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,worker=trace,ingress=trace,shared=trace",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (c, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Queues an `add` through the real ingress; returns the event id.
async fn add(ingress: &str, email: &str, notify: bool) -> String {
    testkit::send(ingress, &format!("wpf_action=add&send_notification={notify}"), email).await
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: i64,
    kind: String,
    user_id: i64,
    event_id: Uuid,
    recipient: String,
    secret: Option<Vec<u8>>,
    status: String,
    attempts: i32,
    last_error: Option<String>,
}

async fn rows(env: &TestEnv) -> Vec<Row> {
    sqlx::query_as(
        "select id, kind, user_id, event_id, recipient, secret, status, attempts, last_error
         from outbox order by id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

async fn row(env: &TestEnv, id: i64) -> Row {
    rows(env).await.into_iter().find(|r| r.id == id).expect("outbox row")
}

/// Waits for the only row of `kind` and returns it (once it exists).
async fn the_row(env: &TestEnv, kind: &str) -> Row {
    wait_until(&format!("an outbox row {kind}"), WAIT, || async {
        let mut r: Vec<Row> = rows(env).await.into_iter().filter(|r| r.kind == kind).collect();
        assert!(r.len() <= 1, "{r:?}");
        r.pop()
    })
    .await
}

async fn wait_status(env: &TestEnv, id: i64, status: &str) -> Row {
    wait_until(&format!("outbox row #{id} to be {status}"), WAIT, || async {
        let r = row(env, id).await;
        (r.status == status).then_some(r)
    })
    .await
}

/// Track `PUT /api/v1/customers/…` requests (any status), in order.
fn track_requests(env: &TestEnv) -> Vec<RecordedRequest> {
    env.simh
        .requests()
        .into_iter()
        .filter(|r| r.api == Api::Track && r.method == "PUT" && r.path.starts_with("/api/v1/customers/"))
        .collect()
}

fn password_in(body: &Option<Value>) -> String {
    body.as_ref().unwrap()["password"]
        .as_str()
        .expect("a password")
        .to_string()
}

async fn password_hash(env: &TestEnv, email: &str) -> String {
    sqlx::query_scalar("select password_hash from users where lower(email) = lower($1)")
        .bind(email)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn assert_verifies(env: &TestEnv, email: &str, password: &str) {
    let hash = password_hash(env, email).await;
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = PasswordHash::new(&hash).unwrap();
    assert!(
        Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        "the password returned for {email} verifies against its hash"
    );
}

/// The text of every public table (and the outbox), one line per row.
async fn dump(env: &TestEnv) -> String {
    let mut out = String::new();
    for t in [
        "users",
        "user_meta",
        "segments",
        "user_segments",
        "roles",
        "webhook_events",
        "event_log",
        "outbox",
    ] {
        let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select t::text from {t} t")))
            .fetch_all(&env.pool)
            .await
            .unwrap();
        out.push_str(&lines.join("\n"));
        out.push('\n');
    }
    out
}

/// No password anywhere: not in the tables' text, not in the outbox secrets' bytes (sealed or
/// erased), not in the event log, not in the captured process log.
async fn assert_nowhere(env: &TestEnv, passwords: &[String], logs: Option<&Captured>) {
    let tables = dump(env).await;
    let secrets: Vec<Option<Vec<u8>>> = sqlx::query_scalar("select secret from outbox")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let logs = logs.map(Captured::text).unwrap_or_default();
    for p in passwords {
        assert!(p.len() >= 16, "{p}");
        assert!(!tables.contains(p.as_str()), "a password is in the public tables");
        let hex: String = p.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!tables.contains(&hex), "a password is in the tables as hex");
        for s in secrets.iter().flatten() {
            assert!(
                !s.windows(p.len()).any(|w| w == p.as_bytes()),
                "plaintext in outbox.secret"
            );
        }
        assert!(!logs.contains(p.as_str()), "a password is in the process log");
    }
}

fn mail_settings(sink: &SmtpSink) -> worker::mail::MailSettings {
    sink.mail_settings(LOGIN_URL)
}

// ---------------------------------------------------------------------------------------------
// tests

/// 30 concurrent `add`s (10 contacts × 3) over three workers: one user, one password PUT and
/// one welcome e-mail per contact; each returned password verifies against the user's hash and
/// appears in no table and no log line.
#[tokio::test]
async fn thirty_concurrent_adds_on_three_workers_return_each_password_and_mail_once() {
    let (logs, _guard) = Captured::start();
    let sink = SmtpSink::start().await;
    let mut env = TestEnv::new().await;
    let emails: Vec<String> = (0..10).map(|i| format!("user{i}+vip@example.com")).collect();
    for (i, e) in emails.iter().enumerate() {
        env.simh.add_person(e, json!({"First Name": format!("User{i}")}));
    }
    let ingress = env.start_ingress().await;
    for _ in 0..3 {
        let mut s = TestEnv::with_password_return(env.worker_settings());
        s.mail = Some(mail_settings(&sink));
        s.concurrency = 4;
        env.start_worker(s).await;
    }
    let posts = (0..30).map(|i| add(&ingress, &emails[i % 10], true));
    let events = futures_util::future::join_all(posts).await;
    for e in &events {
        assert_eq!(env.wait_final(e).await, "succeeded");
    }
    wait_until("20 outbox rows sent", WAIT, || async {
        let r = rows(&env).await;
        (r.len() == 20 && r.iter().all(|r| r.status == "sent")).then_some(())
    })
    .await;

    let n_users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n_users, 10);
    for r in rows(&env).await {
        assert_eq!((r.attempts, r.secret.is_none()), (1, true), "{r:?}");
    }

    // Exactly one successful password PUT per user, to the person's `cio_<id>`, with Basic
    // auth (the simulator answers 401 otherwise) and the documented body.
    let puts = env.simh.track_puts();
    assert_eq!(puts.len(), 10, "{puts:?}");
    assert!(puts.iter().all(|p| p.identifier.starts_with("cio_")), "{puts:?}");
    let by_email: BTreeMap<String, Value> = puts
        .iter()
        .map(|p| (env.simh.email_of(&p.identifier).unwrap(), p.body.clone()))
        .collect();
    assert_eq!(
        by_email.keys().cloned().collect::<BTreeSet<_>>(),
        emails.iter().cloned().collect()
    );
    for r in track_requests(&env) {
        assert_eq!(r.status, 200);
        assert!(r.path.starts_with("/api/v1/customers/cio_"), "{}", r.path);
    }
    let mut passwords = Vec::new();
    for (email, body) in &by_email {
        let pw = body["password"].as_str().unwrap().to_string();
        assert_eq!(body, &json!({"password": pw, "_update": true}));
        assert!(pw.len() >= 16 && pw.chars().all(|c| c.is_ascii_alphanumeric()), "{pw}");
        assert_verifies(&env, email, &pw).await;
        assert_eq!(
            env.simh.person(email).unwrap().attributes.get("password"),
            Some(&pw),
            "Customer.io holds the password"
        );
        passwords.push(pw);
    }
    assert_eq!(
        passwords.iter().collect::<BTreeSet<_>>().len(),
        10,
        "distinct passwords"
    );

    // One welcome e-mail per user, naming the username and the login URL, never the password.
    let mails = sink.messages();
    assert_eq!(mails.len(), 10);
    let to: BTreeSet<String> = mails.iter().map(|m| m.rcpt_to.join(",")).collect();
    assert_eq!(to, emails.iter().cloned().collect());
    for m in &mails {
        assert_eq!(m.mail_from, "accounts@example.org");
        let username = &m.rcpt_to[0];
        assert!(m.data.contains(&format!("Username: {username}")), "{}", m.data);
        assert!(m.data.contains(LOGIN_URL), "{}", m.data);
        assert!(m.data.contains("Subject: Your account is ready"), "{}", m.data);
        for p in &passwords {
            assert!(!m.data.contains(p.as_str()), "the mail carries no password");
        }
    }

    // The creating events say so; the other adds (which found the user, or were coalesced into
    // another sync of the contact) queued and sent nothing.
    let mut created = BTreeSet::new();
    for e in &events {
        let log = env.event_log(e).await.join("\n");
        if log.contains("Created user #") {
            created.insert(e.parse::<Uuid>().unwrap());
            assert!(log.contains("Returned generated password to Customer.io"), "{log}");
            assert!(log.contains("Sent the welcome e-mail to "), "{log}");
        } else {
            for never in ["Queued", "Returned generated password", "Sent the welcome e-mail"] {
                assert!(!log.contains(never), "{log}");
            }
        }
    }
    let row_events: BTreeSet<Uuid> = rows(&env).await.iter().map(|r| r.event_id).collect();
    assert_eq!(
        row_events, created,
        "outbox rows come only from the adds that created a user"
    );
    assert_eq!(created.len(), 10);
    assert!(logs.text().contains("Returned generated password to Customer.io"));
    assert_nowhere(&env, &passwords, Some(&logs)).await;
}

/// Two 503s: the row is retried with a growing backoff and the same sealed password; the
/// third attempt succeeds and the secret is erased.
#[tokio::test]
async fn password_return_is_retried_after_503s_with_backoff_and_the_same_password() {
    let (logs, _guard) = Captured::start();
    let mut env = TestEnv::new().await;
    env.simh.add_person("retry@example.com", json!({}));
    env.simh
        .inject(Fault::new(Api::Track, FaultKind::Status(503)).with_times(2));
    let ingress = env.start_ingress().await;
    env.start_worker(TestEnv::with_password_return(env.worker_settings()))
        .await;
    let event = add(&ingress, "retry@example.com", false).await;
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let r = the_row(&env, "password_return").await;
    let r = wait_status(&env, r.id, "sent").await;
    assert_eq!((r.attempts, r.secret, r.last_error), (3, None, None));

    let reqs = track_requests(&env);
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), vec![503, 503, 200]);
    let pw = password_in(&reqs[0].body);
    assert!(
        reqs.iter().all(|r| password_in(&r.body) == pw),
        "every attempt resends one password"
    );
    assert_verifies(&env, "retry@example.com", &pw).await;
    let gap1 = reqs[1].at - reqs[0].at;
    let gap2 = reqs[2].at - reqs[1].at;
    assert!(gap1 >= Duration::from_millis(740), "backoff ~1 s: {gap1:?}");
    assert!(gap2 >= Duration::from_millis(1480), "backoff ~2 s: {gap2:?}");

    let log = env.event_log(&event).await;
    let retries: Vec<&String> = log.iter().filter(|l| l.starts_with("Could not send")).collect();
    assert_eq!(retries.len(), 2, "{log:?}");
    assert!(
        retries[0].contains("(attempt 1)") && retries[0].contains("503"),
        "{log:?}"
    );
    assert!(retries[1].contains("(attempt 2)"), "{log:?}");
    assert_eq!(
        log.iter()
            .filter(|l| *l == "Returned generated password to Customer.io")
            .count(),
        1
    );
    assert_eq!(env.simh.track_puts().len(), 1);
    assert_nowhere(&env, &[pw], Some(&logs)).await;
}

/// A 429 is retried no sooner than its Retry-After; a timeout and a dropped connection are
/// retried too, the backoff after a timeout counted from its end (not from the claim); one
/// password throughout.
#[tokio::test]
async fn rate_limits_timeouts_and_resets_are_retried_honouring_retry_after() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("flaky@example.com", json!({}));
    env.simh
        .inject(Fault::new(Api::Track, FaultKind::Status(429)).with_times(1));
    env.simh
        .inject(Fault::new(Api::Track, FaultKind::Delay(Duration::from_secs(3))).with_times(1));
    env.simh.inject(Fault::new(Api::Track, FaultKind::Reset).with_times(1));
    let ingress = env.start_ingress().await;
    let mut s = TestEnv::with_password_return(env.worker_settings());
    s.cio.timeout = Duration::from_secs(2);
    env.start_worker(s).await;
    let event = add(&ingress, "flaky@example.com", false).await;
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let r = the_row(&env, "password_return").await;
    // Right after the timed-out attempt 2 is recorded, its backoff (2 s ± 25 %) lies ahead in
    // full: it is counted from the end of the 2 s timeout, not from the claim before it.
    let ahead: f64 = wait_until("attempt 2 recorded", WAIT, || async {
        sqlx::query_scalar(
            "select extract(epoch from next_attempt_at - clock_timestamp())::float8 from outbox
             where id = $1 and attempts = 2",
        )
        .bind(r.id)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(ahead >= 1.0, "backoff left after the timeout: {ahead}s");
    let r = wait_status(&env, r.id, "sent").await;
    assert_eq!(r.attempts, 4);

    let log = env.event_log(&event).await;
    let retries: Vec<&String> = log.iter().filter(|l| l.starts_with("Could not send")).collect();
    assert_eq!(retries.len(), 3, "{log:?}");
    assert!(retries[0].contains("429"), "{log:?}");
    assert!(retries[1].contains("timeout"), "{log:?}");
    assert!(retries[2].contains("connection_error"), "{log:?}");

    // The simulator records a request when it answers it; the timed-out one was abandoned by
    // the client and dropped unanswered, so Customer.io saw: 429, reset (status 0), success.
    let reqs = track_requests(&env);
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 0, 200]);
    assert_eq!(env.simh.track_puts().len(), 1);
    let pw = password_in(&reqs[0].body);
    assert!(
        reqs.iter().all(|r| password_in(&r.body) == pw),
        "one password throughout"
    );
    assert_verifies(&env, "flaky@example.com", &pw).await;
    // Attempt 2 came >= 1 s (Retry-After) after the 429 and timed out 2 s later; attempt 3
    // waited a backoff of 2 s ± 25 % from that timeout: >= 1 + 2 + 1.5 s after the 429.
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(4400), "{gap:?}");
    // Attempt 4 waited 4 s ± 25 % after the reset.
    let gap = reqs[2].at - reqs[1].at;
    assert!(gap >= Duration::from_millis(2950), "{gap:?}");
    assert_nowhere(&env, &[pw], None).await;
}

/// A 401 is permanent: one attempt, the row is `dead` with a clear log line and keeps its
/// sealed (never plaintext) password; after the fix a replay returns that same password.
#[tokio::test]
async fn a_401_makes_the_row_dead_and_a_replay_returns_the_same_password() {
    let (logs, _guard) = Captured::start();
    let mut env = TestEnv::new().await;
    env.simh.add_person("refused@example.com", json!({}));
    env.simh.inject(Fault::new(Api::Track, FaultKind::Status(401)));
    let ingress = env.start_ingress().await;
    env.start_worker(TestEnv::with_password_return(env.worker_settings()))
        .await;
    let event = add(&ingress, "refused@example.com", false).await;
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let r = the_row(&env, "password_return").await;
    let dead = wait_status(&env, r.id, "dead").await;
    assert_eq!(dead.attempts, 1, "a 401 is not retried");
    assert!(dead.last_error.as_deref().unwrap().contains("(401)"), "{dead:?}");
    let line = env
        .event_log(&event)
        .await
        .into_iter()
        .find(|l| l.starts_with("Could not send the generated password"))
        .expect("an event-log line for the refusal");
    assert!(line.contains("Customer.io rejected the request (401)"), "{line}");
    assert!(line.contains(&format!("worker outbox replay {}", r.id)), "{line}");

    // The refused attempt carried the password that the row still holds, sealed.
    let refused = track_requests(&env);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].status, 401);
    let pw = password_in(&refused[0].body);
    let sealed = dead.secret.clone().expect("kept for a replay");
    let opened = worker::secretbox::SecretBox::from_base64(SECRETS_KEY)
        .unwrap()
        .open(&sealed)
        .unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&opened), pw);
    assert_nowhere(&env, std::slice::from_ref(&pw), Some(&logs)).await;

    // Only dead rows are replayed.
    env.simh.clear_faults();
    assert_eq!(worker::outbox::replay(&env.pool, &[r.id + 1000]).await.unwrap(), 0);
    assert_eq!(worker::outbox::replay(&env.pool, &[r.id]).await.unwrap(), 1);
    let sent = wait_status(&env, r.id, "sent").await;
    assert_eq!((sent.attempts, sent.secret.is_none()), (1, true));
    let puts = env.simh.track_puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(
        env.simh.email_of(&puts[0].identifier).as_deref(),
        Some("refused@example.com")
    );
    assert_eq!(puts[0].body, json!({"password": pw, "_update": true}));
    assert_verifies(&env, "refused@example.com", &pw).await;
    assert_eq!(worker::outbox::replay(&env.pool, &[]).await.unwrap(), 0);
    assert_nowhere(&env, &[pw], Some(&logs)).await;
}

/// Transient failures until the row is too old: with `OUTBOX_GIVE_UP_AFTER` at 2 s, the first
/// retry (about 1 s) is in time and the second (about 2 s later) would not be, so the row is
/// `dead` after 2 attempts; `replay` (all dead rows) delivers it once the cause is gone.
#[tokio::test]
async fn exhausted_retries_make_the_row_dead_until_replayed() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("down@example.com", json!({}));
    env.simh.inject(Fault::new(Api::Track, FaultKind::Status(503)));
    let ingress = env.start_ingress().await;
    let mut s = TestEnv::with_password_return(env.worker_settings());
    s.outbox_give_up_after = Duration::from_secs(2);
    env.start_worker(s).await;
    let event = add(&ingress, "down@example.com", false).await;
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let r = the_row(&env, "password_return").await;
    let dead = wait_status(&env, r.id, "dead").await;
    assert_eq!(dead.attempts, 2);
    assert!(dead.secret.is_some());
    let log = env.event_log(&event).await;
    assert!(
        log.iter().any(
            |l| l.starts_with("Gave up sending the generated password to Customer.io after 2 attempts")
                && l.contains("503")
                && l.contains(&format!("worker outbox replay {}", r.id))
        ),
        "{log:?}"
    );
    env.simh.clear_faults();
    assert_eq!(worker::outbox::replay(&env.pool, &[]).await.unwrap(), 1);
    let sent = wait_status(&env, r.id, "sent").await;
    assert!(sent.secret.is_none());
    let reqs = track_requests(&env);
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), vec![503, 503, 200]);
    let pw = password_in(&reqs[0].body);
    assert!(reqs.iter().all(|r| password_in(&r.body) == pw));
    assert_verifies(&env, "down@example.com", &pw).await;
}

/// The welcome e-mail: 451 is retried, 550 is final (`dead`) until replayed; the delivered mail
/// goes to the user, names the username and login URL, and never carries the password.
#[tokio::test]
async fn welcome_mail_is_retried_on_451_dead_on_550_and_replayable() {
    let sink = SmtpSink::start().await;
    let mut env = TestEnv::new().await;
    env.simh.add_person("greylisted@example.com", json!({}));
    env.simh.add_person("bounced@example.com", json!({}));
    let ingress = env.start_ingress().await;
    let mut s = TestEnv::with_password_return(env.worker_settings());
    s.mail = Some(mail_settings(&sink));
    env.start_worker(s).await;

    sink.fail_next(451, 2);
    let e1 = add(&ingress, "greylisted@example.com", true).await;
    assert_eq!(env.wait_final(&e1).await, "succeeded");
    let r1 = wait_until("the welcome row", WAIT, || async {
        rows(&env)
            .await
            .into_iter()
            .find(|r| r.kind == "welcome_email" && r.recipient == "greylisted@example.com")
    })
    .await;
    let r1 = wait_status(&env, r1.id, "sent").await;
    assert_eq!(r1.attempts, 3);
    assert_eq!(
        sink.refused().iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![451, 451]
    );
    let log = env.event_log(&e1).await;
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("Could not send the welcome e-mail"))
            .count(),
        2,
        "{log:?}"
    );

    sink.fail_next(550, 1);
    let e2 = add(&ingress, "bounced@example.com", true).await;
    assert_eq!(env.wait_final(&e2).await, "succeeded");
    let r2 = wait_until("the second welcome row", WAIT, || async {
        rows(&env)
            .await
            .into_iter()
            .find(|r| r.kind == "welcome_email" && r.recipient == "bounced@example.com")
    })
    .await;
    let dead = wait_status(&env, r2.id, "dead").await;
    assert_eq!(dead.attempts, 1, "550 is permanent");
    let log = env.event_log(&e2).await;
    assert!(
        log.iter().any(|l| l.starts_with("Could not send the welcome e-mail")
            && l.contains("550")
            && l.contains(&format!("worker outbox replay {}", r2.id))),
        "{log:?}"
    );
    assert_eq!(worker::outbox::replay(&env.pool, &[r2.id]).await.unwrap(), 1);
    wait_status(&env, r2.id, "sent").await;

    let mails = sink.messages();
    assert_eq!(
        mails.iter().map(|m| m.rcpt_to.clone()).collect::<Vec<_>>(),
        vec![
            vec!["greylisted@example.com".to_string()],
            vec!["bounced@example.com".to_string()]
        ]
    );
    wait_until("both passwords returned", WAIT, || async {
        (env.simh.track_puts().len() == 2).then_some(())
    })
    .await;
    let passwords: Vec<String> = env
        .simh
        .track_puts()
        .iter()
        .map(|p| p.body["password"].as_str().unwrap().to_string())
        .collect();
    for m in mails.iter().chain(sink.refused().iter().map(|(_, m)| m)) {
        let user = &m.rcpt_to[0];
        assert!(m.data.contains(&format!("To: {user}")), "{}", m.data);
        assert!(m.data.contains(&format!("Username: {user}")), "{}", m.data);
        assert!(m.data.contains(LOGIN_URL), "{}", m.data);
        for p in &passwords {
            assert!(!m.data.contains(p.as_str()));
        }
    }
    assert_nowhere(&env, &passwords, None).await;
}

/// An `add` that finds the user queues nothing: no second e-mail, no new password, no PUT. A
/// password mapped from Customer.io is never returned (only generated ones are).
#[tokio::test]
async fn existing_users_and_mapped_passwords_get_no_password_return() {
    let sink = SmtpSink::start().await;
    let mut env = TestEnv::new().await;
    env.simh.add_person("old@example.com", json!({}));
    env.simh
        .add_person("mapped@example.com", json!({"pw": "chosen-in-customer-io-1"}));
    let ingress = env.start_ingress().await;
    let mut s = TestEnv::with_password_return(env.worker_settings());
    s.mail = Some(mail_settings(&sink));
    s.field_map = worker::fieldmap::FieldMap::from_toml("[fields]\n\"pw\" = \"user_pass\"\n").unwrap();
    env.start_worker(s).await;

    let first = add(&ingress, "old@example.com", true).await;
    assert_eq!(env.wait_final(&first).await, "succeeded");
    wait_until("the first user's rows sent", WAIT, || async {
        let r = rows(&env).await;
        (r.len() == 2 && r.iter().all(|r| r.status == "sent")).then_some(())
    })
    .await;
    let hash_before = password_hash(&env, "old@example.com").await;
    for _ in 0..2 {
        let again = add(&ingress, "OLD@example.com", true).await;
        assert_eq!(env.wait_final(&again).await, "succeeded");
        let log = env.event_log(&again).await.join("\n");
        assert!(!log.contains("Created user") && !log.contains("Queued"), "{log}");
    }
    assert_eq!(password_hash(&env, "old@example.com").await, hash_before);

    let mapped = add(&ingress, "mapped@example.com", true).await;
    assert_eq!(env.wait_final(&mapped).await, "succeeded");
    let log = env.event_log(&mapped).await;
    assert!(
        log.iter()
            .any(|l| l == "Password came from Customer.io: nothing to return"),
        "{log:?}"
    );
    wait_until("the mapped user's welcome e-mail", WAIT, || async {
        (sink.messages().len() == 2).then_some(())
    })
    .await;
    assert_verifies(&env, "mapped@example.com", "chosen-in-customer-io-1").await;

    let expect = |e: &str, k: &str| (e.to_string(), k.to_string(), "sent".to_string());
    let want = vec![
        expect("old@example.com", "welcome_email"),
        expect("old@example.com", "password_return"),
        expect("mapped@example.com", "welcome_email"),
    ];
    // The sink has the message before the worker records the row as sent: wait for the rows.
    let kinds = wait_until("the outbox rows to settle", WAIT, || async {
        let kinds: Vec<(String, String, String)> = rows(&env)
            .await
            .into_iter()
            .map(|r| (r.recipient, r.kind, r.status))
            .collect();
        (kinds.iter().all(|k| k.2 != "pending")).then_some(kinds)
    })
    .await;
    assert_eq!(kinds, want);
    let puts = env.simh.track_puts();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(
        env.simh.email_of(&puts[0].identifier).as_deref(),
        Some("old@example.com")
    );
    let rcpts: Vec<String> = sink.messages().iter().map(|m| m.rcpt_to.join(",")).collect();
    assert_eq!(rcpts, vec!["old@example.com", "mapped@example.com"]);
    let pw = puts[0].body["password"].as_str().unwrap().to_string();
    assert_nowhere(&env, &[pw, "chosen-in-customer-io-1".into()], None).await;
}

/// Without SMTP the welcome row is `skipped` with a warning (never delivered), and the worker
/// says at start that welcome e-mail is off.
#[tokio::test]
async fn without_smtp_the_welcome_row_is_skipped_and_the_start_log_says_so() {
    let (logs, _guard) = Captured::start();
    let mut env = TestEnv::new().await;
    env.simh.add_person("nomail@example.com", json!({}));
    let ingress = env.start_ingress().await;
    env.start_worker(TestEnv::with_password_return(env.worker_settings()))
        .await;
    let event = add(&ingress, "nomail@example.com", true).await;
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let pr = the_row(&env, "password_return").await;
    wait_status(&env, pr.id, "sent").await;
    let w = the_row(&env, "welcome_email").await;
    assert_eq!((w.status.as_str(), w.attempts), ("skipped", 0));
    assert_eq!(
        w.last_error.as_deref(),
        Some("welcome e-mail is off (SMTP_URL is not set)")
    );
    let log = env.event_log(&event).await;
    assert!(
        log.iter()
            .any(|l| l == "send_notification was requested but the welcome e-mail is off (SMTP_URL is not set)"),
        "{log:?}"
    );
    let text = logs.text();
    assert!(text.contains("welcome e-mail is off: SMTP_URL is not set"), "{text}");
    assert!(text.contains("WARN"), "{text}");
}

/// A worker killed while Customer.io holds its request: its claim dies with it, the row stays
/// pending (nothing lost) and another worker returns the same password; the row is sent once.
#[tokio::test]
async fn a_worker_killed_mid_delivery_leaves_the_row_to_another_worker() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("killed@example.com", json!({}));
    env.simh
        .inject(Fault::new(Api::Track, FaultKind::Delay(Duration::from_secs(3))).with_times(1));
    let ingress = env.start_ingress().await;
    let settings = TestEnv::with_password_return(env.worker_settings());
    let doomed = env.worker(settings.clone()).await;
    let task = tokio::spawn(doomed.run(None, CancellationToken::new()));
    let event = add(&ingress, "killed@example.com", false).await;
    assert_eq!(env.wait_final(&event).await, "succeeded");
    let r = the_row(&env, "password_return").await;
    // The delay fault is spent once the request reached the simulator: delivery is under way.
    wait_until("the Track request in flight", WAIT, || async {
        env.simh.faults().is_empty().then_some(())
    })
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // Nothing recorded, nothing lost: the row is pending, unclaimed, with its sealed password.
    wait_until("the claim to be released", WAIT, || async {
        let free: Option<i64> = sqlx::query_scalar("select id from outbox where id = $1 for update skip locked")
            .bind(r.id)
            .fetch_optional(&env.pool)
            .await
            .unwrap();
        free.map(|_| ())
    })
    .await;
    let pending = row(&env, r.id).await;
    assert_eq!((pending.status.as_str(), pending.attempts), ("pending", 0));
    assert!(pending.secret.is_some());

    env.start_worker(settings).await;
    let sent = wait_status(&env, r.id, "sent").await;
    assert_eq!((sent.attempts, sent.secret.is_none()), (1, true));
    let log = env.event_log(&event).await;
    assert_eq!(
        log.iter()
            .filter(|l| *l == "Returned generated password to Customer.io")
            .count(),
        1,
        "{log:?}"
    );
    // The killed worker's request was abandoned before Customer.io answered it (the simulator
    // drops a request whose client went away): one PUT, from the second worker.
    let reqs = track_requests(&env);
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200]);
    assert_eq!(env.simh.track_puts().len(), 1);
    let pw = password_in(&reqs[0].body);
    assert_verifies(&env, "killed@example.com", &pw).await;
    assert_nowhere(&env, &[pw], None).await;
}

/// A claim that is rolled back (a worker that died before sending) hides the row from every
/// other worker while it is held, then the row is delivered exactly once; two workers racing
/// for one row never both send it.
#[tokio::test]
async fn a_held_claim_blocks_other_workers_and_a_rolled_back_claim_is_delivered_once() {
    let env = TestEnv::new().await;
    env.simh.add_person("claimed@example.com", json!({}));
    let settings = TestEnv::with_password_return(env.worker_settings());
    let w1 = env.worker(settings.clone()).await;
    let w2 = env.worker(settings).await;
    let cmd = SyncV1 {
        event_id: Uuid::new_v4(),
        received_at: Utc::now(),
        action: Action::Add,
        contact: Contact {
            email: shared::email::parse("claimed@example.com").unwrap(),
            id: None,
            cio_id: None,
        },
        send_notification: false,
        role: None,
        tags: None,
    };
    testkit::pipeline::run_one(&w1, &cmd).await;
    let r = the_row(&env, "password_return").await;
    assert_eq!(
        (r.status.as_str(), r.user_id, r.event_id),
        ("pending", r.user_id, cmd.event_id)
    );

    // A claim held by a "worker" (this transaction): nobody else can deliver the row.
    let mut claim = env.pool.begin().await.unwrap();
    let claimed: i64 = sqlx::query_scalar("select id from outbox where status = 'pending' for update skip locked")
        .fetch_one(&mut *claim)
        .await
        .unwrap();
    assert_eq!(claimed, r.id);
    for w in [&w1, &w2] {
        let skipped = tokio::time::timeout(Duration::from_secs(10), w.outbox.deliver_next()).await;
        assert!(!skipped.expect("a claimed row is skipped, not waited for").unwrap());
    }
    assert!(track_requests(&env).is_empty());
    claim.rollback().await.unwrap();

    // Released: two workers race for it while Customer.io is slow; exactly one delivers.
    env.simh
        .inject(Fault::new(Api::Track, FaultKind::Delay(Duration::from_millis(500))).with_times(1));
    let (a, b) = tokio::join!(w1.outbox.deliver_next(), w2.outbox.deliver_next());
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|x| **x).count(),
        1,
        "one worker delivered the row"
    );
    assert!(!w1.outbox.deliver_next().await.unwrap(), "nothing left");
    let sent = row(&env, r.id).await;
    assert_eq!(
        (sent.status.as_str(), sent.attempts, sent.secret.is_none()),
        ("sent", 1, true)
    );
    let puts = env.simh.track_puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(track_requests(&env).len(), 1);
    let pw = puts[0].body["password"].as_str().unwrap().to_string();
    assert_verifies(&env, "claimed@example.com", &pw).await;
    assert_nowhere(&env, &[pw], None).await;
}
