//! Drafts, collaborators, the ring and segments: the product's rules and
//! its REST surface.
//!
//! - [`input`]: every field a client sends, parsed once into its own type.
//! - [`model`]: drafts, segments and the typed events of a draft's log.
//! - [`rules`]: the ring rule and the others, as pure functions.
//! - [`service`]: runs the rules inside the store's atomic mutation, then
//!   publishes, audits ([`audit`]) and counts.
//! - [`http`]: the REST handlers and their router.

pub mod audit;
pub mod http;
pub mod input;
pub mod model;
pub mod rules;
pub mod service;
