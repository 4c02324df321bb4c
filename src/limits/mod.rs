//! Limits: the GCRA rate limiter's arithmetic, the middleware that applies it
//! to REST routes, and how a client's address is known. What happens when
//! the shared limiter fails is an adapter's business (`adapters::fallback`).

pub mod client_ip;
pub mod gcra;
pub mod http;
