//! GCRA with exactly redis-cell's `CL.THROTTLE key max_burst count period
//! [quantity]` semantics and reply `[limited, limit, remaining, retry_after,
//! reset_after]`. Pure arithmetic on a stored theoretical arrival time (TAT),
//! so the in-process limiter and a Redis script can share one definition and
//! be tested against each other.
//!
//! Times are nanoseconds. The emission interval is `period / count` (computed
//! as redis-cell does, in floating point, truncated); the tolerance is
//! `interval * (max_burst + 1)`; a request is allowed when the new TAT minus
//! the tolerance is not after now. Seconds in the reply round up any partial
//! millisecond, as redis-cell does, so a caller never retries too early.

const NANOS_PER_SEC: i128 = 1_000_000_000;
const NANOS_PER_MILLI: i128 = 1_000_000;

/// A named limit: `count` requests per `period_secs`, plus `max_burst` extra at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatePolicy {
    /// Names the policy in keys and in the `RateLimit-Policy` header.
    pub name: &'static str,
    pub max_burst: i64,
    pub count: i64,
    pub period_secs: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GcraError {
    #[error("zero or negative rates are not supported")]
    ZeroRate,
    #[error("max_burst must not be negative")]
    NegativeBurst,
    #[error("quantity must not be negative")]
    NegativeQuantity,
}

impl RatePolicy {
    fn emission_interval(&self) -> Result<i128, GcraError> {
        if self.count <= 0 || self.period_secs <= 0 {
            return Err(GcraError::ZeroRate);
        }
        if self.max_burst < 0 {
            return Err(GcraError::NegativeBurst);
        }
        let period_ns = self.period_secs as f64 * NANOS_PER_SEC as f64;
        let interval = (period_ns / self.count as f64) as i128;
        if interval <= 0 {
            return Err(GcraError::ZeroRate);
        }
        Ok(interval)
    }

    /// The most requests admitted at one instant (`max_burst + 1`).
    pub fn limit(&self) -> i64 {
        self.max_burst.saturating_add(1)
    }

    /// Seconds a fully drained bucket takes to refill, rounded up.
    pub fn window_secs(&self) -> i64 {
        match self.emission_interval() {
            Ok(t) => cell_seconds(t * self.limit() as i128),
            Err(_) => 0,
        }
    }
}

/// The reply of one throttle call, with durations kept in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleReply {
    pub limited: bool,
    pub limit: i64,
    pub remaining: i64,
    /// -1 s when allowed, or when the quantity can never fit.
    pub retry_after_ns: i128,
    pub reset_after_ns: i128,
}

impl ThrottleReply {
    /// The five integers `CL.THROTTLE` replies with.
    pub fn cell_reply(&self) -> [i64; 5] {
        [
            self.limited as i64,
            self.limit,
            self.remaining,
            cell_seconds(self.retry_after_ns),
            cell_seconds(self.reset_after_ns),
        ]
    }

    pub fn retry_after_secs(&self) -> i64 {
        cell_seconds(self.retry_after_ns)
    }

    pub fn reset_after_secs(&self) -> i64 {
        cell_seconds(self.reset_after_ns)
    }
}

/// The state change a throttle call asks its store to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TatWrite {
    pub tat_ns: i128,
    /// How long the stored TAT matters; after that the key may expire.
    pub ttl_ns: i128,
}

/// One `CL.THROTTLE` call against the stored TAT (`None`: no key).
pub fn throttle(
    stored_tat_ns: Option<i128>,
    now_ns: i128,
    policy: &RatePolicy,
    quantity: i64,
) -> Result<(ThrottleReply, Option<TatWrite>), GcraError> {
    if quantity < 0 {
        return Err(GcraError::NegativeQuantity);
    }
    let interval = policy.emission_interval()?;
    let tolerance = interval * policy.limit() as i128;
    let increment = interval * quantity as i128;

    let tat = stored_tat_ns.unwrap_or(now_ns);
    let new_tat = tat.max(now_ns) + increment;
    let allow_at = new_tat - tolerance;
    let diff = now_ns - allow_at;

    let mut reply = ThrottleReply {
        limited: false,
        limit: policy.limit(),
        remaining: 0,
        retry_after_ns: -NANOS_PER_SEC,
        reset_after_ns: -NANOS_PER_SEC,
    };
    let (ttl, write) = if diff < 0 {
        reply.limited = true;
        if increment <= tolerance {
            reply.retry_after_ns = -diff;
        }
        (tat - now_ns, None)
    } else {
        let ttl = new_tat - now_ns;
        (
            ttl,
            Some(TatWrite {
                tat_ns: new_tat,
                ttl_ns: ttl,
            }),
        )
    };

    let next = tolerance - ttl;
    if next > -interval {
        // redis-cell divides microseconds as floats and truncates.
        let next_us = (next / 1_000) as f64;
        let interval_us = (interval / 1_000) as f64;
        reply.remaining = (next_us / interval_us) as i64;
    }
    reply.reset_after_ns = ttl;
    Ok((reply, write))
}

/// Whole seconds, plus one when a partial millisecond remains (redis-cell's rounding).
fn cell_seconds(ns: i128) -> i64 {
    let whole = ns / NANOS_PER_SEC;
    let sub_ms = (ns % NANOS_PER_SEC) / NANOS_PER_MILLI;
    (whole + i128::from(sub_ms > 0)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = NANOS_PER_SEC;

    fn policy(max_burst: i64, count: i64, period_secs: i64) -> RatePolicy {
        RatePolicy {
            name: "test",
            max_burst,
            count,
            period_secs,
        }
    }

    /// Runs calls against one key, carrying the TAT like a store would
    /// (a key past its TTL is gone).
    struct Key {
        tat: Option<(i128, i128)>,
    }

    impl Key {
        fn call(&mut self, now: i128, p: &RatePolicy, quantity: i64) -> ThrottleReply {
            let stored = self.tat.filter(|(_, exp)| *exp > now).map(|(t, _)| t);
            let (reply, write) = throttle(stored, now, p, quantity).unwrap();
            if let Some(w) = write {
                self.tat = Some((w.tat_ns, now + w.ttl_ns));
            }
            reply
        }
    }

    #[test]
    fn worked_example_the_seventeenth_call_in_a_burst_is_limited() {
        // burst 15, 30 per 60 s: 16 calls at once pass, the 17th waits 2 s.
        let p = policy(15, 30, 60);
        let mut key = Key { tat: None };
        let now = 1_700_000_000 * S;
        let first = key.call(now, &p, 1);
        assert_eq!(first.cell_reply(), [0, 16, 15, -1, 2]);
        for _ in 2..=16 {
            assert!(!key.call(now, &p, 1).limited);
        }
        let seventeenth = key.call(now, &p, 1);
        assert_eq!(seventeenth.cell_reply(), [1, 16, 0, 2, 32]);
    }

    #[test]
    fn matches_redis_cells_own_table() {
        // redis-cell's test: limit 5 (burst 4), 1 per second.
        let p = policy(4, 1, 1);
        let mut key = Key { tat: None };
        let start = 1_000 * S;
        let ms = |n: i128| start + n * 1_000_000;
        // (now, quantity, remaining, reset_after_ns, retry_after_ns, limited)
        let cases: &[(i128, i64, i64, i128, i128, bool)] = &[
            (start, 6, 5, 0, -S, true),
            (start, 1, 4, S, -S, false),
            (start, 1, 3, 2 * S, -S, false),
            (start, 1, 2, 3 * S, -S, false),
            (start, 1, 1, 4 * S, -S, false),
            (start, 1, 0, 5 * S, -S, false),
            (start, 1, 0, 5 * S, S, true),
            (ms(3000), 1, 2, 3 * S, -S, false),
            (ms(3100), 1, 1, 3_900_000_000, -S, false),
            (ms(4000), 1, 1, 4 * S, -S, false),
            (ms(8000), 1, 4, S, -S, false),
            (ms(9500), 1, 4, S, -S, false),
            (ms(9500), 0, 4, S, -S, false),
            (ms(9500), 2, 2, 3 * S, -S, false),
            (ms(9500), 5, 2, 3 * S, 3 * S, true),
        ];
        for (i, &(now, quantity, remaining, reset, retry, limited)) in cases.iter().enumerate() {
            let r = key.call(now, &p, quantity);
            assert_eq!(r.limited, limited, "case {i}");
            assert_eq!(r.limit, 5, "case {i}");
            assert_eq!(r.remaining, remaining, "case {i}");
            assert_eq!(r.reset_after_ns, reset, "case {i}");
            assert_eq!(r.retry_after_ns, retry, "case {i}");
        }
    }

    #[test]
    fn quantity_zero_peeks_without_writing() {
        let p = policy(2, 1, 1);
        let (reply, write) = throttle(None, 10 * S, &p, 0).unwrap();
        assert!(!reply.limited);
        assert_eq!(reply.remaining, 3);
        assert_eq!(
            write,
            Some(TatWrite {
                tat_ns: 10 * S,
                ttl_ns: 0
            })
        );
    }

    #[test]
    fn a_quantity_over_the_limit_never_fits_and_has_no_retry() {
        let p = policy(2, 1, 1);
        let (reply, write) = throttle(None, 10 * S, &p, 4).unwrap();
        assert!(reply.limited);
        assert_eq!(reply.cell_reply()[3], -1);
        assert_eq!(write, None);
    }

    #[test]
    fn large_timestamps_do_not_overflow() {
        let p = policy(1_000_000, 1, 86_400);
        let now = i64::MAX as i128 - 10 * S;
        let (reply, _) = throttle(Some(now), now, &p, 1_000_000).unwrap();
        assert!(!reply.limited);
    }

    #[test]
    fn bad_policies_and_quantities_are_errors() {
        assert_eq!(
            throttle(None, 0, &policy(1, 0, 1), 1).unwrap_err(),
            GcraError::ZeroRate
        );
        assert_eq!(
            throttle(None, 0, &policy(1, 1, 0), 1).unwrap_err(),
            GcraError::ZeroRate
        );
        assert_eq!(
            throttle(None, 0, &policy(-1, 1, 1), 1).unwrap_err(),
            GcraError::NegativeBurst
        );
        assert_eq!(
            throttle(None, 0, &policy(1, 1, 1), -1).unwrap_err(),
            GcraError::NegativeQuantity
        );
    }

    #[test]
    fn seconds_round_up_partial_milliseconds_only() {
        assert_eq!(cell_seconds(-S), -1);
        assert_eq!(cell_seconds(2 * S), 2);
        assert_eq!(cell_seconds(2 * S + 1_000_000), 3);
        assert_eq!(cell_seconds(2 * S + 999_999), 2);
        assert_eq!(cell_seconds(0), 0);
    }
}
