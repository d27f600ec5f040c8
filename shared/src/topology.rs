//! The AMQP topology, declared idempotently from this one place by both binaries.
//!
//! ```text
//! {ns}.commands (direct) ──"command"──▶ {ns}.commands (quorum) ──dead-letter──▶ {ns}.dead (fanout) ──▶ {ns}.dead (quorum)
//! {ns}.retry (direct) ──"1s"…"1h"──▶ {ns}.retry.1s … {ns}.retry.1h (quorum, message TTL) ──expiry──▶ {ns}.commands
//! ```
//!
//! Every flag below is a stated decision. The queues are quorum queues (replicated, the only kind
//! RabbitMQ 4 keeps for data safety, and supported by 3.10). The work queue dead-letters with the
//! at-least-once strategy (which needs `x-overflow=reject-publish`) so that a message crossing to
//! `{ns}.dead` is never dropped, and its delivery limit parks a message that crashes every worker.
//! Retry tiers are one queue per delay, because RabbitMQ only expires messages at a queue's head.
//!
//! The commands queue's length limit is deliberately not a declaration argument: arguments can
//! never change on an existing queue (declaring different ones fails with PRECONDITION_FAILED and
//! would stop every binary of a deployment whose queue predates them, and every binary whose
//! configured value differs), while a `max-length` policy applies to existing queues at once, can
//! be changed without draining, and behaves alike on RabbitMQ 3.10 and 4.x. The declared
//! `x-overflow=reject-publish` makes the broker refuse (nack) publishes past that limit, which the
//! ingress answers with 503 and `Retry-After`. [`length_limit_policy`] gives the policy.

use std::time::Duration;

use lapin::{
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    Channel, ExchangeKind,
};

/// Routing key of commands on the commands exchange.
pub const COMMAND_KEY: &str = "command";

/// Deliveries of one message before the broker dead-letters it (a crash loop, not our retries:
/// the worker acks a failed command after re-publishing it to a retry tier).
pub const DELIVERY_LIMIT: i64 = 5;

/// See the dead queue's declaration: high enough that peeking never drops a dead letter.
pub const DEAD_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// The delayed-retry tiers: about 1 s → 10 s → 1 min → 10 min → 1 h.
///
/// Each tier has [`JITTER`] variants (one queue each, since a queue expires messages only at its
/// head): a retry goes to one of them at random, so that commands that failed together do not
/// all come back at the same moment.
pub const RETRY_TIERS: [(&str, Duration); 5] = [
    ("1s", Duration::from_secs(1)),
    ("10s", Duration::from_secs(10)),
    ("1m", Duration::from_secs(60)),
    ("10m", Duration::from_secs(600)),
    ("1h", Duration::from_secs(3600)),
];

/// The jitter variants of every tier: a name and the factor applied to the tier's delay.
pub const JITTER: [(&str, f64); 3] = [("a", 0.8), ("b", 1.0), ("c", 1.3)];

/// A retry destination: the routing key on `{ns}.retry` and the delay its queue applies.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySlot {
    pub routing_key: String,
    pub delay: Duration,
}

/// Every retry queue: `(tier, variant, delay)`.
pub fn retry_slots() -> impl Iterator<Item = (&'static str, &'static str, Duration)> {
    RETRY_TIERS
        .iter()
        .flat_map(|(tier, base)| JITTER.iter().map(move |(v, f)| (*tier, *v, base.mul_f64(*f))))
}

/// The retry destination for a wanted delay: the shortest tier at least as long (the longest
/// otherwise), in the variant `pick` (0..JITTER.len(), e.g. random).
/// Variants shorter than `wanted` (a 429's Retry-After) are skipped, so a delay is never shorter
/// than asked.
pub fn retry_slot(wanted: Duration, pick: usize) -> RetrySlot {
    let (tier, base) = tier_for(wanted);
    let long_enough: Vec<(&str, Duration)> = JITTER
        .iter()
        .map(|(v, f)| (*v, base.mul_f64(*f)))
        .filter(|(_, d)| *d >= wanted || wanted > base)
        .collect();
    let (variant, delay) = long_enough[pick % long_enough.len()];
    RetrySlot {
        routing_key: format!("{tier}.{variant}"),
        delay,
    }
}

/// All exchange and queue names of one namespace (`AMQP_NAMESPACE`), and the replica count its
/// quorum queues are created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: String,
    quorum_group_size: Option<u16>,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            ns: namespace.to_string(),
            quorum_group_size: None,
        }
    }
    /// Declares every queue with `x-quorum-initial-group-size` (`None`: the broker's default).
    ///
    /// The broker applies it only when it creates a queue, and checks it on every later declare
    /// like any queue argument: processes of one namespace must agree on it, and a queue created
    /// with another size (or none) fails the declare with PRECONDITION_FAILED naming the argument.
    pub fn with_quorum_group_size(mut self, replicas: Option<u16>) -> Self {
        self.quorum_group_size = replicas;
        self
    }
    pub fn namespace(&self) -> &str {
        &self.ns
    }
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.ns)
    }
    pub fn commands_queue(&self) -> String {
        format!("{}.commands", self.ns)
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.ns)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.ns)
    }
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.ns)
    }
    /// The queue of one retry slot (`routing_key` is `{tier}.{variant}`).
    pub fn retry_queue(&self, routing_key: &str) -> String {
        format!("{}.retry.{routing_key}", self.ns)
    }
    /// Every queue, for deletion and inspection.
    pub fn all_queues(&self) -> Vec<String> {
        let mut q = vec![self.commands_queue(), self.dead_queue()];
        q.extend(retry_slots().map(|(t, v, _)| self.retry_queue(&format!("{t}.{v}"))));
        q
    }
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![self.commands_exchange(), self.dead_exchange(), self.retry_exchange()]
    }
}

/// The RabbitMQ policy that limits the commands queue to `max_length` messages: its name, the
/// pattern matching exactly the namespace's commands queue, and the definition, as given to
/// `rabbitmqctl set_policy --apply-to queues NAME PATTERN DEFINITION`.
pub fn length_limit_policy(names: &Names, max_length: u64) -> (String, String, String) {
    let escaped: String = names
        .commands_queue()
        .chars()
        .flat_map(|c| {
            let special = !(c.is_ascii_alphanumeric() || c == '_' || c == '-');
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect();
    (
        format!("{}-commands-limit", names.namespace()),
        format!("^{escaped}$"),
        format!("{{\"max-length\":{max_length}}}"),
    )
}

/// Picks the retry tier for a delay: the shortest tier at least as long as `wanted`.
pub fn tier_for(wanted: Duration) -> (&'static str, Duration) {
    RETRY_TIERS
        .iter()
        .copied()
        .find(|(_, d)| *d >= wanted)
        .unwrap_or(RETRY_TIERS[RETRY_TIERS.len() - 1])
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn quorum_args(names: &Names, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(ShortString::from("x-queue-type"), s("quorum"));
    if let Some(n) = names.quorum_group_size {
        t.insert(
            ShortString::from("x-quorum-initial-group-size"),
            AMQPValue::LongLongInt(i64::from(n)),
        );
    }
    for (k, v) in extra {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// Durable, not auto-deleted, not internal: exchanges outlive the processes that declare them.
const EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

/// Quorum queues must be durable and cannot be exclusive or auto-deleted.
const QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// Declares every exchange, queue and binding. Idempotent; drift fails with PRECONDITION_FAILED.
pub async fn declare(ch: &Channel, names: &Names) -> lapin::Result<()> {
    let commands = names.commands_exchange();
    let dead = names.dead_exchange();
    let retry = names.retry_exchange();
    ch.exchange_declare(
        commands.as_str().into(),
        ExchangeKind::Direct,
        EXCHANGE,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        dead.as_str().into(),
        ExchangeKind::Fanout,
        EXCHANGE,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        retry.as_str().into(),
        ExchangeKind::Direct,
        EXCHANGE,
        FieldTable::default(),
    )
    .await?;

    // Operators peek at dead letters (`worker dlq list`), which returns them to the queue; RabbitMQ 4
    // counts such returns against a default delivery limit of 20 and then drops the message, so the
    // dead queue gets a limit no inspection will ever reach.
    ch.queue_declare(
        names.dead_queue().as_str().into(),
        QUEUE,
        quorum_args(
            names,
            &[("x-delivery-limit", AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT))],
        ),
    )
    .await?;
    ch.queue_bind(
        names.dead_queue().as_str().into(),
        dead.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let work_args = quorum_args(
        names,
        &[
            ("x-dead-letter-exchange", s(&dead)),
            ("x-dead-letter-strategy", s("at-least-once")),
            ("x-overflow", s("reject-publish")),
            ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
        ],
    );
    ch.queue_declare(names.commands_queue().as_str().into(), QUEUE, work_args)
        .await?;
    ch.queue_bind(
        names.commands_queue().as_str().into(),
        commands.as_str().into(),
        COMMAND_KEY.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    for (tier, variant, delay) in retry_slots() {
        let key = format!("{tier}.{variant}");
        let q = names.retry_queue(&key);
        let args = quorum_args(
            names,
            &[
                ("x-message-ttl", AMQPValue::LongLongInt(delay.as_millis() as i64)),
                ("x-dead-letter-exchange", s(&commands)),
                ("x-dead-letter-routing-key", s(COMMAND_KEY)),
                ("x-dead-letter-strategy", s("at-least-once")),
                ("x-overflow", s("reject-publish")),
            ],
        );
        ch.queue_declare(q.as_str().into(), QUEUE, args).await?;
        ch.queue_bind(
            q.as_str().into(),
            retry.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

/// Checks with passive declares, changing nothing, that `exchanges` and `queues` exist; returns
/// one problem per item that is not there (`queue acme.dead`) or could not be checked
/// (`queue acme.dead: <error>`).
/// A failed passive declare closes its channel, so each item gets a channel of its own.
pub async fn missing(conn: &lapin::Connection, exchanges: &[String], queues: &[String]) -> Vec<String> {
    let passive_exchange = ExchangeDeclareOptions {
        passive: true,
        ..EXCHANGE
    };
    let passive_queue = QueueDeclareOptions { passive: true, ..QUEUE };
    let mut problems = Vec::new();
    for (kind, name) in exchanges
        .iter()
        .map(|e| ("exchange", e))
        .chain(queues.iter().map(|q| ("queue", q)))
    {
        let ch = match conn.create_channel().await {
            Ok(ch) => ch,
            Err(e) => {
                problems.push(format!("{kind} {name}: {e}"));
                continue;
            }
        };
        let result = if kind == "exchange" {
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Direct,
                passive_exchange,
                FieldTable::default(),
            )
            .await
        } else {
            ch.queue_declare(name.as_str().into(), passive_queue, FieldTable::default())
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                let _ = ch.close(200, "checked".into()).await;
            }
            Err(e) if not_found(&e) => problems.push(format!("{kind} {name}")),
            Err(e) => problems.push(format!("{kind} {name}: {e}")),
        }
    }
    problems
}

/// Whether a declare failed because the exchange or queue does not exist.
fn not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Deletes every queue and exchange of the namespace (tests, and tearing a namespace down).
pub async fn delete(ch: &Channel, names: &Names) -> lapin::Result<()> {
    for q in names.all_queues() {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for e in names.all_exchanges() {
        ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_by_the_namespace() {
        let n = Names::new("acme");
        assert_eq!(n.commands_exchange(), "acme.commands");
        assert_eq!(n.dead_queue(), "acme.dead");
        assert_eq!(n.retry_queue("10s.b"), "acme.retry.10s.b");
        assert_eq!(n.all_queues().len(), 2 + 15);
    }

    #[test]
    fn the_length_limit_policy_matches_exactly_the_commands_queue() {
        let (name, pattern, definition) = length_limit_policy(&Names::new("cio.sync"), 1000);
        assert_eq!(name, "cio.sync-commands-limit");
        assert_eq!(pattern, r"^cio\.sync\.commands$");
        assert_eq!(definition, r#"{"max-length":1000}"#);
    }

    #[test]
    fn the_quorum_group_size_is_a_queue_argument_only_when_set() {
        let key = "x-quorum-initial-group-size";
        let sized = quorum_args(&Names::new("a").with_quorum_group_size(Some(3)), &[]);
        assert_eq!(
            sized.inner().get(&ShortString::from(key)),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert!(!quorum_args(&Names::new("a"), &[]).contains_key(key));
    }

    #[test]
    fn retry_slots_spread_each_tier() {
        let s = retry_slot(Duration::from_secs(5), 0);
        assert_eq!(
            s,
            RetrySlot {
                routing_key: "10s.a".into(),
                delay: Duration::from_secs(8)
            }
        );
        assert_eq!(retry_slot(Duration::from_secs(5), 2).delay, Duration::from_secs(13));
        // A Retry-After of 1 s never gets the 0.8 s variant.
        for pick in 0..6 {
            assert!(retry_slot(Duration::from_secs(1), pick).delay >= Duration::from_secs(1));
        }
        assert_eq!(retry_slots().count(), 15);
    }

    #[test]
    fn tier_for_picks_the_shortest_tier_that_is_long_enough() {
        assert_eq!(tier_for(Duration::from_millis(10)).0, "1s");
        assert_eq!(tier_for(Duration::from_secs(1)).0, "1s");
        assert_eq!(tier_for(Duration::from_secs(2)).0, "10s");
        assert_eq!(tier_for(Duration::from_secs(30)).0, "1m");
        assert_eq!(tier_for(Duration::from_secs(99_999)).0, "1h");
    }
}
