//! The AMQP headers cio-sync sets on commands, retries and dead letters: their names, and reading
//! them back (the worker, the dead-letter tools and the tests read them the same way).

use lapin::{types::AMQPValue, BasicProperties};

/// How many times the command has been attempted so far (retries and dead letters).
pub const ATTEMPTS: &str = "x-cio-attempts";
/// Why the command failed last, in words (dead letters and retries).
pub const ERROR: &str = "x-cio-error";
/// RFC 3339 time of the first and of the last failure.
pub const FIRST_FAILURE: &str = "x-cio-first-failure";
pub const LAST_FAILURE: &str = "x-cio-last-failure";
/// The event id, repeated as a header so that logs can follow one webhook across processes.
pub const EVENT_ID: &str = "x-cio-event-id";
/// The command's action and contact, copied so that `worker dlq list` can show undecodable messages.
pub const ACTION: &str = "x-cio-action";
pub const CONTACT: &str = "x-cio-contact";
/// The label of the access key the webhook came with (`ACCESS_KEYS=label:key`); absent for
/// unlabelled keys. The worker stores it in `webhook_events.key_label`.
pub const KEY_LABEL: &str = "x-cio-key-label";

/// Reads an integer header (whatever integer width, or a numeric string).
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

/// Reads a string header.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
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
        .or_else(|| header_str(props, EVENT_ID))
}
