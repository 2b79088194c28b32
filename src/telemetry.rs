//! Logging set-up: text by default, JSON lines with `AGENTPLANE_LOG_FORMAT=json`, filtered
//! by `RUST_LOG`. Logs go to stderr; stdout carries only the lines an operator must see
//! (the listen URL, a generated password).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops).
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: never in files, pipes or log collectors
    // (and never with NO_COLOR set, https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
