//! The operator console (`worker console`), driven in headless Chromium over WebDriver and through
//! its JSON API, against the real services: each test has its own database, namespace, console
//! and chromedriver. Screenshots of every page go to `target/console-screenshots/`.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use testkit::{
    browser::Browser,
    console::{publish_dead_letters, Console, TOKEN},
    env::{ACCESS_KEY, SECRETS_KEY},
    procs::bin_dir,
    sim::{Api, Fault, FaultKind},
    wait_until, TestEnv,
};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_status(env: &TestEnv, event: &str, want: &str) {
    wait_until(&format!("event {event} to be {want}"), WAIT, || async {
        (env.event_status(event).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

async fn wait_dead_letters(env: &TestEnv, n: u32) {
    let q = env.names().dead_queue();
    wait_until(&format!("{n} dead letter(s)"), WAIT, || async {
        (env.queue_len(&q).await == n).then_some(())
    })
    .await;
}

/// Signs in through the form; ends on `next`.
async fn sign_in(b: &Browser, console: &Console, token: &str) {
    b.goto(&format!("{}/login", console.url)).await;
    b.fill("#token", token).await;
    b.click("#sign-in").await;
}

/// The event ids listed on the dead-letters API, in queue order.
async fn dead_ids(console: &Console) -> Vec<String> {
    let (status, v) = console.api().get("/api/dead-letters").await;
    assert_eq!(status, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Polls a replay job through the API until it finishes.
async fn finished_job(console: &Console, id: &str) -> Value {
    let api = console.api();
    wait_until(&format!("replay job {id} to finish"), WAIT, || async {
        let (_, j) = api.get(&format!("/api/jobs/{id}")).await;
        (j["finished"] == json!(true)).then_some(j)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_finds_an_event_by_email_and_replays_its_dead_letter_in_the_browser() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("john@example.com", json!({"First Name": "John"}));
    env.simh.add_person("jane@example.com", json!({"First Name": "Jane"}));
    let ingress = env.start_ingress().await;
    env.start_worker(env.worker_settings()).await;
    let john = testkit::send(&ingress, "wpf_action=add", "john@example.com").await;
    wait_status(&env, &john, "succeeded").await;
    // Customer.io refuses the credentials: Jane's command is parked at once.
    env.simh.inject(Fault::new(Api::App, FaultKind::Status(401)));
    let jane = testkit::send(&ingress, "wpf_action=add", "jane@example.com").await;
    wait_status(&env, &jane, "dead").await;
    wait_dead_letters(&env, 1).await;

    let console = Console::start(&env).await;
    let b = Browser::start(1280, 900).await;

    // Signed out, a page leads to the sign-in form, which returns to it.
    b.goto(&format!("{}/events", console.url)).await;
    b.find("#token").await;
    assert!(b.url().await.contains("/login?next=%2Fevents"), "{}", b.url().await);
    b.screenshot("login").await;
    b.fill("#token", TOKEN).await;
    b.click("#sign-in").await;
    b.find("#search").await;
    assert!(b.url().await.ends_with("/events"), "{}", b.url().await);

    // Find Jane's event by e-mail: one row, dead, with the counts for the range.
    b.fill("#email", "Jane@Example.com").await;
    b.click("#search-button").await;
    let rows = b
        .wait_text("#events tbody", "Jane's event in the results", |t| {
            t.contains("jane@example.com")
        })
        .await;
    assert_eq!(rows.lines().count(), 1, "{rows}");
    assert!(rows.contains("dead") && !rows.contains("john@"), "{rows}");
    let counts = b.text("#counts").await;
    assert!(counts.contains("dead 1") && counts.contains("succeeded 0"), "{counts}");
    b.screenshot("events").await;

    // Open it: its fields and its log, which names the refusal.
    b.click("#events a.event-link").await;
    assert_eq!(b.text("#event-status").await, "dead");
    assert!(b.url().await.ends_with(&format!("/events/{jane}")));
    let log = b.text("#log").await;
    assert!(log.contains("Received add webhook") && log.contains("401"), "{log}");
    b.screenshot("event").await;

    // Fix the cause, then replay the dead letter from the Dead letters page.
    env.simh.clear_faults();
    b.goto(&format!("{}/dead-letters", console.url)).await;
    let listed = b.text("#dead").await;
    assert!(
        listed.contains(&jane) && listed.contains("jane@example.com"),
        "{listed}"
    );
    b.screenshot("dead-letters").await;
    b.click(&format!("input[value='{jane}']")).await;
    b.click("#replay-selected").await;
    let state = b
        .wait_text("#job-state", "the replay job to finish", |t| t == "done")
        .await;
    assert_eq!(state, "done");
    assert_eq!(b.text("#job-replayed").await, "1");
    b.screenshot("replay-job").await;

    // The event becomes succeeded; its page shows it and links the user it created.
    b.goto(&format!("{}/events/{jane}", console.url)).await;
    b.wait_text("#event-status", "the replayed event to succeed", |t| t == "succeeded")
        .await;
    assert_eq!(env.event_status(&jane).await.as_deref(), Some("succeeded"));
    assert_eq!(env.queue_len(&env.names().dead_queue()).await, 0);
    b.click("#user-link").await;
    let fields = b.text("#user-fields").await;
    assert!(
        fields.contains("jane@example.com") && fields.contains("Jane"),
        "{fields}"
    );
    b.screenshot("user").await;

    // The overview: nothing dead any more, a worker attached, and the minute's bars.
    b.goto(&format!("{}/", console.url)).await;
    assert_eq!(b.text("#q-dead").await, "0");
    assert_eq!(b.text("#q-consumers").await, "1");
    let bars = b
        .client
        .find_all(fantoccini::Locator::Css("#chart rect"))
        .await
        .unwrap();
    assert!(!bars.is_empty(), "the chart draws this hour's events");
    b.screenshot("overview").await;

    // On a phone-sized window the page does not scroll sideways (tables scroll in their box).
    b.resize(390, 844).await;
    b.goto(&format!("{}/events?email=jane%40example.com", console.url))
        .await;
    b.find("#events").await;
    let width = b
        .client
        .execute("return document.documentElement.scrollWidth", vec![])
        .await
        .unwrap();
    assert!(width.as_u64().unwrap() <= 400, "page width on a phone: {width}");
    b.screenshot("events-phone").await;
    b.close().await;
    console.stop().await;
}

/// A sign-in and a CSRF token taken the way a browser gets them, for raw HTTP checks.
async fn session_by_hand(console: &Console) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http.get(format!("{}/login", console.url)).send().await.unwrap();
    let login_cookie = form
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = form.text().await.unwrap();
    let nonce = html
        .split("name=\"login_csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{}/login", console.url))
        .header("cookie", &login_cookie)
        .form(&[("login_csrf", nonce.as_str()), ("token", TOKEN), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("cio_console_session="))
        .unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains(TOKEN), "the cookie is not the token");
    let cookie = session.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{}/outbox", console.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (cookie, csrf)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_a_missing_csrf_token_and_cross_site_posts_are_refused() {
    let env = TestEnv::new().await;
    let ids = publish_dead_letters(&env, &["keep@example.com"], "kept for the test").await;
    let console = Console::start(&env).await;
    let b = Browser::start(1280, 900).await;

    // A wrong token: the form says so and nothing opens.
    sign_in(&b, &console, "not-the-operator-token-0000").await;
    let problem = b.text("#problem").await;
    assert!(problem.contains("not valid"), "{problem}");
    b.goto(&format!("{}/events", console.url)).await;
    b.find("#token").await;
    assert!(b.url().await.contains("/login"), "still signed out: {}", b.url().await);
    b.screenshot("login-refused").await;
    let http = reqwest::Client::new();
    let r = http.get(format!("{}/api/events", console.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/api/events", console.url))
        .bearer_auth("not-the-operator-token-0000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Signed in, a form whose CSRF token was removed is refused (and the session stays).
    sign_in(&b, &console, TOKEN).await;
    b.find("nav").await;
    b.goto(&format!("{}/dead-letters", console.url)).await;
    b.client
        .execute("document.querySelector('#dead-form input[name=csrf]').remove()", vec![])
        .await
        .unwrap();
    b.click(&format!("input[value='{}']", ids[0])).await;
    b.click("#purge-selected").await;
    assert!(b.text("#problem").await.contains("CSRF"), "refused without its token");
    b.screenshot("csrf-refused").await;
    b.goto(&format!("{}/dead-letters", console.url)).await;
    assert!(
        b.text("#dead").await.contains(&ids[0]),
        "still signed in, nothing deleted"
    );

    // A page on another origin (another port of this host: same site, other origin) posts the
    // console's own form, even with the right CSRF token: refused by its Origin.
    let csrf = b
        .find("#dead-form input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let attacker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let attacker_url = format!("http://{}", attacker.local_addr().unwrap());
    let page = format!(
        r#"<!doctype html><form method="post" action="{}/dead-letters/purge">
        <input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="ids" value="{}">
        <input type="hidden" name="confirm" value="1"><button id="go">Win a prize</button></form>"#,
        console.url, ids[0]
    );
    let evil = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let p = page.clone();
                async move { axum::response::Html(p) }
            }),
        );
        axum::serve(attacker, app).await.unwrap();
    });
    b.goto(&attacker_url).await;
    b.click("#go").await;
    let problem = b.text("#problem").await;
    assert!(problem.contains("cross-site"), "{problem}");
    assert_eq!(dead_ids(&console).await, ids, "nothing was deleted");
    b.screenshot("cross-site-refused").await;
    evil.abort();

    // The same rules over raw HTTP: the API's state-changing calls.
    let (cookie, csrf) = session_by_hand(&console).await;
    let purge = json!({"ids": [ids[0]], "confirm": 1});
    let url = format!("{}/api/dead-letters/purge", console.url);
    let r = http
        .post(&url)
        .header("cookie", &cookie)
        .json(&purge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a cookie session needs X-CSRF-Token");
    let r = http
        .post(&url)
        .header("cookie", &cookie)
        .header("x-csrf-token", "forged")
        .json(&purge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for (h, v) in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")] {
        let r = http
            .post(&url)
            .bearer_auth(TOKEN)
            .header(h, v)
            .json(&purge)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{h}: {v}");
    }
    assert_eq!(dead_ids(&console).await, ids, "nothing was deleted");
    let r = http
        .post(&url)
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&purge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "with its CSRF token the same call works");
    assert!(dead_ids(&console).await.is_empty());
    b.close().await;
    console.stop().await;
}

#[test]
fn the_console_refuses_to_start_without_operator_tokens() {
    let out = std::process::Command::new(bin_dir().join("worker"))
        .arg("console")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run worker console");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("CONSOLE_TOKENS"), "{err}");
    let out = std::process::Command::new(bin_dir().join("worker"))
        .arg("console")
        .env_clear()
        .env("CONSOLE_TOKENS", "short")
        .output()
        .expect("run worker console");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at least 16") && !err.contains("short"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_pages_keep_the_queue_whole_and_act_only_on_the_selection() {
    let env = TestEnv::new().await;
    let emails: Vec<String> = (0..7).map(|i| format!("dl{i}@example.com")).collect();
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    let ids = publish_dead_letters(&env, &refs, "Customer.io refused the credentials (401)").await;
    let console = Console::start(&env).await;
    let api = console.api();

    // A page from the middle; reading it leaves the queue whole and in order.
    let (status, page) = api.get("/api/dead-letters?offset=2&limit=3").await;
    assert_eq!(status, 200, "{page}");
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[2..5].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        (page["total"].as_u64(), page["next_offset"].as_u64()),
        (Some(7), Some(5))
    );
    assert_eq!(page["items"][0]["position"], 2);
    assert_eq!(page["items"][0]["attempts"], 3);
    assert!(page["items"][0]["reason"].as_str().unwrap().contains("401"));
    assert_eq!(dead_ids(&console).await, ids, "same order after peeking");
    assert_eq!(env.queue_len(&env.names().dead_queue()).await, 7);

    // Purge two of seven in the browser, after a confirmation naming how many.
    let b = Browser::start(1280, 900).await;
    sign_in(&b, &console, TOKEN).await;
    b.find("nav").await;
    b.goto(&format!("{}/dead-letters", console.url)).await;
    b.click(&format!("input[value='{}']", ids[1])).await;
    b.click(&format!("input[value='{}']", ids[4])).await;
    b.click("#purge-selected").await;
    assert_eq!(b.text("#confirm-title").await, "Delete 2 dead letters for good?");
    b.screenshot("purge-confirm").await;
    assert_eq!(
        env.queue_len(&env.names().dead_queue()).await,
        7,
        "nothing before confirming"
    );
    b.click("#confirm-purge").await;
    assert_eq!(b.text("#purge-result").await, "2 dead letters deleted");
    let left: Vec<String> = [0, 2, 3, 5, 6].iter().map(|i| ids[*i].clone()).collect();
    assert_eq!(
        dead_ids(&console).await,
        left,
        "only the selection went, the rest kept its order"
    );
    // Requeued messages are served first: reading only the head must not rotate the queue.
    let (_, head) = api.get("/api/dead-letters?limit=2").await;
    assert_eq!(head["items"][1]["event_id"], json!(left[1]));
    assert_eq!(head["next_offset"], 2);
    assert_eq!(dead_ids(&console).await, left, "still in order after reading the head");
    b.close().await;

    // A confirmation that does not match the selection is refused.
    let (status, v) = api
        .post(
            "/api/dead-letters/purge",
            json!({"ids": [ids[0], ids[2]], "confirm": 1}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("confirm"), "{v}");

    // Replay through the API: exactly the chosen one goes back to the commands queue; an unknown
    // id is reported, and repeating the replay does nothing more.
    let (status, job) = api
        .post("/api/dead-letters/replay", json!({"ids": [ids[2], "not-there"]}))
        .await;
    assert_eq!(status, 202, "{job}");
    let done = finished_job(&console, job["id"].as_str().unwrap()).await;
    assert_eq!(done["replayed"], json!([ids[2]]));
    assert_eq!(done["not_found"], json!(["not-there"]));
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(env.queue_len(&env.names().commands_queue()).await, 1);
    let left: Vec<String> = [0, 3, 5, 6].iter().map(|i| ids[*i].clone()).collect();
    assert_eq!(dead_ids(&console).await, left);
    let (_, again) = api.post("/api/dead-letters/replay", json!({"ids": [ids[2]]})).await;
    let again = finished_job(&console, again["id"].as_str().unwrap()).await;
    assert_eq!(again["replayed"], json!([]));
    assert_eq!(again["not_found"], json!([ids[2]]));
    assert_eq!(env.queue_len(&env.names().commands_queue()).await, 1, "nothing twice");
    let (status, v) = api.post("/api/dead-letters/replay", json!({"ids": []})).await;
    assert_eq!(status, 400, "{v}");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn event_search_filters_pages_newest_first_and_counts_by_status() {
    let env = TestEnv::new().await;
    let statuses = ["succeeded", "dead", "no_user", "rejected", "retrying"];
    let actions = ["add", "update", "update_tags"];
    let labels = [Some("journey-a"), Some("journey-b"), None];
    let now = chrono::Utc::now();
    for i in 0..130i64 {
        sqlx::query(
            "insert into webhook_events (event_id, action, email, status, attempts, received_at, key_label)
             values ($1, $2, $3, $4, 1, $5, $6)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(actions[(i % 3) as usize])
        .bind(format!("u{}@example.com", i % 10))
        .bind(statuses[(i % 5) as usize])
        .bind(now - chrono::Duration::minutes(i) - chrono::Duration::seconds(1))
        .bind(labels[(i % 3) as usize])
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let console = Console::start(&env).await;
    let api = console.api();

    // Every event once, newest first, 50 at a time.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut path = "/api/events?limit=50".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for e in page["events"].as_array().unwrap() {
            seen.push((
                e["received_at"].as_str().unwrap().to_string(),
                e["event_id"].as_str().unwrap().to_string(),
            ));
        }
        match page["next"].as_str() {
            Some(c) => {
                path = format!(
                    "/api/events?limit=50&cursor={}",
                    percent_encoding::utf8_percent_encode(c, percent_encoding::NON_ALPHANUMERIC)
                )
            }
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 130));
    let parsed: Vec<chrono::DateTime<chrono::Utc>> = seen.iter().map(|(t, _)| t.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] > w[1]), "strictly newest first");

    let count = |v: &Value| v["events"].as_array().unwrap().len();
    let (_, v) = api.get("/api/events?email=U3%40Example.com&limit=500").await;
    assert_eq!(count(&v), 13);
    assert!(v["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["email"] == "u3@example.com"));
    let (_, v) = api.get("/api/events?key_label=journey-a&limit=500").await;
    assert_eq!(count(&v), 44);
    let (_, v) = api.get("/api/events?status=dead&action=add&limit=500").await;
    // i % 5 == 1 and i % 3 == 0: i = 6, 21, 36, … (i ≡ 6 mod 15) below 130.
    assert_eq!(count(&v), 9);

    // A time range: the events in it, and counts by status for the whole range.
    let from = (now - chrono::Duration::minutes(30)).to_rfc3339();
    let to = (now - chrono::Duration::minutes(10)).to_rfc3339();
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let (_, v) = api
        .get(&format!("/api/events?from={}&to={}&limit=5", enc(&from), enc(&to)))
        .await;
    assert_eq!(count(&v), 5, "a page of the range");
    let counts: i64 = v["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_i64().unwrap())
        .sum();
    assert_eq!(counts, 20, "events received 10–30 minutes ago: i = 10..=29");
    let dead = v["counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "dead")
        .unwrap();
    assert_eq!(dead["count"], 4);

    let (status, v) = api.get("/api/events?status=finished").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().starts_with("status"), "{v}");
    let (status, _) = api.get("/api/events?from=yesterday").await;
    assert_eq!(status, 400);
    console.stop().await;
}

/// Everything secret in a stack with the password return on, and none of it on any page or in
/// any API answer. Also retries a dead outbox row from the Outbox page.
#[tokio::test(flavor = "multi_thread")]
async fn no_page_or_api_answer_shows_a_secret_and_a_dead_outbox_row_is_retried() {
    let mut env = TestEnv::new().await;
    env.simh.add_person("secret@example.com", json!({"First Name": "Sam"}));
    env.simh.add_person("parked@example.com", json!({}));
    env.simh.inject(Fault::new(Api::Track, FaultKind::Status(401)));
    env.simh
        .inject(Fault::new(Api::App, FaultKind::Status(401)).with_contact("parked@example.com"));
    let ingress = env.start_ingress().await;
    env.start_worker(TestEnv::with_password_return(env.worker_settings()))
        .await;
    let event = testkit::send(&ingress, "wpf_action=add", "secret@example.com").await;
    wait_status(&env, &event, "succeeded").await;
    let parked = testkit::send(&ingress, "wpf_action=add", "parked@example.com").await;
    wait_status(&env, &parked, "dead").await;
    wait_dead_letters(&env, 1).await;
    let (row, sealed): (i64, Vec<u8>) = wait_until("a dead password return", WAIT, || async {
        sqlx::query_as("select id, secret from outbox where status = 'dead' and secret is not null")
            .fetch_optional(&env.pool)
            .await
            .unwrap()
    })
    .await;
    let password = worker::secretbox::SecretBox::from_base64(SECRETS_KEY)
        .unwrap()
        .open(&sealed)
        .unwrap();
    let password = secrecy::ExposeSecret::expose_secret(&password).to_string();
    let (user, hash): (i64, String) = sqlx::query_as("select id, password_hash from users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
    let secrets = [
        ACCESS_KEY.to_string(),
        "rotated-key-4567".into(),
        "sim-app-key".into(),
        "sim-track-key".into(),
        SECRETS_KEY.into(),
        TOKEN.into(),
        password.clone(),
        hash,
        hex,
        base64::engine::general_purpose::STANDARD.encode(&sealed),
    ];
    let check = |what: &str, text: &str| {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} shows a secret");
        }
    };

    let console = Console::start(&env).await;
    let api = console.api();
    let (status, job) = api
        .post("/api/dead-letters/replay", json!({"ids": ["nothing-to-do"]}))
        .await;
    assert_eq!(status, 202);
    let job = job["id"].as_str().unwrap().to_string();
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/login", console.url)).await;
    check("the sign-in page", &b.html().await);
    sign_in(&b, &console, TOKEN).await;
    b.find("nav").await;
    let pages = [
        "/".to_string(),
        "/events".into(),
        format!("/events/{event}"),
        format!("/events/{parked}"),
        format!("/users/{user}"),
        "/dead-letters".into(),
        "/outbox".into(),
        "/outbox?status=dead".into(),
        format!("/jobs/{job}"),
    ];
    for p in &pages {
        b.goto(&format!("{}{p}", console.url)).await;
        b.find("main").await;
        let html = b.html().await;
        assert!(!html.contains("id=\"problem\""), "{p} failed: {html}");
        check(p, &html);
    }
    let apis = [
        "/api/overview".to_string(),
        "/api/events".into(),
        format!("/api/events/{event}"),
        format!("/api/events/{parked}"),
        format!("/api/users/{user}"),
        "/api/dead-letters".into(),
        "/api/outbox".into(),
        format!("/api/jobs/{job}"),
    ];
    for p in &apis {
        let (status, text) = api.text(p).await;
        assert_eq!(status, 200, "{p}: {text}");
        check(p, &text);
    }
    let (_, detail) = api.get(&format!("/api/events/{event}")).await;
    assert_eq!(detail["outbox"][0]["status"], "dead");
    assert!(detail["outbox"][0].get("secret").is_none());
    assert!(detail["user"].get("password_hash").is_none());

    // The Outbox page lists the dead row; after the fix, Retry puts it back and it is sent.
    b.goto(&format!("{}/outbox", console.url)).await;
    let listed = b.text("#outbox").await;
    assert!(
        listed.contains("password_return") && listed.contains("dead"),
        "{listed}"
    );
    b.screenshot("outbox").await;
    env.simh.clear_faults();
    b.click(&format!("#retry-{row}")).await;
    assert!(b.text("#notice").await.contains("pending again"));
    let sent: String = wait_until("the retried row to be sent", WAIT, || async {
        sqlx::query_scalar("select status from outbox where id = $1 and status = 'sent'")
            .bind(row)
            .fetch_optional(&env.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(sent, "sent");
    let (_, again) = api.post(&format!("/api/outbox/{row}/retry"), json!({})).await;
    assert_eq!(again["retried"], false, "a row that is not dead is left alone");
    check("the outbox after the retry", &b.html().await);
    b.close().await;
    console.stop().await;
}
