//! Adapters behind the ports. Only `app.rs` chooses among them.

pub mod memory;
pub mod postgres;
pub mod redis;
