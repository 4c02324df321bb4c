//! Redis Cluster, for real: a private cluster of three masters and three
//! replicas, one of whose masters is SIGKILLed under load. (The rest of the
//! cluster promises run against a Redis Cluster too: scripts/test runs the
//! `cluster::` tests a second time with TEST_REDIS_URL naming one.)

use std::sync::Arc;

use crate::common::cluster::Cluster;
use crate::common::redis::PrivateRedisCluster;
use crate::common::*;

/// The master that owns a watched room's channel dies while a writer
/// appends. Once its replica is promoted, every watcher on every replica has
/// every event once, in order, and the rate limit holds on the promoted
/// master's slots as it did before.
#[tokio::test]
async fn a_master_failover_loses_no_event_and_the_limits_keep_holding() {
    let redis = PrivateRedisCluster::start().await;
    let cluster = Arc::new(
        Cluster::start(
            3,
            redis.url(),
            &[
                ("RATE_LIMIT_ENABLED", "true"),
                // Appends are not what is limited here; reads are.
                ("RATE_LIMIT_BURST_MUTATION", "1000"),
                ("RATE_LIMIT_BURST_DEFAULT", "30"),
                ("RATE_LIMIT_PER_MINUTE_DEFAULT", "1"),
                ("REDIS_TIMEOUT_MS", "500"),
                // No head check within the test: only the reconnect path
                // (resubscribe, then every room re-reads the store) can
                // bring what the failover cost.
                ("ROOM_HEAD_CHECK_SECONDS", "300"),
            ],
        )
        .await,
    );
    let id = cluster.replica(0).create_draft("alice", "Failover").await;
    let mut watchers = Vec::new();
    for i in 0..6 {
        watchers.push(cluster.replica(i).ws("alice", &id, None).await.0);
    }
    let append = |writer: usize, n: u64| {
        let (cluster, id) = (cluster.clone(), id.clone());
        async move {
            let reply = cluster
                .replica(writer)
                .append("alice", &id, &format!("e{n}"))
                .await;
            assert_eq!(reply.status, 201, "append {n}: {}", reply.body);
        }
    };
    for n in 1..=10 {
        append(n as usize, n).await;
    }
    for watcher in &mut watchers {
        assert_eq!(watcher.next_seqs(10).await, (1..=10).collect::<Vec<_>>());
    }

    // Each replica subscribes to the room as a shard channel, on the master
    // that owns its slot.
    let channel = format!("{}room:{id}", cluster.prefix.prefix);
    assert_eq!(redis.shard_subscribers(&channel).await, 3);
    let doomed = redis.master_of(&channel).await.unwrap();
    redis.kill(doomed);
    // Appends go on through the failover, all through replica 0: the store
    // commits them, and the other replicas, with no later event to reveal
    // the gap and no head check, get them only from the reconnect's resync.
    for n in 11..=25 {
        append(0, n).await;
    }
    eventually(|| async { redis.failed_over(&channel, doomed).await }).await;
    let promoted = redis.master_of(&channel).await.unwrap();
    let missed: Vec<u64> = (11..=25).collect();
    let seen = futures_util::future::join_all(watchers.iter_mut().map(|w| w.next_seqs(15))).await;
    for (i, seqs) in seen.into_iter().enumerate() {
        assert_eq!(seqs, missed, "watcher {i} on replica {}", i % 3);
    }
    // Subscribed again on the promoted master, each replica having seen its
    // subscriber reconnect.
    eventually(|| async { redis.shard_subscribers(&channel).await == 3 }).await;
    for replica in &cluster.replicas {
        assert!(replica.metric("fanout_reconnects_total").await >= 1.0);
    }
    let before = pubsub_receipts(&cluster).await;
    for n in 26..=30 {
        append(n as usize, n).await;
    }
    let seen = futures_util::future::join_all(watchers.iter_mut().map(|w| w.next_seqs(5))).await;
    for (i, seqs) in seen.into_iter().enumerate() {
        assert_eq!(
            seqs,
            [26, 27, 28, 29, 30],
            "watcher {i} on replica {}",
            i % 3
        );
    }
    // Those five came over pub/sub, to each of the three replicas.
    eventually(|| async { received_each(&cluster, &before, 5.0).await }).await;

    // Users whose read buckets live on the promoted master (which never
    // loaded the script: it was a replica). Once every replica's limiter
    // answers from it (a read through each falls back nowhere), 60 reads
    // at once across the replicas admit what one server would: the burst
    // and the one the rate allows now (31).
    let on_promoted = |prefix: &'static str| {
        let (redis, key_prefix) = (&redis, cluster.prefix.prefix.clone());
        async move {
            for n in 0.. {
                let user = format!("{prefix}{n}");
                let key = format!("{key_prefix}rl:{{read:GET:/v1/collab/drafts:user:{user}}}");
                if redis.master_of(&key).await == Some(promoted) {
                    return user;
                }
            }
            unreachable!()
        }
    };
    let reader = on_promoted("reader").await;
    let probe = on_promoted("probe").await;
    let fallbacks = || async {
        let each = cluster
            .each_metric("ratelimit_fallback_total{mode=\"local\"}")
            .await;
        each.iter().sum::<f64>()
    };
    eventually(|| async {
        let before = fallbacks().await;
        for replica in &cluster.replicas {
            if replica.get(&reader, "/v1/collab/drafts").await.status != 200 {
                return false;
            }
        }
        fallbacks().await == before
    })
    .await;
    let reads = futures_util::future::join_all((0..60).map(|n| {
        let (cluster, probe) = (cluster.clone(), probe.clone());
        async move {
            cluster
                .replica(n)
                .get(&probe, "/v1/collab/drafts")
                .await
                .status
        }
    }))
    .await;
    let admitted = reads.iter().filter(|s| **s == 200).count();
    let refused = reads.iter().filter(|s| **s == 429).count();
    assert_eq!((admitted, refused), (31, 29), "{reads:?}");
}

/// A watched room's slot moves to another master (a reshard): Redis drops
/// the room's shard subscribers, and the client library does not say so.
/// Each replica finds out when it first misses an event of the room written
/// through another replica: the head check brings that event from the
/// store, and the room subscribes again, on the slot's new owner. After
/// that the fanout carries every event again.
#[tokio::test]
async fn a_moved_slot_costs_one_late_event_per_replica_and_the_room_subscribes_again() {
    let redis = PrivateRedisCluster::start().await;
    let cluster = Cluster::start(3, redis.url(), &[("ROOM_HEAD_CHECK_SECONDS", "1")]).await;
    let id = cluster.replica(0).create_draft("alice", "Resharded").await;
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(cluster.replica(i).ws("alice", &id, None).await.0);
    }
    let channel = format!("{}room:{id}", cluster.prefix.prefix);
    assert_eq!(redis.shard_subscribers(&channel).await, 3);
    let old_owner = redis.master_of(&channel).await.unwrap();
    let owner = redis.move_slot_of(&channel).await;
    assert_eq!(redis.master_of(&channel).await, Some(owner));
    assert_eq!(redis.shard_subscribers_at(old_owner, &channel).await, 0);
    assert_eq!(redis.shard_subscribers_at(owner, &channel).await, 0);
    let late = || cluster.each_metric("fanout_catchups_total{cause=\"head_check\"}");
    let late_before = late().await;

    // Written through replica 0, then 1: every replica misses one of them,
    // and a head check brings it.
    for (n, writer) in [(1, 0), (2, 1)] {
        let reply = cluster
            .replica(writer)
            .append("alice", &id, &format!("{n}"))
            .await;
        assert_eq!(reply.status, 201);
        for watcher in &mut watchers {
            assert_eq!(watcher.next_seqs(1).await, [n]);
        }
    }
    let late_after = late().await;
    for (i, (after, before)) in late_after.iter().zip(&late_before).enumerate() {
        assert!(
            after >= &(before + 1.0),
            "replica {i}: no head-check catch-up"
        );
    }
    eventually(|| async { redis.shard_subscribers_at(owner, &channel).await == 3 }).await;
    // From here the fanout carries the room again: each replica receives
    // the next three events over pub/sub.
    let before = pubsub_receipts(&cluster).await;
    for n in 3..=5 {
        let reply = cluster
            .replica(n as usize)
            .append("alice", &id, &format!("{n}"))
            .await;
        assert_eq!(reply.status, 201);
    }
    for watcher in &mut watchers {
        assert_eq!(watcher.next_seqs(3).await, [3, 4, 5]);
    }
    eventually(|| async { received_each(&cluster, &before, 3.0).await }).await;
}

/// Events each replica received over pub/sub so far (each receipt is timed).
async fn pubsub_receipts(cluster: &Cluster) -> Vec<f64> {
    cluster.each_metric("fanout_lag_seconds_count").await
}

/// Every replica received at least `events` more over pub/sub since `before`.
async fn received_each(cluster: &Cluster, before: &[f64], events: f64) -> bool {
    let now = pubsub_receipts(cluster).await;
    now.iter()
        .zip(before)
        .all(|(now, before)| *now >= before + events)
}
