//! Logging set-up shared by both binaries: `LOG_FORMAT=text|json`, filter from `RUST_LOG`.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn,tower_http=info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if format.eq_ignore_ascii_case("json") {
        registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true))
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
}

/// Reads `LOG_FORMAT`, accepting only `text` and `json`.
pub fn format_from_env() -> crate::config::Result<String> {
    let f = crate::config::or_default("LOG_FORMAT", "text").to_ascii_lowercase();
    if f == "text" || f == "json" {
        Ok(f)
    } else {
        Err(crate::config::ConfigError {
            var: "LOG_FORMAT",
            problem: "must be text or json".into(),
        })
    }
}
