//! Confirmed, persistent, mandatory publishing with reconnection, shared by the ingress (commands),
//! the worker (retries and dead letters) and the operator commands (replay).
//!
//! A publish counts as done only when the broker confirmed it: a nack, a `basic.return` (the
//! message was unroutable, reported by lapin as `Ack(Some(returned))`), a closed channel or no
//! confirm within the timeout are all failures. A broken link is dropped and re-established on
//! the next publish, at most once per [`RECONNECT_BACKOFF`] so that an outage fails fast; with
//! several nodes in `AMQP_URL`, the new link goes to the next node ([`crate::broker`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties, Channel, Confirmation, Connection,
};
use tokio::sync::Mutex;

use crate::{
    broker::Nodes,
    config::AmqpSettings,
    topology::{self, Names},
};

/// The shortest pause between two connection attempts after a failure.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Why a publish did not become durable. None of these messages contain secrets.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable (no queue bound)")]
    Unroutable,
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

#[derive(Clone)]
struct Link {
    conn: Arc<Connection>,
    channel: Channel,
}

impl Link {
    fn is_open(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

struct State {
    link: Option<Link>,
    last_failure: Option<Instant>,
}

/// A cheap-to-clone handle on one publishing connection.
#[derive(Clone)]
pub struct Publisher {
    url: Arc<str>,
    nodes: Nodes,
    names: Names,
    timeout: Duration,
    name: Arc<str>,
    state: Arc<Mutex<State>>,
    /// A copy of the open link for the lock-free-ish fast path.
    fast: Arc<std::sync::RwLock<Option<Link>>>,
}

impl Publisher {
    /// Creates a publisher; it connects lazily (or eagerly through [`Publisher::ensure_connected`]).
    pub fn new(amqp: &AmqpSettings, connection_name: &str) -> Self {
        Self {
            url: amqp.url.as_str().into(),
            nodes: Nodes::new(&amqp.url),
            names: amqp.names(),
            timeout: amqp.publish_timeout,
            name: format!("{connection_name} [{}]", amqp.namespace).into(),
            state: Arc::new(Mutex::new(State {
                link: None,
                last_failure: None,
            })),
            fast: Default::default(),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The broker URL or node list (it holds the password: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True when a channel is open and the topology was declared on it; tries to connect if not.
    pub async fn ensure_connected(&self) -> Result<(), PublishError> {
        tokio::time::timeout(self.timeout, self.link())
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
            .map(|_| ())
    }

    /// Readiness: the link is up (connecting if needed) and the commands queue exists on the
    /// broker right now (a passive declare, so a deleted queue or a lost binding target shows).
    pub async fn check_ready(&self) -> Result<(), PublishError> {
        let check = async {
            let link = self.link().await?;
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let probe = link
                .conn
                .create_channel()
                .await
                .map_err(|e| PublishError::Unavailable(e.to_string()))?;
            let r = probe
                .queue_declare(self.names.commands_queue().as_str().into(), passive, Default::default())
                .await
                .map(|_| ())
                .map_err(|e| PublishError::Unavailable(format!("commands queue: {e}")));
            let _ = probe.close(200, "readiness probe".into()).await;
            r
        };
        tokio::time::timeout(self.timeout, check)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
    }

    /// The open link; the fast path takes only a short read lock, so concurrent publishes never
    /// queue behind each other. Connecting is serialised by the state mutex.
    async fn link(&self) -> Result<Link, PublishError> {
        if let Some(l) = self
            .fast
            .read()
            .expect("lock poisoned")
            .as_ref()
            .filter(|l| l.is_open())
        {
            return Ok(l.clone());
        }
        let mut st = self.state.lock().await;
        if let Some(l) = &st.link {
            if l.is_open() {
                return Ok(l.clone());
            }
            st.link = None;
        }
        if let Some(t) = st.last_failure {
            if t.elapsed() < RECONNECT_BACKOFF {
                return Err(PublishError::Unavailable("reconnecting after a failure".into()));
            }
        }
        match self.open().await {
            Ok(l) => {
                st.link = Some(l.clone());
                st.last_failure = None;
                *self.fast.write().expect("lock poisoned") = Some(l.clone());
                Ok(l)
            }
            Err(e) => {
                st.last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<Link, PublishError> {
        let unavailable = |e: lapin::Error| PublishError::Unavailable(e.to_string());
        let (conn, _node) = self
            .nodes
            .connect(&self.name)
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let channel = conn.create_channel().await.map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        topology::declare(&channel, &self.names).await.map_err(unavailable)?;
        Ok(Link {
            conn: Arc::new(conn),
            channel,
        })
    }

    async fn drop_link(&self, broken: &Link) {
        {
            let mut fast = self.fast.write().expect("lock poisoned");
            if fast.as_ref().is_some_and(|l| Arc::ptr_eq(&l.conn, &broken.conn)) {
                *fast = None;
            }
        }
        let mut st = self.state.lock().await;
        if st.link.as_ref().is_some_and(|l| Arc::ptr_eq(&l.conn, &broken.conn)) {
            st.link = None;
            st.last_failure = Some(Instant::now());
        }
    }

    /// Publishes persistently with `mandatory` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let link = tokio::time::timeout(self.timeout, self.link())
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        let remaining = self.timeout.saturating_sub(started.elapsed());
        let props = properties.with_delivery_mode(2);
        let confirm = async {
            let pending = link
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    payload,
                    props,
                )
                .await?;
            pending.await
        };
        let result = match tokio::time::timeout(remaining, confirm).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(PublishError::Unavailable(e.to_string())),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_returned)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                Err(PublishError::Unavailable("channel is not in confirm mode".into()))
            }
        };
        if matches!(
            result,
            Err(PublishError::Unavailable(_)) | Err(PublishError::Timeout(_))
        ) {
            self.drop_link(&link).await;
        }
        result
    }
}
