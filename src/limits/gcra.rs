//! GCRA with exactly redis-cell's `CL.THROTTLE key max_burst count period
//! [quantity]` semantics and reply `[limited, limit, remaining, retry_after,
//! reset_after]`. Pure arithmetic on a stored theoretical arrival time (TAT),
//! so the in-process limiter and a Redis script can share one definition and
//! be tested against each other.
//!
//! Times are integer microseconds: the resolution of Redis `TIME`, and exact
//! in the doubles Lua computes with (redis-cell keeps nanoseconds, but its
//! clock and its `remaining` arithmetic are microsecond-grained anyway). The
//! emission interval is `period / count` (in floating point, truncated, as
//! redis-cell does); the tolerance is `interval * (max_burst + 1)`; a request
//! is allowed when the new TAT minus the tolerance is not after now. Seconds
//! in the reply round up any partial millisecond, as redis-cell does, so a
//! caller never retries too early. `lua/gcra.lua` is the same algorithm,
//! line for line, and a test holds the two to the same replies.

const MICROS_PER_SEC: i128 = 1_000_000;
const MICROS_PER_MILLI: i128 = 1_000;

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
        let period_us = self.period_secs as f64 * MICROS_PER_SEC as f64;
        let interval = (period_us / self.count as f64) as i128;
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

/// The reply of one throttle call, with durations kept in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleReply {
    pub limited: bool,
    pub limit: i64,
    pub remaining: i64,
    /// -1 s when allowed, or when the quantity can never fit.
    pub retry_after_us: i128,
    pub reset_after_us: i128,
}

impl ThrottleReply {
    /// The five integers `CL.THROTTLE` replies with.
    pub fn cell_reply(&self) -> [i64; 5] {
        [
            self.limited as i64,
            self.limit,
            self.remaining,
            cell_seconds(self.retry_after_us),
            cell_seconds(self.reset_after_us),
        ]
    }

    /// A reply known only in whole seconds, as `CL.THROTTLE` (or the Lua
    /// script) gives it.
    pub fn from_cell_reply(reply: [i64; 5]) -> Self {
        ThrottleReply {
            limited: reply[0] == 1,
            limit: reply[1],
            remaining: reply[2],
            retry_after_us: reply[3] as i128 * MICROS_PER_SEC,
            reset_after_us: reply[4] as i128 * MICROS_PER_SEC,
        }
    }

    pub fn retry_after_secs(&self) -> i64 {
        cell_seconds(self.retry_after_us)
    }

    pub fn reset_after_secs(&self) -> i64 {
        cell_seconds(self.reset_after_us)
    }
}

/// The state change a throttle call asks its store to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TatWrite {
    pub tat_us: i128,
    /// How long the stored TAT matters; after that the key may expire.
    pub ttl_us: i128,
}

/// One `CL.THROTTLE` call against the stored TAT (`None`: no key).
pub fn throttle(
    stored_tat_us: Option<i128>,
    now_us: i128,
    policy: &RatePolicy,
    quantity: i64,
) -> Result<(ThrottleReply, Option<TatWrite>), GcraError> {
    if quantity < 0 {
        return Err(GcraError::NegativeQuantity);
    }
    let interval = policy.emission_interval()?;
    let tolerance = interval * policy.limit() as i128;
    let increment = interval * quantity as i128;

    let tat = stored_tat_us.unwrap_or(now_us);
    let new_tat = tat.max(now_us) + increment;
    let allow_at = new_tat - tolerance;
    let diff = now_us - allow_at;

    let mut reply = ThrottleReply {
        limited: false,
        limit: policy.limit(),
        remaining: 0,
        retry_after_us: -MICROS_PER_SEC,
        reset_after_us: -MICROS_PER_SEC,
    };
    let (ttl, write) = if diff < 0 {
        reply.limited = true;
        if increment <= tolerance {
            reply.retry_after_us = -diff;
        }
        (tat - now_us, None)
    } else {
        let ttl = new_tat - now_us;
        (
            ttl,
            Some(TatWrite {
                tat_us: new_tat,
                ttl_us: ttl,
            }),
        )
    };

    let next = tolerance - ttl;
    if next > -interval {
        // redis-cell divides as floats and truncates toward zero.
        reply.remaining = (next as f64 / interval as f64) as i64;
    }
    reply.reset_after_us = ttl;
    Ok((reply, write))
}

/// Whole seconds, plus one when a partial millisecond remains (redis-cell's rounding).
fn cell_seconds(us: i128) -> i64 {
    let whole = us / MICROS_PER_SEC;
    let sub_ms = (us % MICROS_PER_SEC) / MICROS_PER_MILLI;
    (whole + i128::from(sub_ms > 0)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = MICROS_PER_SEC;

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
                self.tat = Some((w.tat_us, now + w.ttl_us));
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
        let ms = |n: i128| start + n * 1_000;
        // (now, quantity, remaining, reset_after_us, retry_after_us, limited)
        let cases: &[(i128, i64, i64, i128, i128, bool)] = &[
            (start, 6, 5, 0, -S, true),
            (start, 1, 4, S, -S, false),
            (start, 1, 3, 2 * S, -S, false),
            (start, 1, 2, 3 * S, -S, false),
            (start, 1, 1, 4 * S, -S, false),
            (start, 1, 0, 5 * S, -S, false),
            (start, 1, 0, 5 * S, S, true),
            (ms(3000), 1, 2, 3 * S, -S, false),
            (ms(3100), 1, 1, 3_900_000, -S, false),
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
            assert_eq!(r.reset_after_us, reset, "case {i}");
            assert_eq!(r.retry_after_us, retry, "case {i}");
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
                tat_us: 10 * S,
                ttl_us: 0
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
        let now = 1_800_000_000 * S;
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
        assert_eq!(cell_seconds(2 * S + 1_000), 3);
        assert_eq!(cell_seconds(2 * S + 999), 2);
        assert_eq!(cell_seconds(0), 0);
    }
}
