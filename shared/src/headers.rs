//! Names of the AMQP headers cio-sync sets on commands, retries and dead letters.

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
