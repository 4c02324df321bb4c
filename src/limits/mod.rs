//! Limits: the GCRA rate limiter's arithmetic, the middleware that applies it
//! to REST routes, and how a client's address is known.

pub mod client_ip;
pub mod fallback;
pub mod gcra;
pub mod http;
