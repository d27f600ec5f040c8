//! The ingress's Prometheus series. Each series is registered once, on first use, and kept as a
//! handle: recording a request allocates nothing and looks nothing up by name.
//!
//! - `cio_ingress_requests_total{action,status,key_label}`: answered webhooks (`key_label` is the
//!   label of the key used, empty for unlabelled keys and refused requests);
//! - `cio_ingress_publish_seconds`: time for the broker to confirm a publish;
//! - `cio_ingress_unavailable_total{reason}`: 503s by reason (`queue_full`, `broker`, `unroutable`,
//!   `in_flight_limit`, `connection_limit`);
//! - `cio_ingress_timeouts_total{phase}`: connections cut while sending the head or idling, and
//!   bodies not received in time (`head`, `idle`, `body`);
//! - `cio_ingress_connections`: open connections on the public port;
//! - `cio_ingress_readiness_checks_total`: readiness checks that reached the broker.

use std::sync::OnceLock;

use axum::http::StatusCode;
use metrics::{Counter, Gauge, Histogram};

use crate::auth::{AccessKeys, LabelId};

/// The `action` label: `none` for requests refused before the action was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionLabel {
    None,
    Test,
    Command(shared::command::Action),
}

impl ActionLabel {
    fn index(self) -> usize {
        use shared::command::Action;
        match self {
            ActionLabel::None => 0,
            ActionLabel::Test => 1,
            ActionLabel::Command(Action::UpdateTags) => 2,
            ActionLabel::Command(Action::Update) => 3,
            ActionLabel::Command(Action::Add) => 4,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ActionLabel::None => "none",
            ActionLabel::Test => "test",
            ActionLabel::Command(a) => a.as_str(),
        }
    }
}

const ACTIONS: usize = 5;
/// The statuses the webhook answers with; anything else is counted as `other`.
const STATUSES: [(u16, &str); 7] = [
    (200, "200"),
    (400, "400"),
    (403, "403"),
    (408, "408"),
    (413, "413"),
    (503, "503"),
    (0, "other"),
];

/// Why a 503 was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    QueueFull,
    Broker,
    Unroutable,
    InFlightLimit,
    ConnectionLimit,
}

const UNAVAILABLE: [&str; 5] = [
    "queue_full",
    "broker",
    "unroutable",
    "in_flight_limit",
    "connection_limit",
];

/// Where a slow or idle client was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    Head,
    Idle,
    Body,
}

pub struct Metrics {
    labels: Vec<String>,
    requests: Vec<OnceLock<Counter>>,
    pub publish_seconds: Histogram,
    unavailable: [Counter; 5],
    timeouts: [Counter; 3],
    pub connections: Gauge,
    pub readiness_checks: Counter,
}

impl Metrics {
    /// Handles for every series; `keys` gives the possible `key_label` values.
    pub fn new(keys: &AccessKeys) -> Self {
        let labels = keys.labels().to_vec();
        let slots = ACTIONS * STATUSES.len() * labels.len();
        Self {
            labels,
            requests: (0..slots).map(|_| OnceLock::new()).collect(),
            publish_seconds: metrics::histogram!("cio_ingress_publish_seconds"),
            unavailable: UNAVAILABLE.map(|r| metrics::counter!("cio_ingress_unavailable_total", "reason" => r)),
            timeouts: ["head", "idle", "body"].map(|p| metrics::counter!("cio_ingress_timeouts_total", "phase" => p)),
            connections: metrics::gauge!("cio_ingress_connections"),
            readiness_checks: metrics::counter!("cio_ingress_readiness_checks_total"),
        }
    }

    /// Counts one answered webhook.
    pub fn request(&self, action: ActionLabel, status: StatusCode, label: LabelId) {
        let s = STATUSES
            .iter()
            .position(|(code, _)| *code == status.as_u16())
            .unwrap_or(STATUSES.len() - 1);
        let l = usize::from(label.0).min(self.labels.len() - 1);
        let slot = (action.index() * STATUSES.len() + s) * self.labels.len() + l;
        self.requests[slot]
            .get_or_init(|| {
                metrics::counter!(
                    "cio_ingress_requests_total",
                    "action" => action.as_str(),
                    "status" => STATUSES[s].1,
                    "key_label" => self.labels[l].clone()
                )
            })
            .increment(1);
    }

    pub fn unavailable(&self, why: Unavailable) {
        self.unavailable[why as usize].increment(1);
    }

    pub fn timeout(&self, phase: Timeout) {
        self.timeouts[phase as usize].increment(1);
    }
}
