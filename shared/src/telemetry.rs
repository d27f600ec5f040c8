//! Logging set-up shared by both binaries: `LOG_FORMAT=text|json`, filter from `RUST_LOG`.
//!
//! Text logs escape control characters in every field value and message (`\n`, `\r`, `\u{1b}`…),
//! so a value from outside (an attribute, an error text) can never forge a log line or a terminal
//! sequence. JSON logs are escaped by the format itself.

use tracing::Subscriber;
use tracing_subscriber::{
    field::{MakeExt, RecordFields, VisitOutput},
    fmt::{self, format::Writer, FormatFields, MakeWriter},
    prelude::*,
    EnvFilter,
};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn,tower_http=info"));
    let _ = if format.eq_ignore_ascii_case("json") {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().json().flatten_event(true).with_current_span(true))
            .try_init()
    } else {
        text_subscriber(filter, std::io::stdout).try_init()
    };
}

/// Installs the subscriber of an operator command: warnings and errors only (unless `RUST_LOG`
/// says otherwise), on stderr, so that stdout carries the command's output alone (scripts parse
/// it). The AMQP client's own messages are left out: the commands report broker errors themselves
/// (and `check`'s passive declares close a channel on purpose for every missing queue). Safe to
/// call more than once.
pub fn init_for_commands(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,lapin=off"));
    let _ = if format.eq_ignore_ascii_case("json") {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        text_subscriber(filter, std::io::stderr).try_init()
    };
}

/// The text-format subscriber `init` installs, writing to `writer` (tests capture it).
pub fn text_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::registry().with(filter).with(
        fmt::layer()
            .with_target(false)
            // Colours only when the process writes to a terminal: a file or a log collector gets
            // plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .fmt_fields(EscapingFields)
            .with_writer(writer),
    )
}

/// Formats fields as `name=value` separated by spaces (the message bare), control characters
/// escaped.
pub struct EscapingFields;

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        let fmt = tracing_subscriber::fmt::format::debug_fn(|w: &mut Writer<'_>, field, value| {
            let text = format!("{value:?}");
            if field.name() == "message" {
                w.write_str(&escape_controls(&text))
            } else {
                write!(w, "{}={}", field.name(), escape_controls(&text))
            }
        })
        .delimited(" ");
        let mut visitor = tracing_subscriber::field::MakeVisitor::make_visitor(&fmt, writer);
        fields.record(&mut visitor);
        visitor.finish()
    }
}

/// `text` with every control character (and the Unicode line and paragraph separators) written
/// as an escape, so that it stays on one line.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Reads `LOG_FORMAT` from the environment, accepting only `text` and `json`.
pub fn format_from_env() -> crate::config::Result<String> {
    Ok(crate::config::parse_env::<crate::config::LogArgs>("cio-sync")?.log_format)
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain ünïcode"), "plain ünïcode");
        assert_eq!(
            escape_controls("a\nERROR forged\r\u{1b}[31m\u{2028}"),
            "a\\nERROR forged\\r\\u{1b}[31m\\u{2028}"
        );
    }
}
