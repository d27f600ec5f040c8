//! The console's link to RabbitMQ: one connection (reopened when lost), a channel per request,
//! the confirmed publisher used by replays, and the lock that serialises walks of the dead-letter
//! queue (a message one walk holds is invisible to another, so they must not overlap).

use std::sync::Arc;

use lapin::{Channel, Connection};
use shared::{broker::Nodes, config::AmqpSettings, publisher::Publisher, topology::Names};
use tokio::sync::{Mutex, MutexGuard};

pub struct Broker {
    nodes: Nodes,
    pub names: Names,
    conn: Mutex<Option<Arc<Connection>>>,
    pub publisher: Publisher,
    dlq: Mutex<()>,
}

/// A connection held for one walk of the dead-letter queue (no other walk runs meanwhile).
pub struct DlqTurn<'a> {
    _turn: MutexGuard<'a, ()>,
    conn: Arc<Connection>,
}

impl DlqTurn<'_> {
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

impl Broker {
    pub fn new(amqp: &AmqpSettings) -> Self {
        Self {
            nodes: Nodes::new(&amqp.url),
            names: amqp.names(),
            conn: Mutex::new(None),
            publisher: Publisher::new(amqp, "cio-sync console (replays)"),
            dlq: Mutex::new(()),
        }
    }

    /// The shared connection, opened (and the topology declared) when there is none.
    async fn connection(&self) -> anyhow::Result<Arc<Connection>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let (conn, _node) = self
            .nodes
            .connect("cio-sync console")
            .await
            .map_err(|e| anyhow::anyhow!("RabbitMQ is unreachable: {e}"))?;
        let ch = conn.create_channel().await?;
        shared::topology::declare(&ch, &self.names).await?;
        let _ = ch.close(200, "declared".into()).await;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A fresh channel on the shared connection (the caller closes it).
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.connection().await?.create_channel().await?)
    }

    /// Waits for this process's turn at the dead-letter queue.
    pub async fn dlq_turn(&self) -> anyhow::Result<DlqTurn<'_>> {
        let turn = self.dlq.lock().await;
        let conn = self.connection().await?;
        Ok(DlqTurn { _turn: turn, conn })
    }
}
