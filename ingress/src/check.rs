//! `ingress check`: verifies the configuration and the broker without changing anything and prints
//! one line per check (`ok   …` or `FAIL …: why`); exits 1 when a check failed, 2 when the
//! configuration is invalid. Access keys are never printed.

use shared::check::{self, Report, Wanted};

use crate::Settings;

/// Runs the checks; returns the exit code.
pub async fn run() -> i32 {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            println!("FAIL configuration: {e}");
            return 2;
        }
    };
    let mut r = Report::default();
    let labelled = settings.access_keys.iter().filter(|k| k.label.is_some()).count();
    r.ok(format!(
        "access keys valid (ACCESS_KEYS: {} key(s), {labelled} labelled)",
        settings.access_keys.len()
    ));
    for w in settings.warnings() {
        r.warn(w);
    }
    let names = settings.amqp.names();
    let wanted = Wanted {
        subject: "commands queue",
        exchanges: &[names.commands_exchange()],
        queues: &[names.commands_queue()],
        present: names.commands_queue(),
    };
    check::broker(&mut r, &settings.amqp, "cio-sync ingress check", wanted).await;
    r.code()
}
