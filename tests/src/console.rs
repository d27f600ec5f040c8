//! The operator console run in-process against a test environment, and helpers for its tests:
//! an API client with a bearer token, dead letters published straight into `{ns}.dead`.

use std::time::Duration;

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use secrecy::SecretString;
use shared::{
    command::{Action, Command, Contact, SyncV1},
    headers,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::console::{settings::OperatorToken, AppState, ConsoleSettings};

use crate::TestEnv;

/// The operator token every test console accepts (label `ops`).
pub const TOKEN: &str = "console-token-0123456789abcdef";

pub struct Console {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Console {
    /// Serves the console on a free port for `env` (its database and namespace).
    pub async fn start(env: &TestEnv) -> Console {
        let settings = ConsoleSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            tokens: vec![OperatorToken {
                label: "ops".into(),
                secret: SecretString::from(TOKEN),
            }],
            database_url: env.database_url.clone(),
            amqp: env.amqp(),
            app_rate_limit: 10.0,
            secure_cookie: false,
            log_format: "text".into(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(&settings, env.pool.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            worker::console::serve(listener, state, async move { s.cancelled().await })
                .await
                .expect("console serves");
        });
        let console = Console {
            url,
            stop,
            task: Some(task),
        };
        let health = format!("{}/healthz", console.url);
        crate::wait_until("the console to answer", Duration::from_secs(10), || {
            let h = health.clone();
            async move { reqwest::get(h).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        console
    }

    /// An HTTP client for the JSON API, authenticated with the bearer token.
    pub fn api(&self) -> Api {
        Api {
            base: self.url.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The JSON API with `Authorization: Bearer TOKEN`.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("console answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("console answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The status and raw text of a GET (to search it).
    pub async fn text(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("console answers");
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// Publishes dead letters (valid `sync_v1` commands for `emails`, with the worker's failure
/// headers) straight into the namespace's dead-letter exchange; returns their event ids in order.
pub async fn publish_dead_letters(env: &TestEnv, emails: &[&str], reason: &str) -> Vec<String> {
    let (conn, ch) = env.channel().await;
    shared::topology::declare(&ch, &env.names()).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut ids = Vec::new();
    for email in emails {
        let id = uuid::Uuid::new_v4();
        let body = Command::SyncV1(SyncV1 {
            event_id: id,
            received_at: chrono::Utc::now(),
            action: Action::Add,
            contact: Contact {
                email: shared::email::parse(email).expect("a valid address"),
                id: None,
                cio_id: None,
            },
            send_notification: false,
            role: None,
            tags: None,
        })
        .encode();
        let mut h = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(v.into());
        h.insert(ShortString::from(headers::ERROR), s(reason));
        h.insert(ShortString::from(headers::ATTEMPTS), AMQPValue::LongLongInt(3));
        h.insert(
            ShortString::from(headers::FIRST_FAILURE),
            s(&chrono::Utc::now().to_rfc3339()),
        );
        h.insert(
            ShortString::from(headers::LAST_FAILURE),
            s(&chrono::Utc::now().to_rfc3339()),
        );
        h.insert(ShortString::from(headers::EVENT_ID), s(&id.to_string()));
        let props = BasicProperties::default()
            .with_message_id(id.to_string().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(h);
        ch.basic_publish(
            env.names().dead_exchange().as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
        ids.push(id.to_string());
    }
    let _ = conn.close(200, "bye".into()).await;
    ids
}
