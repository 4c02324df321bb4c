//! `lua/gcra.lua` against `src/limits/gcra.rs`: same inputs, same replies,
//! over random policies, quantities (0, over the limit) and time steps, at
//! present-day timestamps; and the script's key TTL.

use crate::common::redis::{base_url, client, TestPrefix};
use collabd::adapters::redis::{pool as redis_pool, RedisRateLimiter, RedisSettings};
use collabd::limits::gcra::{throttle, RatePolicy};
use fred::interfaces::KeysInterface;

/// The Redis limiter under the test's own key prefix.
async fn limiter(prefix: &TestPrefix) -> RedisRateLimiter {
    let settings = RedisSettings {
        url: base_url(),
        prefix: prefix.prefix.clone(),
        pool_size: 1,
        timeout: std::time::Duration::from_secs(5),
    };
    RedisRateLimiter::new(
        redis_pool(&settings).await.unwrap(),
        &prefix.prefix,
        collabd::telemetry::Metrics::new(),
    )
}

#[tokio::test]
async fn the_lua_script_and_the_rust_gcra_agree() {
    let prefix = TestPrefix::new();
    let limiter = limiter(&prefix).await;
    let redis = client(&base_url()).await;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    // Decisions compared, by outcome: [allowed, limited].
    let mut outcomes = [0u32; 2];
    for case in 0..150 {
        let policy = RatePolicy {
            name: "t",
            max_burst: rng.i64(0..20),
            count: rng.i64(1..500),
            period_secs: [1, 7, 60, 3600, 86_400][rng.usize(0..5)],
        };
        let interval = (policy.period_secs as f64 * 1e6 / policy.count as f64) as i64;
        let key = format!("case-{case}");
        let redis_key = limiter.key(&key);
        // Present-day microseconds, far from the epoch.
        let mut now: i64 = 1_764_000_000_000_000 + rng.i64(0..1_000_000_000_000);
        for step in 0..40 {
            now += match rng.u8(0..6) {
                0 => 0,
                1 => rng.i64(0..1_000),
                2 => interval / 2,
                3 => interval,
                4 => rng.i64(0..interval * (policy.max_burst + 2)),
                _ => interval * (policy.max_burst + 3),
            };
            let quantity = match rng.u8(0..8) {
                0 => 0,
                1 => policy.max_burst + 1,
                2 => policy.max_burst + 2,
                3 => 2,
                _ => 1,
            };
            let stored: Option<String> = redis.get(&redis_key).await.unwrap();
            let stored = stored.map(|s| s.parse::<i128>().unwrap());
            let (rust, write) = throttle(stored, now as i128, &policy, quantity).unwrap();
            let lua = limiter
                .eval(&key, &policy, quantity, Some(now))
                .await
                .unwrap();
            assert_eq!(
                lua,
                rust.cell_reply(),
                "case {case} step {step}: {policy:?} quantity {quantity} now {now} stored {stored:?}"
            );
            if let Some(write) = write.filter(|w| w.ttl_us > 0) {
                let ttl_ms: i64 = redis.pttl(&redis_key).await.unwrap();
                let expected = (write.ttl_us as i64 + 999) / 1000;
                assert!(
                    ttl_ms <= expected && ttl_ms > expected - 1000,
                    "ttl {ttl_ms} vs {expected}"
                );
            }
            // Real time must not expire what the simulated clock still needs.
            let _: bool = redis.persist(&redis_key).await.unwrap();
            outcomes[lua[0] as usize] += 1;
        }
    }
    // The random walk reached both answers often, or the agreement above
    // says little about one of them.
    assert!(
        outcomes.iter().all(|&n| n >= 600),
        "allowed/limited decisions compared: {outcomes:?}"
    );
}

#[tokio::test]
async fn the_lua_script_matches_the_worked_example_on_redis_time() {
    let prefix = TestPrefix::new();
    let limiter = limiter(&prefix).await;
    let policy = RatePolicy {
        name: "t",
        max_burst: 15,
        count: 30,
        period_secs: 60,
    };
    let now = 1_764_000_000_000_000;
    let first = limiter.eval("w", &policy, 1, Some(now)).await.unwrap();
    assert_eq!(first, [0, 16, 15, -1, 2]);
    for _ in 2..=16 {
        assert_eq!(
            limiter.eval("w", &policy, 1, Some(now)).await.unwrap()[0],
            0
        );
    }
    assert_eq!(
        limiter.eval("w", &policy, 1, Some(now)).await.unwrap(),
        [1, 16, 0, 2, 32]
    );
    // And with the server's own clock, a fresh key behaves the same.
    assert_eq!(
        limiter.eval("fresh", &policy, 1, None).await.unwrap(),
        [0, 16, 15, -1, 2]
    );
    let bad = RatePolicy { count: 0, ..policy };
    assert!(limiter.eval("bad", &bad, 1, None).await.is_err());
}
