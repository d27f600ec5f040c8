//! The AMQP side of the worker, and nothing else: consume commands, group the deliveries that
//! arrive together into a batch, decode them, hand the batch to the pipeline (`sync::process`),
//! and settle each delivery as the pipeline says: ack (its outcome is committed); re-publish to a
//! delayed-retry tier (confirmed), then ack; or publish to `{ns}.dead` with the reason in headers
//! (confirmed), then ack. A message that is not a command is dead-lettered with the reason.
//! Reconnects by itself, and on shutdown stops consuming and finishes (or returns) what it holds.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties,
};
use shared::{
    broker::Nodes,
    command::{Action, Command},
    config::AmqpSettings,
    headers::{self, event_id_of, header_int, header_str},
    publisher::Publisher,
    topology,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use uuid::Uuid;

use crate::sync::{self, Incoming, Outcome, Settlement, SyncCtx};

pub struct Consumer {
    pub ctx: Arc<SyncCtx>,
    pub amqp: AmqpSettings,
    pub publisher: Publisher,
    /// Batches processed at once by this worker.
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    /// Most commands taken together when they queue up (batched Customer.io reads).
    pub batch_size: usize,
    /// How long the first command of a batch waits for company.
    pub batch_wait: Duration,
    /// True while a consumer is attached to the commands queue (readiness).
    pub consuming: Arc<std::sync::atomic::AtomicBool>,
}

/// The longest a partial batch waits while another batch is being processed. Under a backlog each
/// batch spends at least one App API call, so dispatching partial batches often spends the shared
/// budget on small batches: at 500 ms a 10,000-webhook burst took 216–315 calls, at 2 s 173–212
/// (`deploy/local/bench.sh`). A lone command on an idle worker still goes after `batch_wait`.
pub const BUSY_BATCH_WAIT: Duration = Duration::from_secs(2);

/// Copies `props` with the failure headers set.
pub fn failure_properties(props: &BasicProperties, attempts: u32, error: &str) -> BasicProperties {
    let mut h: FieldTable = props.headers().clone().unwrap_or_default();
    let now = Utc::now().to_rfc3339();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v));
    if !h.contains_key(headers::FIRST_FAILURE) {
        h.insert(ShortString::from(headers::FIRST_FAILURE), s(&now));
    }
    h.insert(ShortString::from(headers::LAST_FAILURE), s(&now));
    h.insert(
        ShortString::from(headers::ATTEMPTS),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    let short: String = error.chars().take(1000).collect();
    h.insert(ShortString::from(headers::ERROR), s(&short));
    props.clone().with_headers(h)
}

impl Consumer {
    /// Consumes until `shutdown`, reconnecting after broker failures (to the next node of the
    /// list, see `shared::broker`) with a pause that grows while no node takes the connection
    /// and starts again from the shortest once one did.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        const FIRST_PAUSE: Duration = Duration::from_millis(500);
        let nodes = Nodes::new(&self.amqp.url);
        let mut pause = FIRST_PAUSE;
        while !shutdown.is_cancelled() {
            let mut connected = false;
            match self.consume(&nodes, &mut connected, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    if connected {
                        pause = FIRST_PAUSE;
                    }
                    tracing::warn!("broker connection lost ({e}); reconnecting in {pause:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    pause = (pause * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    async fn consume(
        self: &Arc<Self>,
        nodes: &Nodes,
        connected: &mut bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let names = self.amqp.names();
        let name = format!("cio-sync worker [{}]", self.amqp.namespace);
        let (conn, _node) = nodes.connect(&name).await?;
        *connected = true;
        let ch = conn.create_channel().await?;
        topology::declare(&ch, &names).await?;
        // Room for the batch being processed and the next one filling up.
        let prefetch = (self.concurrency + 2 * self.batch_size).min(u16::MAX as usize) as u16;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let tag = format!("worker-{}", uuid::Uuid::new_v4());
        let mut consumer = ch
            .basic_consume(
                names.commands_queue().as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %names.commands_queue(), concurrency = self.concurrency, prefetch, "consuming commands");
        self.consuming.store(true, std::sync::atomic::Ordering::SeqCst);
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let mut pending: Vec<Delivery> = Vec::new();
        let mut due: Option<tokio::time::Instant> = None;
        let result = loop {
            let flush = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    break Ok(());
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        pending.push(delivery);
                        // Idle: a lone command goes after `batch_wait`. Busy (a batch is being
                        // processed, so commands are queuing): let the next batch fill up.
                        let wait = if tasks.is_empty() { self.batch_wait } else { BUSY_BATCH_WAIT };
                        due.get_or_insert_with(|| tokio::time::Instant::now() + wait);
                        if pending.len() >= self.batch_size {
                            self.dispatch(&mut tasks, std::mem::take(&mut pending), &permits);
                            due = None;
                        }
                    }
                    Some(Err(e)) => break Err(anyhow::anyhow!(e)),
                    None => break Err(anyhow::anyhow!("the broker closed the consumer")),
                },
                _ = flush => {
                    self.dispatch(&mut tasks, std::mem::take(&mut pending), &permits);
                    due = None;
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    if tasks.is_empty() && !pending.is_empty() {
                        self.dispatch(&mut tasks, std::mem::take(&mut pending), &permits);
                        due = None;
                    }
                }
            }
        };
        self.consuming.store(false, std::sync::atomic::Ordering::SeqCst);
        if !pending.is_empty() {
            self.dispatch(&mut tasks, std::mem::take(&mut pending), &permits);
        }
        // Finish what we hold; whatever is still running after the grace period is returned to
        // the queue when the connection closes (it was never acked).
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "grace period over; returning unfinished commands to the queue"
            );
            tasks.abort_all();
        }
        let _ = conn.close(200, "worker stopping".into()).await;
        result
    }

    fn dispatch(self: &Arc<Self>, tasks: &mut JoinSet<()>, batch: Vec<Delivery>, permits: &Arc<Semaphore>) {
        if batch.is_empty() {
            return;
        }
        let me = self.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _slot = permits.acquire_owned().await.expect("the semaphore is never closed");
            me.process(batch).await
        });
    }

    /// Decodes a batch, runs it through the pipeline and settles every delivery.
    async fn process(&self, batch: Vec<Delivery>) {
        let mut commands = Vec::with_capacity(batch.len());
        let mut deliveries = Vec::with_capacity(batch.len());
        for delivery in batch {
            let attempt = attempts_before(&delivery) + 1;
            match Command::decode(&delivery.data) {
                Ok(Command::SyncV1(cmd)) => {
                    commands.push(Incoming {
                        cmd,
                        attempt,
                        key_label: header_str(&delivery.properties, headers::KEY_LABEL),
                    });
                    deliveries.push(delivery);
                }
                Err(reason) => {
                    let event_id = event_id_of(&delivery.properties).unwrap_or_default();
                    tracing::error!(%event_id, %reason, "dead-lettering a message that is not a command");
                    self.dead_letter(&delivery, attempt, &reason).await;
                }
            }
        }
        if commands.is_empty() {
            return;
        }
        let labels: Vec<(Uuid, Action, DateTime<Utc>)> = commands
            .iter()
            .map(|c| (c.cmd.event_id, c.cmd.action, c.cmd.received_at))
            .collect();
        let settlements = sync::process(&self.ctx, commands).await;
        for ((delivery, settlement), (event_id, action, received_at)) in deliveries.iter().zip(settlements).zip(labels)
        {
            let span = tracing::info_span!("command", %event_id, %action);
            self.settle(delivery, action, received_at, settlement)
                .instrument(span)
                .await;
        }
    }

    /// Settles a processed delivery as the pipeline said (its outcome is already recorded).
    async fn settle(&self, delivery: &Delivery, action: Action, received_at: DateTime<Utc>, settlement: Settlement) {
        let attempt = attempts_before(delivery) + 1;
        match settlement {
            Settlement::Done(outcome) => {
                let label = match outcome {
                    Outcome::Satisfied { .. } => "coalesced",
                    o => o.status().as_str(),
                };
                metrics::counter!("cio_worker_commands_total", "action" => action.as_str(), "outcome" => label)
                    .increment(1);
                let lag = (Utc::now() - received_at).to_std().unwrap_or_default();
                metrics::histogram!("cio_worker_lag_seconds", "action" => action.as_str()).record(lag.as_secs_f64());
                ack(delivery).await;
            }
            Settlement::Retry { reason, slot } => {
                metrics::counter!("cio_worker_commands_total", "action" => action.as_str(), "outcome" => "retrying")
                    .increment(1);
                let props = failure_properties(&delivery.properties, attempt, &reason);
                let names = self.publisher.names();
                match self
                    .publisher
                    .publish(&names.retry_exchange(), &slot.routing_key, &delivery.data, props)
                    .await
                {
                    Ok(()) => ack(delivery).await,
                    Err(e) => {
                        tracing::error!("could not schedule the retry ({e}); returning the command to the queue");
                        requeue(delivery).await;
                    }
                }
            }
            Settlement::Dead { reason } => {
                metrics::counter!("cio_worker_commands_total", "action" => action.as_str(), "outcome" => "dead")
                    .increment(1);
                self.dead_letter(delivery, attempt, &reason).await;
            }
        }
    }

    /// Parks a delivery in `{ns}.dead` with the reason (used for undecodable messages too).
    async fn dead_letter(&self, delivery: &Delivery, attempts: u32, reason: &str) {
        let props = failure_properties(&delivery.properties, attempts, reason);
        let exchange = self.publisher.names().dead_exchange();
        match self.publisher.publish(&exchange, "", &delivery.data, props).await {
            Ok(()) => ack(delivery).await,
            Err(e) => {
                tracing::error!("could not dead-letter ({e}); returning the message to the queue");
                requeue(delivery).await;
            }
        }
    }
}

/// Attempts made before this delivery (from its header).
fn attempts_before(delivery: &Delivery) -> u32 {
    header_int(&delivery.properties, headers::ATTEMPTS).unwrap_or(0).max(0) as u32
}

async fn ack(d: &Delivery) {
    if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!("ack failed ({e}); the broker will redeliver, and the event is already recorded");
    }
}

async fn requeue(d: &Delivery) {
    let _ = d
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_headers_keep_the_first_failure_time() {
        let p = failure_properties(&BasicProperties::default(), 1, "boom");
        let first = header_str(&p, headers::FIRST_FAILURE).unwrap();
        let p2 = failure_properties(&p, 2, "boom again");
        assert_eq!(header_str(&p2, headers::FIRST_FAILURE).unwrap(), first);
        assert_eq!(header_int(&p2, headers::ATTEMPTS), Some(2));
        assert_eq!(header_str(&p2, headers::ERROR).as_deref(), Some("boom again"));
    }
}
