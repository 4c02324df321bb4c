//! Cluster adapters on Redis (fred): room fanout over pub/sub, GCRA rate
//! limits and socket leases in Lua scripts (run by SHA, reloaded on
//! `NOSCRIPT`), and the cluster-wide active-room count.
//!
//! Every key and channel starts with `REDIS_KEY_PREFIX`, so deployments and
//! tests can share one Redis. Keys one script touches share a hash tag, so
//! the scripts also run on Redis Cluster.

pub mod fanout;
pub mod leases;
pub mod ratelimit;

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config as RedisConfig, ReconnectPolicy};
use fred::types::Value;

use crate::error::Error;

pub use fanout::RedisFanout;
pub use leases::{RedisLeadership, RedisLeases};
pub use ratelimit::RedisRateLimiter;

/// Connection settings from configuration.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub pool_size: usize,
    /// Bounds connecting and each command, so an outage fails fast.
    pub timeout: Duration,
}

pub(crate) fn redis_error(e: fred::error::Error) -> Error {
    Error::unavailable(format!("redis: {e}"))
}

/// A builder with the reconnect policy every client uses: retry forever,
/// exponential backoff from 100 ms to 5 s.
pub(crate) fn builder(settings: &RedisSettings) -> Result<Builder, Error> {
    let config = RedisConfig::from_url(&settings.url)
        .map_err(|e| Error::internal(format!("REDIS_URL is not a valid Redis URL: {e}")))?;
    let mut builder = Builder::from_config(config);
    let timeout = settings.timeout;
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // One attempt: a command that fails during an outage fails at
            // once and the caller's fallback applies (local limits, the
            // store fill); fred's retries would stack timeouts instead.
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        });
    Ok(builder)
}

/// Connects a pool, failing at once when Redis is unreachable.
pub async fn pool(settings: &RedisSettings) -> Result<fred::clients::Pool, Error> {
    let pool = builder(settings)?
        .build_pool(settings.pool_size)
        .map_err(redis_error)?;
    pool.init().await.map_err(redis_error)?;
    Ok(pool)
}

/// The scrape's view of Redis: `health_status{component="redis"}`.
pub struct RedisHealth {
    pool: fred::clients::Pool,
}

impl RedisHealth {
    pub fn new(pool: fred::clients::Pool) -> Self {
        RedisHealth { pool }
    }
}

#[async_trait::async_trait]
impl crate::ports::HealthCheck for RedisHealth {
    fn component(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), Error> {
        let _: Value = self.pool.next().ping(None).await.map_err(redis_error)?;
        Ok(())
    }
}

/// Reads an integer from a script reply element.
pub(crate) fn int_of(value: &Value) -> Result<i64, Error> {
    value
        .as_i64()
        .ok_or_else(|| Error::internal(format!("redis: expected an integer, got {value:?}")))
}
