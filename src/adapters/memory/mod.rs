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
