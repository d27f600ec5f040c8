//! Load generators: webhooks over HTTP at a fixed concurrency, and the broker's own ceiling
//! (the same command, published persistently with `mandatory` and confirmed, at the same concurrency).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use shared::{
    command::{Action, Command, Contact, SyncV1},
    publisher::Publisher,
    topology::COMMAND_KEY,
};

/// What a load run measured.
pub struct Run {
    pub count: usize,
    pub failures: usize,
    pub elapsed: Duration,
    /// Sorted latencies of the successful requests.
    pub latencies: Vec<Duration>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        (self.count - self.failures) as f64 / self.elapsed.as_secs_f64()
    }

    /// Several runs of the same load as one: counts and times added, latencies pooled.
    pub fn merge(runs: Vec<Run>) -> Run {
        let mut all = Run {
            count: 0,
            failures: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        };
        for r in runs {
            all.count += r.count;
            all.failures += r.failures;
            all.elapsed += r.elapsed;
            all.latencies.extend(r.latencies);
        }
        all.latencies.sort();
        all
    }
}

/// Sends `total` webhooks (`wpf_action=<action>` for `email_of(i)`) over `connections` kept-alive
/// HTTP/1.1 connections. A plain hyper client, so that the load generator takes as little of the
/// machine's CPU from the ingress as it can.
pub async fn webhooks(
    url: &str,
    key: &str,
    action: &str,
    total: usize,
    connections: usize,
    email_of: impl Fn(usize) -> String + Send + Sync + 'static,
) -> Run {
    let authority = url.trim_start_matches("http://").to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let email_of = Arc::new(email_of);
    let path = format!("/?wpf_action={action}&access_key={key}");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (next, email_of, path, authority) = (next.clone(), email_of.clone(), path.clone(), authority.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0;
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .expect("connect to the ingress");
            stream.set_nodelay(true).ok();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = format!(r#"{{"email":"{}"}}"#, email_of(i));
                let req = hyper::Request::post(path.as_str())
                    .header("host", authority.as_str())
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .expect("request");
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status() == 200;
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                        if ok {
                            lat.push(t.elapsed());
                        } else {
                            failures += 1;
                        }
                    }
                    Err(_) => failures += 1,
                }
            }
            (lat, failures)
        });
    }
    collect(tasks, total, started).await
}

/// Gathers the latencies and failures of the load tasks into a [`Run`].
async fn collect(mut tasks: tokio::task::JoinSet<(Vec<Duration>, usize)>, total: usize, started: Instant) -> Run {
    let mut latencies = Vec::with_capacity(total);
    let mut failures = 0;
    while let Some(r) = tasks.join_next().await {
        let (l, f) = r.expect("load task");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Run {
        count: total,
        failures,
        elapsed,
        latencies,
    }
}

/// A command like the ones the ingress publishes.
pub fn command(action: Action, email: String) -> Vec<u8> {
    Command::SyncV1(SyncV1 {
        event_id: uuid::Uuid::new_v4(),
        received_at: chrono::Utc::now(),
        action,
        contact: Contact {
            email: shared::email::parse(&email).expect("a valid address"),
            id: None,
            cio_id: None,
        },
        send_notification: false,
        role: None,
        tags: None,
    })
    .encode()
}

/// Publishes `total` commands at `concurrency` in-flight confirms on one channel (as the ingress does).
pub async fn publishes(
    publisher: &Publisher,
    total: usize,
    concurrency: usize,
    body_of: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static,
) -> Run {
    publisher.ensure_connected().await.expect("broker reachable");
    let next = Arc::new(AtomicUsize::new(0));
    let body_of = Arc::new(body_of);
    let exchange = publisher.names().commands_exchange();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (p, next, body_of, exchange) = (publisher.clone(), next.clone(), body_of.clone(), exchange.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = body_of(i);
                let id = uuid::Uuid::new_v4();
                let props = lapin::BasicProperties::default()
                    .with_message_id(id.to_string().into())
                    .with_content_type("application/json".into());
                let t = Instant::now();
                match p.publish(&exchange, COMMAND_KEY, &body, props).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(_) => failures += 1,
                }
            }
            (lat, failures)
        });
    }
    collect(tasks, total, started).await
}
