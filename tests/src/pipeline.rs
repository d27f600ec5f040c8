//! Running commands through the worker's pipeline directly (no broker): what the action tests use.
//! It is the same function `worker run` calls for every batch it consumes.

use chrono::Utc;
use shared::command::{Action, Contact, SyncV1};
use uuid::Uuid;
use worker::{
    sync::{self, Incoming, Outcome, Settlement},
    Worker,
};

/// Processes `cmds` as one batch (first attempts); one settlement each, in order.
pub async fn run(w: &Worker, cmds: &[SyncV1]) -> Vec<Settlement> {
    let batch = cmds
        .iter()
        .map(|cmd| Incoming {
            cmd: cmd.clone(),
            attempt: 1,
            key_label: None,
        })
        .collect();
    sync::process(&w.ctx, batch).await
}

/// Processes one command (a batch of one) and returns its outcome; panics on a failure.
pub async fn run_one(w: &Worker, cmd: &SyncV1) -> Outcome {
    match run(w, std::slice::from_ref(cmd)).await.remove(0) {
        Settlement::Done(outcome) => outcome,
        other => panic!("the command failed: {other:?}"),
    }
}

/// A fresh command for `email`, received now, with no URL state and no notification.
pub fn command(action: Action, email: &str) -> SyncV1 {
    SyncV1 {
        event_id: Uuid::new_v4(),
        received_at: Utc::now(),
        action,
        contact: Contact {
            email: shared::email::parse(email).expect("a valid address"),
            id: None,
            cio_id: None,
        },
        send_notification: false,
        role: None,
        tags: None,
    }
}
