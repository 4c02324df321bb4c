//! Drafts, collaborators, the ring and segments: the product's rules and
//! its REST surface.

pub mod http;
pub mod model;
pub mod rules;
pub mod service;
pub mod validate;
