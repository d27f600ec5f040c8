//! What `worker check` and `ingress check` share: the report (one line per check, `ok   …`,
//! `FAIL …` or `skip …`, and the exit code) and the broker check (reachable, then the exchanges
//! and queues a binary needs present, by passive declares that change nothing).

use std::{fmt::Display, time::Duration};

use crate::{broker::Nodes, config::AmqpSettings};

/// How long one check may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The report being printed; remembers whether anything failed.
#[derive(Default)]
pub struct Report {
    failed: bool,
}

impl Report {
    pub fn ok(&mut self, what: impl Display) {
        println!("ok   {what}");
    }
    pub fn fail(&mut self, what: impl Display) {
        self.failed = true;
        println!("FAIL {what}");
    }
    pub fn skip(&mut self, what: impl Display) {
        println!("skip {what}");
    }
    /// Something to fix that does not fail the check.
    pub fn warn(&mut self, what: impl Display) {
        println!("warn {what}");
    }
    /// The exit code: 0 when every check passed or was skipped.
    pub fn code(&self) -> i32 {
        i32::from(self.failed)
    }
}

/// What the broker check looks for: `subject` names it in the report (`commands queue`), and
/// `present` is the detail printed when everything is there.
pub struct Wanted<'a> {
    pub subject: &'a str,
    pub exchanges: &'a [String],
    pub queues: &'a [String],
    pub present: String,
}

/// The broker is reachable (at some node of `AMQP_URL`) and holds what `wanted` lists.
pub async fn broker(r: &mut Report, amqp: &AmqpSettings, connection_name: &str, wanted: Wanted<'_>) {
    let nodes = Nodes::new(&amqp.url);
    let conn = match tokio::time::timeout(TIMEOUT, nodes.connect(connection_name)).await {
        Ok(Ok((conn, node))) => {
            r.ok(format!("broker reachable ({node})"));
            conn
        }
        Ok(Err(e)) => return r.fail(format!("broker (AMQP_URL): {e}")),
        Err(_) => return r.fail(format!("broker (AMQP_URL): no answer within {}s", TIMEOUT.as_secs())),
    };
    let missing = crate::topology::missing(&conn, wanted.exchanges, wanted.queues).await;
    if missing.is_empty() {
        r.ok(format!("{} present ({})", wanted.subject, wanted.present));
    } else {
        r.fail(format!(
            "{}: missing {} (the ingress and `worker run` declare it when they start)",
            wanted.subject,
            missing.join(", ")
        ));
    }
    let _ = conn.close(200, "checked".into()).await;
}
