//! Logging: pretty lines in dev, JSON lines in prod, filtered by LOG_LEVEL.
//! Span fields (`request_id`, `user_id`, `draft_id`, `connection_id`) ride on
//! every line logged inside the span.

use std::io::IsTerminal;

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub mod metrics;
pub mod process;

pub use self::metrics::Metrics;

/// Installs the global subscriber. Call once, from `main`.
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder
            .compact()
            .with_ansi(std::io::stdout().is_terminal())
            .init(),
    }
}
