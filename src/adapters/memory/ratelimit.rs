//! The in-process rate limiter: the same GCRA as the Redis script, with TATs
//! in a map. Used in standalone mode, and in cluster mode as the fallback
//! while Redis is unreachable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;

use crate::error::Error;
use crate::limits::gcra::{throttle, RatePolicy, ThrottleReply};
use crate::ports::RateLimiter;

/// Sweep expired keys once the map holds this many, so idle keys cannot pile
/// up: the map holds the subjects seen within their bucket's refill time
/// (~100 bytes each), plus at most this many expired ones.
const SWEEP_THRESHOLD: usize = 10_000;

struct Entry {
    tat_us: i128,
    expires_us: i128,
}

/// A std `Mutex`: the critical section is a map lookup and a few integer
/// operations, never an `.await`.
pub struct MemoryRateLimiter {
    started: Instant,
    keys: Mutex<HashMap<String, Entry>>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        MemoryRateLimiter {
            started: Instant::now(),
            keys: Mutex::new(HashMap::new()),
        }
    }
}

impl MemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Microseconds on a monotonic clock, so wall-clock steps cannot refill buckets.
    fn now_us(&self) -> i128 {
        self.started.elapsed().as_micros() as i128
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn throttle(
        &self,
        key: &str,
        policy: &RatePolicy,
        quantity: u32,
    ) -> Result<ThrottleReply, Error> {
        let now = self.now_us();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= SWEEP_THRESHOLD {
            keys.retain(|_, e| e.expires_us > now);
        }
        let stored = keys
            .get(key)
            .filter(|e| e.expires_us > now)
            .map(|e| e.tat_us);
        let (reply, write) =
            throttle(stored, now, policy, quantity as i64).map_err(Error::internal)?;
        if let Some(write) = write.filter(|w| w.ttl_us > 0) {
            keys.insert(
                key.to_owned(),
                Entry {
                    tat_us: write.tat_us,
                    expires_us: now + write.ttl_us,
                },
            );
        }
        Ok(reply)
    }
}
