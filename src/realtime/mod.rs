//! Live delivery: rooms that order and fan out each draft's events, and the
//! WebSocket sessions that carry them to clients.

pub mod hub;
pub mod ws;
