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
    // One attempt: a command that fails during an outage fails at once and
    // the caller's fallback applies (local limits, the store fill); fred's
    // retries would stack timeouts instead. On a Redis Cluster, one more:
    // fred counts the write that follows a MOVED or ASK redirect (after a
    // failover or a reshard) as an attempt, and without it every client's
    // first command to a moved slot would fail.
    let attempts = if config.server.is_clustered() { 2 } else { 1 };
    let mut builder = Builder::from_config(config);
    let timeout = settings.timeout;
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = attempts;
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
    if let Err(e) = pool.init().await {
        return Err(unreachable(settings, e).await);
    }
    Ok(pool)
}

/// One line for a failed first connection: where (never the URL, which may
/// hold a password) and why, in words rather than fred's debug dump.
async fn unreachable(settings: &RedisSettings, e: fred::error::Error) -> Error {
    let hosts = RedisConfig::from_url(&settings.url)
        .map(|c| c.server.hosts())
        .unwrap_or_default();
    let addrs: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    // A plain connect says why the network refused, if it did; otherwise
    // Redis itself refused (a password, TLS), and fred's words are clear.
    let reached = match hosts.first() {
        Some(server) => {
            let connect = tokio::net::TcpStream::connect((&*server.host, server.port));
            match tokio::time::timeout(settings.timeout.max(Duration::from_secs(1)), connect).await
            {
                Ok(Err(io)) => Err(io.to_string()),
                Err(_) => Err("connection timed out".to_owned()),
                Ok(Ok(_)) => Ok(()),
            }
        }
        None => Ok(()),
    };
    let addrs = addrs.join(", ");
    Error::unavailable(match reached {
        Err(cause) => format!("cannot reach Redis at {addrs} (REDIS_URL): {cause}"),
        Ok(()) => format!("Redis at {addrs} (REDIS_URL) refused: {}", e.details()),
    })
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
