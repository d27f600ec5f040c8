//! One isolated environment per test: a fresh database (migrated), a fresh AMQP namespace, a
//! Customer.io simulator, and helpers to run the real ingress and worker against them in-process.
//! Dropping the environment stops what it started and deletes the database and the namespace,
//! also when the test failed, so that nothing is left behind.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::{config::AmqpSettings, topology::Names};
use sqlx::{postgres::PgPoolOptions, AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sim::{SimConfig, SimHandle, Simulator};

/// The access key every test ingress accepts.
pub const ACCESS_KEY: &str = "test-access-key-0123";
/// A fixed 32-byte SECRETS_KEY for tests.
pub const SECRETS_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The server part of the database URL (`postgres://postgres@127.0.0.1:5432`).
pub fn pg_server() -> String {
    std::env::var("TEST_PG_SERVER").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| shared::config::DEFAULT_AMQP_URL.into())
}

/// Installs test logging once (`RUST_LOG` to see it).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("RUST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
    });
}

/// Where an in-process ingress listens: webhooks and `/healthz`, and the operator port.
#[derive(Debug, Clone)]
pub struct IngressUrls {
    pub public: String,
    pub admin: String,
}

pub struct TestEnv {
    pub db_name: String,
    pub database_url: String,
    pub pool: PgPool,
    pub namespace: String,
    pub sim: Option<Simulator>,
    pub simh: SimHandle,
    tasks: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl TestEnv {
    /// Declares the namespace's topology, as the first ingress or worker to start does.
    pub async fn declare_topology(&self) {
        let (conn, ch) = self.channel().await;
        shared::topology::declare(&ch, &self.names()).await.unwrap();
        let _ = conn.close(200, "bye".into()).await;
    }

    /// The one number a statement such as `select count(*) from …` returns.
    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// A new environment with the simulator at its default (10 req/s) limit.
    pub async fn new() -> Self {
        Self::with_sim(SimConfig::default()).await
    }

    pub async fn with_sim(cfg: SimConfig) -> Self {
        init_logging();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("cio_test_{}", &id[..16]);
        let server = pg_server();
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("Postgres must run at 127.0.0.1:5432 (set TEST_PG_SERVER otherwise)");
        sqlx::query(AssertSqlSafe(format!("create database {db_name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let database_url = format!("{server}/{db_name}");
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .connect(&database_url)
            .await
            .expect("connect test database");
        shared::MIGRATOR.run(&pool).await.expect("migrations apply");
        let sim = Simulator::start(cfg).await.expect("simulator starts");
        let simh = sim.handle();
        Self {
            db_name,
            database_url,
            pool,
            namespace: format!("test_{}", &id[..16]),
            sim: Some(sim),
            simh,
            tasks: Vec::new(),
        }
    }

    pub fn sim_url(&self) -> String {
        self.sim.as_ref().expect("simulator running").url()
    }

    pub fn names(&self) -> Names {
        Names::new(&self.namespace)
    }

    pub fn amqp(&self) -> AmqpSettings {
        AmqpSettings {
            url: amqp_url(),
            namespace: self.namespace.clone(),
            publish_timeout: Duration::from_secs(5),
            quorum_group_size: None,
        }
    }

    pub fn ingress_settings(&self) -> ingress::Settings {
        ingress::Settings {
            access_keys: vec![
                ingress::auth::AccessKey::unlabelled(ACCESS_KEY),
                ingress::auth::AccessKey::unlabelled("rotated-key-4567"),
            ],
            addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            amqp: self.amqp(),
            log_format: "text".into(),
            shutdown_grace: Duration::from_secs(5),
            limits: ingress::Limits::default(),
        }
    }

    /// Worker settings pointing at this environment's simulator, database and namespace.
    pub fn worker_settings(&self) -> worker::Settings {
        let sim = self.sim_url();
        worker::Settings {
            database_url: self.database_url.clone(),
            amqp: self.amqp(),
            cio: worker::cio::CioSettings {
                app_url: sim.clone(),
                track_url: sim,
                app_api_key: SecretString::from("sim-app-key"),
                site_id: Some("sim-site".into()),
                track_api_key: Some(SecretString::from("sim-track-key")),
                timeout: Duration::from_secs(5),
            },
            app_rate_limit: 10.0,
            concurrency: 8,
            max_attempts: 10,
            batch_size: 100,
            batch_wait: Duration::from_millis(20),
            password_return: None,
            mail: None,
            default_role: "subscriber".into(),
            password_length: 20,
            field_map: worker::fieldmap::FieldMap::default(),
            log_format: "text".into(),
            shutdown_grace: Duration::from_secs(5),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            outbox_give_up_after: Duration::from_secs(24 * 3600),
            sync_email_changes: true,
            not_found_attempts: worker::sync::NOT_FOUND_ATTEMPTS,
            snapshot_max_members: worker::sync::snapshot::DEFAULT_MAX_MEMBERS,
            retention_days: 0,
            retention_first_run: worker::retention::FIRST_PRUNE_AFTER,
        }
    }

    /// Settings with the password return on (field `password`).
    pub fn with_password_return(mut s: worker::Settings) -> worker::Settings {
        s.password_return = Some(worker::outbox::PasswordReturn {
            field: "password".into(),
            secrets: worker::secretbox::SecretBox::from_base64(SECRETS_KEY).unwrap(),
        });
        s
    }

    /// Starts the real ingress in-process on a free port; returns its public base URL.
    pub async fn start_ingress(&mut self) -> String {
        self.start_ingress_with(self.ingress_settings()).await
    }

    pub async fn start_ingress_with(&mut self, settings: ingress::Settings) -> String {
        self.start_ingress_at(settings).await.public
    }

    /// Starts the real ingress in-process on free loopback ports (public and admin) and waits
    /// until its admin port says it is ready.
    pub async fn start_ingress_at(&mut self, settings: ingress::Settings) -> IngressUrls {
        let urls = self.spawn_ingress(settings).await;
        let client = reqwest::Client::new();
        crate::wait_until("ingress ready", Duration::from_secs(20), || {
            let c = client.clone();
            let u = format!("{}/readyz", urls.admin);
            async move { c.get(u).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        urls
    }

    /// Starts the real ingress in-process without waiting for it to be ready (e.g. no broker).
    pub async fn spawn_ingress(&mut self, settings: ingress::Settings) -> IngressUrls {
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = public.local_addr().unwrap();
        let admin_addr: SocketAddr = admin.local_addr().unwrap();
        let token = CancellationToken::new();
        let stop = token.clone();
        let handle = tokio::spawn(async move {
            ingress::serve(ingress::Listeners { public, admin }, settings, async move {
                stop.cancelled().await
            })
            .await
            .expect("ingress runs");
        });
        self.tasks.push((token, handle));
        IngressUrls {
            public: format!("http://{addr}"),
            admin: format!("http://{admin_addr}"),
        }
    }

    /// Builds the context of a worker without consuming (for tests that call `sync::handle`).
    pub async fn worker(&self, settings: worker::Settings) -> worker::Worker {
        worker::Worker::build(settings, self.pool.clone())
            .await
            .expect("worker builds")
    }

    /// Starts a whole worker (consumer and outbox) in-process; returns its stop token.
    pub async fn start_worker(&mut self, settings: worker::Settings) -> CancellationToken {
        let w = self.worker(settings).await;
        self.run_worker(w)
    }

    /// Runs a built worker in-process until its token is cancelled (or the environment drops).
    pub fn run_worker(&mut self, w: worker::Worker) -> CancellationToken {
        let token = CancellationToken::new();
        let stop = token.clone();
        let handle = tokio::spawn(async move {
            w.run(None, stop).await.expect("worker runs");
        });
        self.tasks.push((token.clone(), handle));
        token
    }

    /// The status of an event, once the worker has recorded it.
    pub async fn event_status(&self, event_id: &str) -> Option<String> {
        let id: uuid::Uuid = event_id.parse().ok()?;
        sqlx::query_scalar("select status from webhook_events where event_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    /// Waits for an event to reach a final status and returns it.
    pub async fn wait_final(&self, event_id: &str) -> String {
        crate::wait_until(
            &format!("event {event_id} to finish"),
            Duration::from_secs(30),
            || async {
                self.event_status(event_id)
                    .await
                    .filter(|s| !matches!(s.as_str(), "processing" | "retrying"))
            },
        )
        .await
    }

    pub async fn event_log(&self, event_id: &str) -> Vec<String> {
        let id: uuid::Uuid = event_id.parse().unwrap();
        sqlx::query_scalar("select message from event_log where event_id = $1 order by at, id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// A lapin channel on the broker (for inspecting queues).
    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        (conn, ch)
    }

    /// Messages waiting in a queue of this namespace.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let (conn, ch) = self.channel().await;
        let opts = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let n = ch
            .queue_declare(queue.into(), opts, Default::default())
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        let _ = conn.close(200, "bye".into()).await;
        n
    }

    /// Stops the in-process services (also done on drop).
    pub async fn stop_services(&mut self) {
        for (t, _) in &self.tasks {
            t.cancel();
        }
        for (_, h) in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (t, h) in self.tasks.drain(..) {
            t.cancel();
            h.abort();
        }
        let sim = self.sim.take();
        let db = self.db_name.clone();
        let names = self.names();
        let server = pg_server();
        let cleanup = move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(conn) = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
                {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = shared::topology::delete(&ch, &names).await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
                if let Ok(mut admin) = PgConnection::connect(&format!("{server}/postgres")).await {
                    let _ = sqlx::query(AssertSqlSafe(format!("drop database if exists {db} with (force)")))
                        .execute(&mut admin)
                        .await;
                }
            });
        };
        // The simulator's server task belongs to the test's runtime; dropping it stops it.
        drop(sim);
        let _ = std::thread::spawn(cleanup).join();
    }
}

/// Sends one webhook through a running ingress (`?access_key=…&{query}`, JSON body with the
/// e-mail), asserts the 200, and returns the event id.
pub async fn send(url: &str, query: &str, email: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{url}/?access_key={ACCESS_KEY}&{query}"))
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "webhook for {email} was not queued");
    let v: serde_json::Value = r.json().await.unwrap();
    v["event_id"].as_str().unwrap().to_string()
}
