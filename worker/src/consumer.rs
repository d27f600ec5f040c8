//! The AMQP side of the worker: consume commands with a prefetch equal to the concurrency,
//! process each, then settle it: ack after the commit; on a transient failure re-publish to a
//! delayed-retry tier (confirmed) and then ack; on a permanent failure or the last attempt publish
//! to `{ns}.dead` with the reason in headers (confirmed) and then ack. Reconnects by itself, and
//! on shutdown stops consuming and finishes (or returns) what it holds.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties, Connection, ConnectionProperties,
};
use shared::{
    command::SyncV1,
    config::AmqpSettings,
    headers,
    publisher::Publisher,
    topology::{self, Names, RETRY_TIERS},
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    events::{self, EventLog},
    sync::{Failure, Outcome, SyncCtx},
};

pub struct Consumer {
    pub ctx: Arc<SyncCtx>,
    pub amqp: AmqpSettings,
    pub publisher: Publisher,
    pub concurrency: usize,
    pub max_attempts: u32,
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

/// Reads an integer header.
pub fn header_int(props: &BasicProperties, name: &str) -> Option<i64> {
    let h = props.headers().as_ref()?;
    match h.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

/// The ingress's event id of a message: its message id, else the `x-cio-event-id` header (both
/// are set by the ingress, so even an undecodable message can be traced back).
pub fn event_id_of(props: &BasicProperties) -> Option<String> {
    props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .or_else(|| header_str(props, headers::EVENT_ID))
}

/// Reads a string header.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The delay before attempt `attempt + 1`: the tiers in order, then the longest.
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_TIERS[(attempt.saturating_sub(1) as usize).min(RETRY_TIERS.len() - 1)].1
}

/// "0.8s", "13s", "8m", "1h 18m": a delay for the event log.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{:.1}s", s).replace(".0s", "s")
    } else if s < 120.0 {
        format!("{}s", s.round())
    } else if s < 3600.0 {
        format!("{}m", (s / 60.0).round())
    } else {
        format!("{}h {}m", (s / 3600.0).floor(), ((s % 3600.0) / 60.0).round())
    }
}

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
    /// Consumes until `shutdown`, reconnecting after broker failures with a growing pause.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(500);
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
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

    async fn consume(self: &Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let names = Names::new(&self.amqp.namespace);
        let props = ConnectionProperties::default()
            .with_connection_name(format!("cio-sync worker [{}]", self.amqp.namespace).into());
        let conn = Connection::connect(&self.amqp.url, props).await?;
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
        tasks.spawn(async move { crate::batch::process(me, batch, permits).await });
    }

    /// Attempts made before this delivery (from its header).
    pub fn attempts_before(delivery: &Delivery) -> u32 {
        header_int(&delivery.properties, headers::ATTEMPTS).unwrap_or(0).max(0) as u32
    }

    /// Settles a processed delivery: ack on an outcome; on a transient failure, re-publish to a
    /// retry tier (confirmed) then ack; else dead-letter with the reason.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        cmd: &SyncV1,
        log: &mut EventLog,
        result: Result<Outcome, Failure>,
    ) {
        let span = tracing::info_span!("command", event_id = %cmd.event_id, action = %cmd.action);
        async {
            let attempt = Self::attempts_before(delivery) + 1;
            match result {
                Ok(outcome) => {
                    let label = if matches!(outcome, Outcome::Satisfied { .. }) { "coalesced".to_string() } else { outcome.status().to_string() };
                    metrics::counter!("cio_worker_commands_total", "action" => cmd.action.as_str(), "outcome" => label).increment(1);
                    let lag = (Utc::now() - cmd.received_at).to_std().unwrap_or_default();
                    metrics::histogram!("cio_worker_lag_seconds", "action" => cmd.action.as_str()).record(lag.as_secs_f64());
                    ack(delivery).await;
                }
                Err(Failure::Transient { reason, retry_after }) if attempt < self.max_attempts => {
                    // A 429's Retry-After is a floor; the tiers still grow so that a long storm backs off.
                    let wanted = retry_after.unwrap_or_default().max(retry_delay(attempt));
                    let slot = topology::retry_slot(wanted, rand::random::<u8>() as usize);
                    log.warning(format!(
                        "{reason}; retrying in about {} (attempt {attempt} of {})",
                        human(slot.delay),
                        self.max_attempts
                    ));
                    if let Err(e) = events::fail(&self.ctx.pool, log, Some(cmd), "retrying", &reason).await {
                        tracing::warn!("could not record the failure in the database: {e}");
                    }
                    metrics::counter!("cio_worker_commands_total", "action" => cmd.action.as_str(), "outcome" => "retrying").increment(1);
                    let props = failure_properties(&delivery.properties, attempt, &reason);
                    let names = self.publisher.names();
                    match self.publisher.publish(&names.retry_exchange(), &slot.routing_key, &delivery.data, props).await {
                        Ok(()) => ack(delivery).await,
                        Err(e) => {
                            tracing::error!("could not schedule the retry ({e}); returning the command to the queue");
                            requeue(delivery).await;
                        }
                    }
                }
                Err(failure) => {
                    let reason = match &failure {
                        Failure::Transient { reason, .. } => format!("gave up after {attempt} attempts: {reason}"),
                        Failure::Permanent { reason } => reason.clone(),
                    };
                    log.error(format!(
                        "{reason}. The command is parked in the dead-letter queue; fix the cause, then `worker dlq replay {}`",
                        cmd.event_id
                    ));
                    if let Err(e) = events::fail(&self.ctx.pool, log, Some(cmd), "dead", &reason).await {
                        tracing::warn!("could not record the failure in the database: {e}");
                    }
                    metrics::counter!("cio_worker_commands_total", "action" => cmd.action.as_str(), "outcome" => "dead").increment(1);
                    self.dead_letter(delivery, attempt, &reason).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Parks a delivery in `{ns}.dead` with the reason (used for undecodable messages too).
    pub async fn dead_letter(&self, delivery: &Delivery, attempts: u32, reason: &str) {
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
    fn delays_read_well_in_the_log() {
        assert_eq!(human(Duration::from_millis(800)), "0.8s");
        assert_eq!(human(Duration::from_secs(1)), "1s");
        assert_eq!(human(Duration::from_secs(13)), "13s");
        assert_eq!(human(Duration::from_secs(480)), "8m");
        assert_eq!(human(Duration::from_secs(4680)), "1h 18m");
    }

    #[test]
    fn retry_delays_grow_through_the_tiers() {
        let secs: Vec<u64> = (1..=7).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 10, 60, 600, 3600, 3600, 3600]);
    }

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
