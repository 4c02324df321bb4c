//! The integration tests, one binary (one link step): the REST and WebSocket
//! contracts on every adapter set (memory, Postgres, Postgres + Redis),
//! Postgres, the cluster of replica processes and its outages, metrics, the
//! deploy files, the built binary, and the shape of the code. `tests/memory.rs` stays a binary of its own: it counts every
//! byte its process allocates.

#[macro_use]
mod common;

mod api;
mod binary;
mod browser;
mod chaos;
mod client;
mod cluster;
mod contract;
mod delivery;
mod deploy;
mod edges;
mod gcra_lua;
mod identity;
mod layers;
mod metrics;
mod outages;
mod postgres;
mod redis_cluster;
mod ws;
