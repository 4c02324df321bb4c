//! collabd: a real-time collaboration backend. Users write drafts together;
//! the collaborator holding the ring appends segments; everyone watching a
//! draft sees each change live over a WebSocket.
//!
//! # Layout
//!
//! - [`app`]: start-up: adapters, shared state, serve and drain.
//! - [`config`]: every knob, as a CLI flag with its environment variable.
//! - [`http`]: the router, request ids, access log, extractors.
//! - [`error`]: the error envelope and its stable codes.
//! - [`auth`]: HS256 bearer tokens.
//! - [`collab`]: drafts, roles, the ring and segments: model, rules, service, handlers.
//! - [`realtime`]: rooms that order and fan out events, WebSocket sessions.
//! - [`limits`]: GCRA rate limiting and client addresses.
//! - [`audit`]: which actions are recorded, and how metadata is cut.
//! - [`ports`]: the traits the service talks to; [`adapters`] implement them.
//! - [`telemetry`]: logging set-up.

pub mod adapters;
pub mod app;
pub mod audit;
pub mod auth;
pub mod collab;
pub mod config;
pub mod error;
pub mod http;
pub mod limits;
pub mod ports;
pub mod realtime;
pub mod telemetry;
