//! The command the ingress publishes and the worker consumes.
//!
//! The wire format is versioned in the `type` tag. A published variant's shape is frozen: a change
//! is a new variant (`sync_v2`), and workers accept both until the queues drain. The golden tests
//! at the bottom fail if a field is renamed by accident.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::email::Email;

/// Every command variant ever published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    #[serde(rename = "sync_v1")]
    SyncV1(SyncV1),
}

impl Command {
    pub fn event_id(&self) -> Uuid {
        match self {
            Command::SyncV1(c) => c.event_id,
        }
    }

    /// Decodes a delivery body, naming the problem when it is not a command we know.
    pub fn decode(body: &[u8]) -> Result<Command, String> {
        serde_json::from_slice(body).map_err(|e| format!("undecodable command: {e}"))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command always serialises")
    }
}

/// "Sync this contact": the one command of version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncV1 {
    pub event_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub action: Action,
    pub contact: Contact,
    pub send_notification: bool,
    pub role: Option<String>,
    /// `update_tags` only: segment ids given in the URL; the worker then makes no Customer.io call.
    pub tags: Option<Vec<i64>>,
}

/// What the webhook asks for (`wpf_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    UpdateTags,
    Update,
    Add,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::UpdateTags => "update_tags",
            Action::Update => "update",
            Action::Add => "add",
        }
    }

    /// Parses `wpf_action` case-insensitively, with WP Fusion's aliases.
    pub fn parse(s: &str) -> Option<Action> {
        match s.trim().to_ascii_lowercase().as_str() {
            "update_tags" => Some(Action::UpdateTags),
            "update" | "update_user" => Some(Action::Update),
            "add" | "add_user" => Some(Action::Add),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Customer.io contact the webhook is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub email: Email,
    pub id: Option<String>,
    pub cio_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_SYNC_V1: &str = r#"{"type":"sync_v1","event_id":"0b6f1c2e-8a3d-4f5e-9c1b-2d3e4f5a6b7c","received_at":"2026-11-27T06:00:00Z","action":"add","contact":{"email":"jane@example.com","id":null,"cio_id":null},"send_notification":true,"role":"customer","tags":null}"#;

    fn sample() -> Command {
        Command::SyncV1(SyncV1 {
            event_id: "0b6f1c2e-8a3d-4f5e-9c1b-2d3e4f5a6b7c".parse().unwrap(),
            received_at: "2026-11-27T06:00:00Z".parse().unwrap(),
            action: Action::Add,
            contact: Contact {
                email: crate::email::parse("jane@example.com").unwrap(),
                id: None,
                cio_id: None,
            },
            send_notification: true,
            role: Some("customer".into()),
            tags: None,
        })
    }

    #[test]
    fn sync_v1_serialises_to_the_frozen_golden_json() {
        assert_eq!(String::from_utf8(sample().encode()).unwrap(), GOLDEN_SYNC_V1);
    }

    #[test]
    fn sync_v1_golden_json_decodes() {
        assert_eq!(Command::decode(GOLDEN_SYNC_V1.as_bytes()).unwrap(), sample());
    }

    #[test]
    fn sync_v1_with_tags_and_ids_round_trips() {
        let json = r#"{"type":"sync_v1","event_id":"0b6f1c2e-8a3d-4f5e-9c1b-2d3e4f5a6b7c","received_at":"2026-11-27T06:00:00.123Z","action":"update_tags","contact":{"email":"a@b.co","id":"42","cio_id":"a3000001"},"send_notification":false,"role":null,"tags":[1,7]}"#;
        let cmd = Command::decode(json.as_bytes()).unwrap();
        let Command::SyncV1(c) = &cmd;
        assert_eq!(c.action, Action::UpdateTags);
        assert_eq!(c.tags, Some(vec![1, 7]));
        assert_eq!(String::from_utf8(cmd.encode()).unwrap(), json);
    }

    #[test]
    fn unknown_variant_is_a_clear_error() {
        let err = Command::decode(br#"{"type":"sync_v9"}"#).unwrap_err();
        assert!(err.starts_with("undecodable command"), "{err}");
        assert!(Command::decode(b"\xff\xfe").is_err());
    }

    #[test]
    fn actions_parse_case_insensitively_with_aliases() {
        assert_eq!(Action::parse("ADD"), Some(Action::Add));
        assert_eq!(Action::parse("add_user"), Some(Action::Add));
        assert_eq!(Action::parse("Update_User"), Some(Action::Update));
        assert_eq!(Action::parse("update_tags"), Some(Action::UpdateTags));
        assert_eq!(Action::parse("test"), None);
        assert_eq!(Action::parse("delete"), None);
    }
}
