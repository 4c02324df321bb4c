//! GCRA rate limits in Redis: `lua/gcra.lua`, one key per call, time from
//! Redis `TIME`, so N replicas together admit what one would.

use async_trait::async_trait;
use fred::clients::Pool;
use fred::types::scripts::Script;
use fred::types::Value;

use super::{int_of, redis_error};
use crate::error::Error;
use crate::limits::gcra::{RatePolicy, ThrottleReply};
use crate::ports::RateLimiter;
use crate::telemetry::Metrics;

pub const GCRA_LUA: &str = include_str!("../../../lua/gcra.lua");

pub struct RedisRateLimiter {
    pool: Pool,
    script: Script,
    prefix: String,
    metrics: Metrics,
}

impl RedisRateLimiter {
    pub fn new(pool: Pool, prefix: &str, metrics: Metrics) -> Self {
        RedisRateLimiter {
            pool,
            script: Script::from_lua(GCRA_LUA),
            prefix: prefix.to_owned(),
            metrics,
        }
    }

    /// The bucket's key: the whole name is the hash tag, one key per call.
    pub fn key(&self, key: &str) -> String {
        format!("{}rl:{{{key}}}", self.prefix)
    }

    /// Runs the script; `now_us` overrides Redis TIME (conformance tests only).
    #[tracing::instrument(name = "redis gcra", skip_all, fields(otel.kind = "client", policy = policy.name))]
    pub async fn eval(
        &self,
        key: &str,
        policy: &RatePolicy,
        quantity: i64,
        now_us: Option<i64>,
    ) -> Result<[i64; 5], Error> {
        let mut args = vec![
            policy.max_burst.to_string(),
            policy.count.to_string(),
            policy.period_secs.to_string(),
            quantity.to_string(),
        ];
        if let Some(now) = now_us {
            args.push(now.to_string());
        }
        let started = std::time::Instant::now();
        let reply: Result<Vec<Value>, _> = self
            .script
            .evalsha_with_reload(self.pool.next(), self.key(key), args)
            .await;
        self.metrics
            .redis_command("gcra", started.elapsed().as_secs_f64());
        let reply = reply.map_err(redis_error)?;
        if reply.len() != 5 {
            return Err(Error::internal(format!("gcra.lua replied {reply:?}")));
        }
        Ok([
            int_of(&reply[0])?,
            int_of(&reply[1])?,
            int_of(&reply[2])?,
            int_of(&reply[3])?,
            int_of(&reply[4])?,
        ])
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn throttle(
        &self,
        key: &str,
        policy: &RatePolicy,
        quantity: u32,
    ) -> Result<ThrottleReply, Error> {
        let reply = self.eval(key, policy, quantity as i64, None).await?;
        Ok(ThrottleReply::from_cell_reply(reply))
    }
}
