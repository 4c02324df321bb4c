//! Standalone adapters: state, fanout and limits in this process's memory.

pub mod audit;
pub mod fanout;
pub mod leases;
pub mod ratelimit;
pub mod store;

pub use audit::MemoryAudit;
pub use fanout::MemoryFanout;
pub use leases::MemoryLeases;
pub use ratelimit::MemoryRateLimiter;
pub use store::MemoryStore;

use std::time::Duration;

use async_trait::async_trait;

use crate::ports::Leadership;

/// A single process leads every job.
pub struct SoleLeader;

#[async_trait]
impl Leadership for SoleLeader {
    async fn lead(&self, _job: &'static str, _ttl: Duration) -> bool {
        true
    }
}
