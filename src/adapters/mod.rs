//! Adapters behind the ports. Only `app.rs` chooses among them.
//!
//! - [`memory`]: everything in this process (standalone mode).
//! - [`postgres`]: the store and audit sink.
//! - [`redis`]: fanout, rate limits, socket leases, leadership (cluster mode).
//! - [`fallback`]: a rate limiter that applies `RATE_LIMIT_FAIL_MODE` when
//!   the shared one fails.
//! - [`jwks`]: an identity provider's key set, over HTTP(S) or from a file.
//! - [`otlp`]: the metrics pushed to an OpenTelemetry collector.
//! - [`outbound`]: the HTTP(S) client those two share.

pub mod fallback;
pub mod jwks;
pub mod memory;
pub mod otlp;
pub mod outbound;
pub mod postgres;
pub mod redis;
