//! The per-event log buffer: the ordered, human-readable lines of one webhook, in the spirit of
//! WP Fusion's logs, gathered while it is processed and written with its outcome (`sync::ledger`).
//! Every line is also emitted through `tracing` with the event id at `debug` (the lines name people
//! and their attributes); at `info` the process log carries ids, not addresses or values. Nothing secret is ever passed here: callers log what happened, never a
//! password or a key.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// How much a log line matters; stored as its lower-case name in `event_log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Notice,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Notice => "notice",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

struct Line {
    at: DateTime<Utc>,
    level: Level,
    message: String,
    context: Option<Value>,
}

/// Lines gathered while an event is processed, written in the same transaction as its effects.
pub struct EventLog {
    event_id: Uuid,
    lines: Vec<Line>,
}

impl EventLog {
    pub fn new(event_id: Uuid) -> Self {
        Self {
            event_id,
            lines: Vec::new(),
        }
    }

    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    pub fn push(&mut self, level: Level, message: impl Into<String>, context: Option<Value>) {
        let message = message.into();
        let id = self.event_id;
        // Lines name people (addresses, attribute values): the process log gets them at debug
        // only; at info and above it says that an event has a warning or error, by id.
        tracing::debug!(event_id = %id, level = level.as_str(), "{message}");
        match level {
            Level::Info | Level::Notice => {}
            Level::Warning => tracing::warn!(event_id = %id, "event log has a warning (worker events show {id})"),
            Level::Error => tracing::error!(event_id = %id, "event log has an error (worker events show {id})"),
        }
        self.lines.push(Line {
            at: Utc::now(),
            level,
            message,
            context,
        });
    }

    pub fn info(&mut self, m: impl Into<String>) {
        self.push(Level::Info, m, None);
    }
    pub fn notice(&mut self, m: impl Into<String>) {
        self.push(Level::Notice, m, None);
    }
    pub fn warning(&mut self, m: impl Into<String>) {
        self.push(Level::Warning, m, None);
    }
    pub fn error(&mut self, m: impl Into<String>) {
        self.push(Level::Error, m, None);
    }

    /// How many lines are gathered (to [`EventLog::truncate`] back to after a rolled-back write).
    pub fn mark(&self) -> usize {
        self.lines.len()
    }

    /// Forgets the lines gathered after `mark` (what a rolled-back transaction had decided).
    pub fn truncate(&mut self, mark: usize) {
        self.lines.truncate(mark);
    }

    /// The messages gathered so far, oldest first (not yet written).
    pub fn messages(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|l| l.message.as_str())
    }

    /// Moves the gathered lines into `cols` (a statement writing many events' lines at once).
    pub fn drain_into(&mut self, cols: &mut LogColumns) {
        for l in self.lines.drain(..) {
            cols.event_id.push(self.event_id);
            cols.at.push(l.at);
            cols.level.push(l.level.as_str());
            cols.message.push(l.message);
            cols.context.push(l.context.unwrap_or(Value::Null));
        }
    }
}

/// Log lines of many events as the columns `unnest` takes.
#[derive(Default)]
pub struct LogColumns {
    pub event_id: Vec<Uuid>,
    pub at: Vec<DateTime<Utc>>,
    pub level: Vec<&'static str>,
    pub message: Vec<String>,
    pub context: Vec<Value>,
}
