//! Operator access to the dead-letter queue (`worker dlq …`).
//!
//! Listing walks the queue with `basic.get` (unacknowledged) one message at a time, keeps at most
//! the page it shows, and gives every message back in order (see [`Walk`]), so nothing is removed.
//! Purging walks the same way and removes only what it chose, each after the caller saved it. Replay re-publishes a dead letter to the
//! commands exchange with its attempt count reset, waits for the broker's confirm, and only then
//! acks the dead copy: an interrupted replay leaves every message either still dead or queued again
//! (at worst both, and the worker skips an event that already finished), so rerunning is safe.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::{
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection,
};
use shared::{
    command::Command,
    config::AmqpSettings,
    headers,
    publisher::Publisher,
    topology::{self, Names, COMMAND_KEY},
};

use shared::headers::{event_id_of, header_int, header_str};

/// What an operator needs to know about one dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub delivery_tag: u64,
    pub event_id: String,
    pub action: String,
    pub contact: String,
    pub attempts: i64,
    pub error: String,
    pub first_failure: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl DeadLetter {
    fn from_parts(delivery_tag: u64, properties: BasicProperties, body: Vec<u8>) -> Self {
        let decoded = Command::decode(&body).ok();
        let (event_id, action, contact) = match &decoded {
            Some(Command::SyncV1(c)) => (
                c.event_id.to_string(),
                c.action.to_string(),
                c.contact.email.to_string(),
            ),
            None => (
                event_id_of(&properties).unwrap_or_else(|| "?".into()),
                header_str(&properties, headers::ACTION).unwrap_or_else(|| "?".into()),
                header_str(&properties, headers::CONTACT).unwrap_or_else(|| "?".into()),
            ),
        };
        let time = |h: &str| {
            header_str(&properties, h)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let (error, attempts) = match header_str(&properties, headers::ERROR) {
            Some(e) => (e, header_int(&properties, headers::ATTEMPTS).unwrap_or(0)),
            None => broker_reason(&properties),
        };
        Self {
            delivery_tag,
            event_id,
            action,
            contact,
            attempts,
            error,
            first_failure: time(headers::FIRST_FAILURE),
            last_failure: time(headers::LAST_FAILURE).or_else(|| time(headers::FIRST_FAILURE)),
            body,
            properties,
        }
    }
}

impl DeadLetter {
    /// Everything about the dead letter as one JSON object (the command as JSON when it is, else
    /// as text, or base64 when it is not UTF-8).
    pub fn to_json(&self) -> serde_json::Value {
        use base64::Engine;
        let command = match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => serde_json::json!({ "command": v }),
            Err(_) => match std::str::from_utf8(&self.body) {
                Ok(t) => serde_json::json!({ "body": t }),
                Err(_) => serde_json::json!({
                    "body_base64": base64::engine::general_purpose::STANDARD.encode(&self.body)
                }),
            },
        };
        let mut v = serde_json::json!({
            "event_id": self.event_id,
            "action": self.action,
            "contact": self.contact,
            "attempts": self.attempts,
            "error": self.error,
            "first_failure": self.first_failure,
            "last_failure": self.last_failure,
            "message_id": self.properties.message_id().as_ref().map(|m| m.to_string()),
        });
        if let (Some(o), serde_json::Value::Object(c)) = (v.as_object_mut(), command) {
            o.extend(c);
        }
        v
    }
}

/// A message the broker dead-lettered itself (delivery limit): the reason from `x-death`.
fn broker_reason(p: &BasicProperties) -> (String, i64) {
    let reason = header_str(p, "x-first-death-reason").unwrap_or_else(|| "unknown".into());
    let count = p
        .headers()
        .as_ref()
        .and_then(|h| match h.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().first().and_then(|d| match d {
                AMQPValue::FieldTable(t) => match t.inner().get("count") {
                    Some(AMQPValue::LongLongInt(n)) => Some(*n),
                    Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
                    _ => None,
                },
                _ => None,
            }),
            _ => None,
        })
        .unwrap_or(0);
    let delivery = header_int(p, "x-delivery-count").unwrap_or(0);
    (
        format!(
            "dead-lettered by the broker ({reason}); the message was delivered {delivery} time(s) without being settled — a worker crashed or lost its connection on it"
        ),
        count.max(delivery),
    )
}

/// An open channel on the namespace's topology.
pub struct Dlq {
    conn: Connection,
    channel: Channel,
    names: Names,
    publisher: Publisher,
}

impl Dlq {
    pub async fn open(amqp: &AmqpSettings) -> anyhow::Result<Self> {
        let names = amqp.names();
        let (conn, _node) = shared::broker::Nodes::new(&amqp.url).connect("cio-sync dlq").await?;
        let channel = conn.create_channel().await?;
        topology::declare(&channel, &names).await?;
        let publisher = Publisher::new(amqp, "cio-sync dlq replay");
        Ok(Self {
            conn,
            channel,
            names,
            publisher,
        })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Re-publishes one dead letter to the commands exchange (attempts reset) and waits for the
    /// broker's confirm; the caller's walk then removes the dead copy.
    pub async fn publish_replay(&self, dl: &DeadLetter) -> anyhow::Result<()> {
        let props = replay_properties(dl);
        self.publisher
            .publish(&self.names.commands_exchange(), COMMAND_KEY, &dl.body, props)
            .await?;
        Ok(())
    }

    /// Gives back everything not acked.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The properties a replayed dead letter is published with: its own, without the attempt count
/// and the broker's dead-lettering headers, stamped with the time of the replay.
pub fn replay_properties(dl: &DeadLetter) -> BasicProperties {
    let h: FieldTable = dl.properties.headers().clone().unwrap_or_default();
    let mut cleaned = FieldTable::default();
    for (k, v) in h.inner() {
        if ![
            headers::ATTEMPTS,
            "x-death",
            "x-first-death-reason",
            "x-first-death-queue",
            "x-first-death-exchange",
            "x-last-death-reason",
            "x-last-death-queue",
            "x-last-death-exchange",
            "x-delivery-count",
        ]
        .contains(&k.as_str())
        {
            cleaned.insert(k.clone(), v.clone());
        }
    }
    cleaned.insert(
        ShortString::from("x-cio-replayed-at"),
        AMQPValue::LongString(Utc::now().to_rfc3339().into()),
    );
    dl.properties.clone().with_headers(cleaned)
}

/// A window of the dead-letter queue, read without removing anything.
#[derive(Debug)]
pub struct Window {
    /// Dead letters in the queue (all of them were walked).
    pub total: usize,
    /// The queue position (0 = head) of the first item.
    pub offset: usize,
    pub items: Vec<DeadLetter>,
    /// Whether more dead letters follow the window.
    pub more: bool,
}

/// How the walks below keep the queue whole and in order.
///
/// A walk takes every message of the queue with unacknowledged `basic.get`s on a channel of its
/// own, keeping at most the bodies it needs (a page, or the one in hand) and only the delivery
/// tags of the rest, and then gives back what it did not remove with `basic.nack` (requeue; not
/// counted as a failed delivery by RabbitMQ 4), one at a time in the order taken. A quorum queue
/// serves requeued messages first, in the order they were requeued, so a walk must take the
/// *whole* queue: giving back part of it would put that part behind messages requeued earlier.
/// Should the process die midway, the broker requeues whatever the channel held: nothing is
/// lost. A message held by one walk is invisible to another, so callers serialise their walks.
struct Walk {
    channel: Channel,
    queue: String,
    held: Vec<u64>,
}

impl Walk {
    async fn start(conn: &Connection, names: &Names) -> anyhow::Result<Self> {
        Ok(Self {
            channel: conn.create_channel().await?,
            queue: names.dead_queue(),
            held: Vec::new(),
        })
    }

    /// The next message, unacknowledged; `None` once the whole queue is in hand.
    async fn next(&self) -> anyhow::Result<Option<DeadLetter>> {
        let got = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?;
        Ok(got.map(|m| {
            let d = m.delivery;
            DeadLetter::from_parts(d.delivery_tag, d.properties, d.data)
        }))
    }

    /// Leaves a message in the queue (given back at the end).
    fn keep(&mut self, dl: &DeadLetter) {
        self.held.push(dl.delivery_tag);
    }

    /// Gives back everything kept, in order, and closes the channel. After a failure the rest of
    /// the queue stays where it is, behind what is given back.
    async fn finish(self) {
        give_back(&self.channel, &self.held).await;
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// Reads the dead letters at queue positions `offset .. offset + limit` without removing any
/// (see [`Walk`]); only the window's messages are kept in memory.
pub async fn peek(conn: &Connection, names: &Names, offset: usize, limit: usize) -> anyhow::Result<Window> {
    let mut walk = Walk::start(conn, names).await?;
    let mut items = Vec::new();
    let mut total = 0;
    let result = async {
        while let Some(dl) = walk.next().await? {
            walk.keep(&dl);
            if (offset..offset + limit).contains(&total) {
                items.push(dl);
            }
            total += 1;
        }
        anyhow::Ok(())
    }
    .await;
    walk.finish().await;
    result?;
    Ok(Window {
        total,
        offset,
        more: total > offset + limit,
        items,
    })
}

/// Shows every dead letter, in queue order, to `see` without removing any (see [`Walk`]); `see`
/// keeps what it needs, so memory holds one message at a time plus what `see` keeps. Returns how
/// many dead letters the queue holds.
pub async fn visit(conn: &Connection, names: &Names, mut see: impl FnMut(DeadLetter)) -> anyhow::Result<usize> {
    let mut walk = Walk::start(conn, names).await?;
    let mut total = 0;
    let result = async {
        while let Some(dl) = walk.next().await? {
            walk.keep(&dl);
            total += 1;
            see(dl);
        }
        anyhow::Ok(())
    }
    .await;
    walk.finish().await;
    result?;
    Ok(total)
}

/// What a selective replay or purge did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Event ids of the dead letters acted on, in queue order.
    pub done: Vec<String>,
    /// Asked-for ids that are not in the queue (already replayed or purged, or never there).
    pub not_found: Vec<String>,
}

/// Acts on exactly the dead letters whose event ids are in `ids` (compared case-insensitively;
/// every copy of a duplicated id) and removes them; every other message is given back in its place
/// (see [`take_matching`]).
pub async fn take_selected<F, Fut>(
    conn: &Connection,
    names: &Names,
    ids: &[String],
    act: F,
    progress: impl FnMut(&str),
) -> anyhow::Result<Selected>
where
    F: FnMut(DeadLetter) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut wanted: Vec<String> = Vec::new();
    for id in ids {
        if !wanted.iter().any(|w| w.eq_ignore_ascii_case(id)) {
            wanted.push(id.clone());
        }
    }
    let done = take_matching(
        conn,
        names,
        |dl| wanted.iter().any(|w| w.eq_ignore_ascii_case(&dl.event_id)),
        act,
        progress,
    )
    .await?;
    let not_found = wanted
        .into_iter()
        .filter(|w| !done.iter().any(|d| d.eq_ignore_ascii_case(w)))
        .collect();
    Ok(Selected { done, not_found })
}

/// Acts on the dead letters `wanted` picks and removes them; every other message is given back in
/// its place (see [`Walk`]). Returns the event ids acted on, in queue order.
///
/// A chosen message is passed to `act` (a replay publishes it with the broker's confirm; a purge
/// saves it to a file) and acked only once `act` succeeded; `progress` is called after each. When
/// `act` fails, the message it failed on is given back too and the error returned: nothing is
/// lost, and running the same selection again continues the work.
pub async fn take_matching<F, Fut>(
    conn: &Connection,
    names: &Names,
    mut wanted: impl FnMut(&DeadLetter) -> bool,
    mut act: F,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<String>>
where
    F: FnMut(DeadLetter) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut walk = Walk::start(conn, names).await?;
    let mut done: Vec<String> = Vec::new();
    let result = async {
        while let Some(dl) = walk.next().await? {
            if !wanted(&dl) {
                walk.keep(&dl);
                continue;
            }
            let (id, tag) = (dl.event_id.clone(), dl.delivery_tag);
            if let Err(e) = act(dl).await {
                walk.held.push(tag);
                return Err(e);
            }
            walk.channel.basic_ack(tag, BasicAckOptions::default()).await?;
            progress(&id);
            done.push(id);
        }
        anyhow::Ok(())
    }
    .await;
    walk.finish().await;
    result?;
    Ok(done)
}

/// Requeues held messages one by one, in the order they were fetched (see [`peek`]).
async fn give_back(channel: &Channel, tags: &[u64]) {
    for tag in tags {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        if channel.basic_nack(*tag, requeue).await.is_err() {
            // The channel is gone: the broker has requeued everything it held.
            return;
        }
    }
}

/// Messages ready in a queue (a passive declare; the queue must exist).
pub async fn queue_depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    Ok(queue_info(channel, queue).await?.message_count())
}

/// A passive declare of an existing queue: its ready messages and consumers.
pub async fn queue_info(channel: &Channel, queue: &str) -> anyhow::Result<lapin::Queue> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    Ok(channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?)
}

/// Which dead letters a bulk replay or purge takes (and which a listing shows, with `all`).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub ids: Vec<String>,
    pub all: bool,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let by_id = self.all || self.ids.iter().any(|i| i.eq_ignore_ascii_case(&d.event_id));
        let by_action = self.action.as_ref().is_none_or(|a| a.eq_ignore_ascii_case(&d.action));
        let by_time = self.since.is_none_or(|s| d.last_failure.is_none_or(|t| t >= s));
        by_id && by_action && by_time
    }
}

/// Parses `--since`: an RFC 3339 time, or an age like `30m`, `6h`, `2d`.
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_or_age("--since", s)
}

/// Parses a moment given on the command line as `flag`: an RFC 3339 time, or an age like `30m`,
/// `6h`, `2d` (that long before now). Every command taking a time or an age reads it here.
pub fn parse_time_or_age(flag: &str, s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{flag} {s:?}: use an RFC 3339 time or an age like 30m, 6h, 2d"))?;
    let Some(scale) = shared::config::unit_seconds(unit) else {
        return Err(format!("{flag} {s:?}: unit must be s, m, h or d"));
    };
    let secs = n * scale;
    let age = chrono::Duration::from_std(Duration::from_secs(secs)).map_err(|e| format!("{flag} {s:?}: {e}"))?;
    Utc::now()
        .checked_sub_signed(age)
        .ok_or_else(|| format!("{flag} {s:?}: too long ago"))
}

/// "3m", "2h", "5d": how long ago.
pub fn age(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return "?".into() };
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(event_id: &str, action: &str, failed_hours_ago: i64) -> DeadLetter {
        DeadLetter {
            delivery_tag: 1,
            event_id: event_id.into(),
            action: action.into(),
            contact: "a@b.co".into(),
            attempts: 3,
            error: "boom".into(),
            first_failure: None,
            last_failure: Some(Utc::now() - chrono::Duration::hours(failed_hours_ago)),
            body: Vec::new(),
            properties: BasicProperties::default(),
        }
    }

    #[test]
    fn replay_filters_combine_ids_action_and_age() {
        let (a, b, c) = (dead("E1", "add", 1), dead("E2", "update", 1), dead("E3", "add", 30));
        let ids = Filter {
            ids: vec!["e1".into()],
            ..Default::default()
        };
        assert!(ids.matches(&a) && !ids.matches(&b), "ids match case-insensitively");
        let adds = Filter {
            all: true,
            action: Some("add".into()),
            ..Default::default()
        };
        assert!(adds.matches(&a) && !adds.matches(&b) && adds.matches(&c));
        let recent = Filter {
            all: true,
            action: Some("add".into()),
            since: Some(parse_since("2h").unwrap()),
            ..Default::default()
        };
        assert!(recent.matches(&a) && !recent.matches(&c));
        assert!(!Filter::default().matches(&a), "nothing unless ids or --all");
    }

    #[test]
    fn since_accepts_times_and_ages() {
        assert!(parse_since("2026-11-27T06:00:00Z").is_ok());
        let t = parse_since("2h").unwrap();
        assert!((Utc::now() - t).num_minutes() >= 119);
        assert!(parse_since("2w").is_err());
        assert!(parse_since("soon").is_err());
    }
}
