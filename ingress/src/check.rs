//! `ingress check`: verifies the configuration and the broker without changing anything and prints
//! one line per check (`ok   …` or `FAIL …: why`); exits 1 when a check failed, 2 when the
//! configuration is invalid. Access keys are never printed.

use std::time::Duration;

use crate::Settings;

/// How long the broker may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the checks; returns the exit code.
pub async fn run() -> i32 {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            println!("FAIL configuration: {e}");
            return 2;
        }
    };
    let mut failed = false;
    let labelled = settings.access_keys.iter().filter(|k| k.label.is_some()).count();
    println!(
        "ok   access keys valid (ACCESS_KEYS: {} key(s), {labelled} labelled)",
        settings.access_keys.len()
    );
    for w in settings.warnings() {
        println!("warn {w}");
    }
    let names = settings.amqp.names();
    let nodes = shared::broker::Nodes::new(&settings.amqp.url);
    match tokio::time::timeout(TIMEOUT, nodes.connect("cio-sync ingress check")).await {
        Ok(Ok((conn, node))) => {
            println!("ok   broker reachable ({node})");
            let missing =
                shared::topology::missing(&conn, &[names.commands_exchange()], &[names.commands_queue()]).await;
            if missing.is_empty() {
                println!("ok   commands queue present ({})", names.commands_queue());
            } else {
                failed = true;
                println!(
                    "FAIL commands queue: missing {} (the ingress and `worker run` declare it when they start)",
                    missing.join(", ")
                );
            }
            let _ = conn.close(200, "checked".into()).await;
        }
        Ok(Err(e)) => {
            failed = true;
            println!("FAIL broker (AMQP_URL): {e}");
        }
        Err(_) => {
            failed = true;
            println!("FAIL broker (AMQP_URL): no answer within {}s", TIMEOUT.as_secs());
        }
    }
    i32::from(failed)
}
