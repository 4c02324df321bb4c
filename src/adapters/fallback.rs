//! What rate limiting does when its shared backend (Redis) fails, as
//! `RATE_LIMIT_FAIL_MODE` says: `local` (an in-process GCRA at this replica's
//! share of the cluster limit), `open` (allow), or `closed` (refuse with 503).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::memory::MemoryRateLimiter;
use crate::error::Error;
use crate::limits::gcra::{RatePolicy, ThrottleReply};
use crate::ports::RateLimiter;
use crate::telemetry::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// This replica's share of the cluster limit, in process.
    Local,
    /// Allow every request.
    Open,
    /// Refuse: the primary's error (503 `unavailable`) goes through.
    Closed,
}

impl FailMode {
    /// The `mode` label of `ratelimit_fallback_total`.
    fn label(self) -> &'static str {
        match self {
            FailMode::Local => "local",
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

/// Counts live replicas, to size the local share.
pub type ReplicaCount = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct FallbackLimiter {
    primary: Arc<dyn RateLimiter>,
    local: MemoryRateLimiter,
    mode: FailMode,
    replicas: ReplicaCount,
    /// Set while the primary fails, so the outage is logged once.
    failing: AtomicBool,
    metrics: Metrics,
}

impl FallbackLimiter {
    pub fn new(
        primary: Arc<dyn RateLimiter>,
        mode: FailMode,
        replicas: ReplicaCount,
        metrics: Metrics,
    ) -> Self {
        FallbackLimiter {
            primary,
            local: MemoryRateLimiter::new(),
            mode,
            replicas,
            failing: AtomicBool::new(false),
            metrics,
        }
    }
}

/// One replica's share of a cluster-wide policy: rate and burst divided by
/// the live replicas, never below one request.
pub fn share_of(policy: &RatePolicy, replicas: u64) -> RatePolicy {
    let n = replicas.max(1) as i64;
    RatePolicy {
        name: policy.name,
        max_burst: (policy.max_burst + 1).div_euclid(n).max(1) - 1,
        count: (policy.count / n).max(1),
        period_secs: policy.period_secs,
    }
}

#[async_trait]
impl RateLimiter for FallbackLimiter {
    async fn throttle(
        &self,
        key: &str,
        policy: &RatePolicy,
        quantity: u32,
    ) -> Result<ThrottleReply, Error> {
        match self.primary.throttle(key, policy, quantity).await {
            Ok(reply) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limiter backend is back");
                }
                Ok(reply)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error.message = %e, fail_mode = ?self.mode, "rate limiter backend failed; applying RATE_LIMIT_FAIL_MODE");
                }
                self.metrics.rate_limit_fallback(self.mode.label());
                match self.mode {
                    FailMode::Local => {
                        let share = share_of(policy, (self.replicas)());
                        self.local.throttle(key, &share, quantity).await
                    }
                    FailMode::Open => Ok(ThrottleReply {
                        limited: false,
                        limit: policy.limit(),
                        remaining: policy.limit() - 1,
                        retry_after_us: -1_000_000,
                        reset_after_us: 0,
                    }),
                    FailMode::Closed => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Down;

    #[async_trait]
    impl RateLimiter for Down {
        async fn throttle(&self, _: &str, _: &RatePolicy, _: u32) -> Result<ThrottleReply, Error> {
            Err(Error::unavailable("redis down"))
        }
    }

    fn policy() -> RatePolicy {
        RatePolicy {
            name: "read",
            max_burst: 5,
            count: 60,
            period_secs: 60,
        }
    }

    #[test]
    fn a_share_divides_rate_and_burst() {
        let share = share_of(&policy(), 3);
        assert_eq!((share.max_burst, share.count), (1, 20));
        let tiny = share_of(
            &RatePolicy {
                max_burst: 0,
                count: 1,
                ..policy()
            },
            10,
        );
        assert_eq!((tiny.max_burst, tiny.count), (0, 1));
    }

    #[tokio::test]
    async fn each_mode_does_what_it_says() {
        let three: ReplicaCount = Arc::new(|| 3);
        let local = FallbackLimiter::new(
            Arc::new(Down),
            FailMode::Local,
            three.clone(),
            Metrics::new(),
        );
        // Share of burst 5 over 3 replicas: 2 at once, then limited.
        assert!(!local.throttle("k", &policy(), 1).await.unwrap().limited);
        assert!(!local.throttle("k", &policy(), 1).await.unwrap().limited);
        assert!(local.throttle("k", &policy(), 1).await.unwrap().limited);
        let open = FallbackLimiter::new(
            Arc::new(Down),
            FailMode::Open,
            three.clone(),
            Metrics::new(),
        );
        for _ in 0..20 {
            assert!(!open.throttle("k", &policy(), 1).await.unwrap().limited);
        }
        let closed = FallbackLimiter::new(Arc::new(Down), FailMode::Closed, three, Metrics::new());
        assert_eq!(
            closed.throttle("k", &policy(), 1).await.unwrap_err().code(),
            "unavailable"
        );
    }
}
