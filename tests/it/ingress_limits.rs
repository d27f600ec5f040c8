//! Shedding load at once: the in-flight cap, the connection cap when every connection is busy
//! (trickling ones are evicted instead: see `ingress_slow_clients`),
//! and a full commands queue (back-pressure) all answer 503 with `Retry-After` immediately.
//!
//! To hold publishes in flight deterministically, the ingress talks to the real broker through a
//! small TCP relay that can stop passing the broker's frames (its confirms) back for a while.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use testkit::{env::ACCESS_KEY, metrics::scrape, wait_until, TestEnv};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// A relay to the broker whose broker-to-client direction can be held.
struct Relay {
    port: u16,
    held: Arc<AtomicBool>,
    released: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicBool::new(false));
        let released = Arc::new(Notify::new());
        let (h, r) = (held.clone(), released.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut br, mut bw) = broker.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut bw).await;
                });
                let (h, r) = (h.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match br.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        while h.load(Ordering::SeqCst) {
                            let wait = r.notified();
                            if !h.load(Ordering::SeqCst) {
                                break;
                            }
                            wait.await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Relay {
            port,
            held,
            released,
            task,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.released.notify_waiters();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

fn add(c: &reqwest::Client, url: &str, email: &str) -> reqwest::RequestBuilder {
    c.post(format!("{url}/?wpf_action=add&access_key={ACCESS_KEY}"))
        .json(&json!({ "email": email }))
}

/// Starts `n` more webhooks whose confirms the relay holds; returns once their messages are in the
/// queue, i.e. once they hold their in-flight slots.
async fn hold_in_flight(env: &TestEnv, c: &reqwest::Client, url: &str, n: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    let queue = env.names().commands_queue();
    let before = env.queue_len(&queue).await as usize;
    let held: Vec<_> = (0..n)
        .map(|i| {
            let r = add(c, url, &format!("held{before}-{i}@example.com"));
            tokio::spawn(async move { r.send().await.unwrap().status().as_u16() })
        })
        .collect();
    wait_until(
        "the held webhooks to reach the queue",
        Duration::from_secs(10),
        || async { (env.queue_len(&queue).await as usize >= before + n).then_some(()) },
    )
    .await;
    assert!(held.iter().all(|h| !h.is_finished()), "their confirms are held");
    held
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_in_flight_cap_a_webhook_gets_503_at_once() {
    let mut env = TestEnv::new().await;
    let relay = Relay::start().await;
    let mut s = env.ingress_settings();
    s.amqp.url = relay.url();
    s.amqp.publish_timeout = Duration::from_secs(20);
    s.limits.max_in_flight = 2;
    let urls = env.start_ingress_at(s).await;
    let c = reqwest::Client::new();
    relay.hold();
    let held = hold_in_flight(&env, &c, &urls.public, 2).await;

    let started = Instant::now();
    let r = add(&c, &urls.public, "third@example.com").send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"error": "too many webhooks in flight: retry later"}));
    assert!(
        took < Duration::from_secs(2),
        "answered at once, not after a publish: {took:?}"
    );
    // `wpf_action=test` publishes nothing and still answers.
    let t = c
        .get(format!("{}/?wpf_action=test&access_key={ACCESS_KEY}", urls.public))
        .send()
        .await
        .unwrap();
    assert_eq!(t.status(), 200);

    relay.release();
    for h in held {
        assert_eq!(h.await.unwrap(), 200, "the held webhooks are confirmed after all");
    }
    let m = scrape(&format!("{}/metrics", urls.admin)).await;
    assert!(
        m.contains(r#"cio_ingress_unavailable_total{reason="in_flight_limit"}"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_connection_is_busy_a_new_one_gets_503_at_once() {
    let mut env = TestEnv::new().await;
    let relay = Relay::start().await;
    let mut s = env.ingress_settings();
    s.amqp.url = relay.url();
    s.amqp.publish_timeout = Duration::from_secs(20);
    s.limits.max_connections = 2;
    let urls = env.start_ingress_at(s).await;
    relay.hold();
    // Two connections, each with a webhook waiting for its confirm: both busy.
    let clients: Vec<reqwest::Client> = (0..2).map(|_| reqwest::Client::new()).collect();
    let mut held = Vec::new();
    for c in &clients {
        held.extend(hold_in_flight(&env, c, &urls.public, 1).await);
    }
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/?wpf_action=test&access_key={ACCESS_KEY}", urls.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"error": "too many connections: retry later"}));
    assert!(started.elapsed() < Duration::from_secs(2));
    relay.release();
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_commands_queue_is_503_at_once_counted_and_worded_for_the_caller() {
    let mut env = TestEnv::new().await;
    let urls = env.start_ingress_at(env.ingress_settings()).await;
    let c = reqwest::Client::new();
    // The queue length limit, as an operator sets it (the README's `rabbitmqctl set_policy`).
    let (name, pattern, definition) = shared::topology::length_limit_policy(&env.names(), 2);
    let _policy = testkit::broker::Policy::set(&name, &pattern, &definition);
    let names = env.names();
    // Fill the queue to the limit (the policy takes a moment to apply).
    let mut accepted = 0;
    let r = wait_until("the queue to be full", Duration::from_secs(20), || {
        let c = c.clone();
        let url = urls.public.clone();
        let n = accepted;
        accepted += 1;
        async move {
            let r = add(&c, &url, &format!("fill{n}@example.com")).send().await.unwrap();
            (r.status() == 503).then_some(r)
        }
    })
    .await;
    let full = env.queue_len(&names.commands_queue()).await;
    assert!(full >= 2, "{full} commands queued");
    assert_eq!(r.headers()["retry-after"], "30");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"error": "the queue is full: retry later"}));

    let started = Instant::now();
    let r = add(&c, &urls.public, "more@example.com").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
    assert_eq!(
        env.queue_len(&names.commands_queue()).await,
        full,
        "nothing more was queued"
    );
    let m = scrape(&format!("{}/metrics", urls.admin)).await;
    assert!(
        m.contains(r#"cio_ingress_unavailable_total{reason="queue_full"}"#),
        "{m}"
    );
}
