//! Broker-side fault injection for tests: closing one namespace's AMQP connections (as a network
//! cut or a broker restart would), without disturbing other tests that share the broker.

use std::process::Command;

/// Closes every connection whose client-given name ends with `[{namespace}]`; returns how many.
pub fn close_connections(namespace: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "name",
            "client_properties",
            "-q",
            "--formatter",
            "json",
        ])
        .output()
        .expect("rabbitmqctl is needed for broker fault tests (run as root on the broker's machine)");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let suffix = format!("[{namespace}]");
    let mut closed = 0;
    for c in list.as_array().into_iter().flatten() {
        let props = c["client_properties"].as_array().cloned().unwrap_or_default();
        let name = props
            .iter()
            .find(|p| p[0] == "connection_name")
            .and_then(|p| p[2].as_str())
            .unwrap_or_default();
        if name.ends_with(&suffix) {
            let id = c["name"].as_str().unwrap_or_default();
            let ok = Command::new("rabbitmqctl")
                .args(["close_connection", id, "test: simulated connection loss"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            closed += usize::from(ok);
        }
    }
    closed
}

/// A broker policy for one test, cleared when dropped (also when the test fails).
pub struct Policy(String);

impl Policy {
    pub fn set(name: &str, pattern: &str, definition: &str) -> Policy {
        let out = Command::new("rabbitmqctl")
            .args(["set_policy", "--apply-to", "queues", name, pattern, definition])
            .output()
            .expect("rabbitmqctl is needed for this test (run as root on the broker's machine)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Policy(name.to_string())
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["clear_policy", &self.0]).output();
    }
}
