//! collabd: a real-time collaboration backend. Users write drafts together;
//! the collaborator holding the ring appends segments; everyone watching a
//! draft sees each change live over a WebSocket.
//!
//! # Layout
//!
//! Layers import one way, transport -> service -> ports <- adapters, and
//! `tests/it/layers.rs` fails on an import against that direction:
//!
//! - leaves, importing nothing of the product: [`config`] (every knob, as a
//!   CLI flag with its environment variable), [`telemetry`] (logs, traces,
//!   every metric name), [`error`] (the stable error codes), [`text`].
//! - domain: [`collab::input`] (each client field parsed once into its
//!   type), [`collab::model`] (drafts, typed events), [`collab::rules`] (the
//!   ring rule and the others, pure), [`limits::gcra`], [`limits::client_ip`].
//! - [`ports`]: the traits the service talks to, named for their consumer.
//! - service: [`collab::service`] (rules inside the store's atomic mutation,
//!   then fanout and audit), [`realtime::hub`] (rooms: ordered, exactly-once
//!   delivery), [`auth`] (bearer tokens).
//! - [`adapters`]: memory, Postgres and Redis implementations of the ports.
//! - transport: [`http`] (request ids, the access log, the error envelope,
//!   extractors, probes, management), [`collab::http`], [`realtime::ws`],
//!   [`limits::http`].
//! - [`app`]: the composition root: configuration into adapters, routers
//!   composed, serve and drain.

pub mod adapters;
pub mod app;
pub mod auth;
pub mod collab;
pub mod config;
pub mod error;
pub mod http;
pub mod limits;
pub mod ports;
pub mod realtime;
pub mod telemetry;
pub mod text;
