//! Promises 1, 3 and 6 through outages, with replica processes and real
//! backends: socket caps and rate limits while Redis is down (each
//! `RATE_LIMIT_FAIL_MODE`) and after it returns, with readiness and
//! `health_status` meanwhile; a Postgres outage in cluster mode, cut after a
//! transaction's statements and before its COMMIT; a replica SIGKILLed right
//! after its 201s.

use crate::common::cluster::{Cluster, Replica};
use crate::common::proxy::Proxy;
use crate::common::redis::{base_url, PrivateRedis};
use crate::common::*;
use serde_json::json;

const REDIS_HEALTH: &str = "health_status{component=\"redis\"}";

/// Replicas sharing a private Redis through one proxy, so a test can take
/// Redis away from all of them at once.
struct BehindRedisProxy {
    cluster: Cluster,
    proxy: Proxy,
    _redis: PrivateRedis,
}

impl BehindRedisProxy {
    async fn start(n: usize, env: &[(&str, &str)]) -> BehindRedisProxy {
        let redis = PrivateRedis::start().await;
        let proxy = Proxy::start(redis.addr).await;
        // One connection per replica: once the health gauge reads 1 after an
        // outage, every call goes through a connection known to be back
        // (with more, one could still be in its reconnect backoff).
        let mut settings = vec![
            ("WS_LEASE_TTL_SECONDS", "3"),
            ("REDIS_TIMEOUT_MS", "300"),
            ("REDIS_POOL_SIZE", "1"),
        ];
        settings.extend_from_slice(env);
        let cluster = Cluster::start(n, format!("redis://{}/0", proxy.addr), &settings).await;
        let this = BehindRedisProxy {
            cluster,
            proxy,
            _redis: redis,
        };
        this.until_every_replica_counts_the_others().await;
        this
    }

    /// Waits until every replica renewed its lease twice after all of them
    /// had registered. The first renewal's count may not be stored yet when
    /// its deadline shows in Redis; the heartbeat sends the second only
    /// after it was. From then on each replica knows how many share the caps
    /// and limits, and so what its share is when Redis goes.
    async fn until_every_replica_counts_the_others(&self) {
        self.cluster.until_every_lease_renewed(2).await;
    }

    async fn sockets_in_redis(&self) -> i64 {
        self.cluster.sockets_in_redis().await
    }
}

async fn ready_status(replica: &Replica, public: bool) -> u16 {
    let url = if public {
        replica.url("/readyz")
    } else {
        format!("http://{}/readyz", replica.metrics_addr)
    };
    replica
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Readiness follows Postgres and draining only: a Redis outage degrades
/// every replica alike and must not take them all out of rotation; the
/// health gauge says what is wrong.
async fn redis_is_reported_down_but_readiness_holds(replicas: &[Replica]) {
    for replica in replicas {
        eventually(|| async { replica.metric(REDIS_HEALTH).await == 0.0 }).await;
        assert_eq!(ready_status(replica, true).await, 200);
        assert_eq!(ready_status(replica, false).await, 200);
    }
}

async fn redis_is_reported_back(replicas: &[Replica]) {
    for replica in replicas {
        eventually(|| async { replica.metric(REDIS_HEALTH).await == 1.0 }).await;
    }
}

async fn create(replica: &Replica) -> Reply {
    replica
        .post("alice", "/v1/collab/drafts", json!({ "title": "x" }))
        .await
}

/// Burst 5 (six at once) and one a minute: nothing refills during a test.
const TIGHT_MUTATIONS: [(&str, &str); 4] = [
    ("RATE_LIMIT_ENABLED", "true"),
    ("RATE_LIMIT_BURST_MUTATION", "5"),
    ("RATE_LIMIT_PER_MINUTE_MUTATION", "1"),
    ("RATE_LIMIT_FAIL_MODE", "local"),
];

fn with_fail_mode(mode: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut env = TIGHT_MUTATIONS.to_vec();
    env[3].1 = mode;
    env
}

#[tokio::test]
async fn fail_mode_local_limits_each_replica_to_its_share_while_redis_is_down() {
    let setup = BehindRedisProxy::start(2, &with_fail_mode("local")).await;
    let replicas = &setup.cluster.replicas;
    setup.proxy.cut();
    redis_is_reported_down_but_readiness_holds(replicas).await;
    // Six at once cluster-wide, so three at once on each of two replicas.
    for replica in replicas {
        let statuses: Vec<u16> = futures_util::future::join_all((0..5).map(|_| create(replica)))
            .await
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            3,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 429).count(),
            2,
            "{statuses:?}"
        );
        assert_eq!(
            replica
                .metric("ratelimit_fallback_total{mode=\"local\"}")
                .await,
            5.0
        );
    }

    // Redis returns: decisions come from it again, not from the fallback.
    setup.proxy.restore();
    redis_is_reported_back(replicas).await;
    for replica in replicas {
        let reply = create(replica).await;
        assert!([201, 429].contains(&reply.status), "{}", reply.body);
        assert_eq!(
            replica
                .metric("ratelimit_fallback_total{mode=\"local\"}")
                .await,
            5.0,
            "a request after Redis returned still fell back"
        );
    }
}

#[tokio::test]
async fn fail_mode_open_allows_everything_while_redis_is_down() {
    let setup = BehindRedisProxy::start(2, &with_fail_mode("open")).await;
    let replicas = &setup.cluster.replicas;
    setup.proxy.cut();
    redis_is_reported_down_but_readiness_holds(replicas).await;
    for replica in replicas {
        // Past the cluster's whole burst, on each replica.
        for n in 0..8 {
            let reply = create(replica).await;
            assert_eq!(reply.status, 201, "create {n}: {}", reply.body);
        }
        assert_eq!(
            replica
                .metric("ratelimit_fallback_total{mode=\"open\"}")
                .await,
            8.0
        );
    }
    setup.proxy.restore();
    redis_is_reported_back(replicas).await;
}

#[tokio::test]
async fn fail_mode_closed_refuses_with_503_while_redis_is_down_and_recovers() {
    let setup = BehindRedisProxy::start(2, &with_fail_mode("closed")).await;
    let replicas = &setup.cluster.replicas;
    let id = replicas[0].create_draft("alice", "Closed").await;
    setup.proxy.cut();
    redis_is_reported_down_but_readiness_holds(replicas).await;
    for replica in replicas {
        let reply = create(replica).await;
        assert_eq!((reply.status, reply.code()), (503, "unavailable"));
        let append = replica.append("alice", &id, "refused").await;
        assert_eq!((append.status, append.code()), (503, "unavailable"));
        assert_eq!(
            replica
                .metric("ratelimit_fallback_total{mode=\"closed\"}")
                .await,
            2.0
        );
    }
    // Refused means changed nothing.
    assert_eq!(setup.cluster.db.count("drafts").await, 1);
    assert_eq!(setup.cluster.db.count("segments").await, 0);

    setup.proxy.restore();
    redis_is_reported_back(replicas).await;
    for replica in replicas {
        eventually(|| async { create(replica).await.status == 201 }).await;
    }
}

#[tokio::test]
async fn socket_caps_fall_back_to_each_replicas_share_and_re_register_when_redis_returns() {
    let setup = BehindRedisProxy::start(
        2,
        &[
            ("WS_LIMITS_ENABLED", "true"),
            ("WS_MAX_SOCKETS_PER_USER", "4"),
        ],
    )
    .await;
    let replicas = &setup.cluster.replicas;
    let id = replicas[0].create_draft("alice", "Capped").await;
    setup.proxy.cut();

    // While Redis is down each replica admits its share: two of four.
    let mut held: Vec<Vec<WsClient>> = Vec::new();
    for replica in replicas {
        let mut sockets = Vec::new();
        for _ in 0..2 {
            sockets.push(replica.ws("alice", &id, None).await.0);
        }
        let mut third = replica.ws_raw("alice", &id, "").await;
        third.expect_closed("ws_limit", 1008).await;
        assert_eq!(
            replica
                .metric("ws_limit_rejections_total{scope=\"user\"}")
                .await,
            1.0
        );
        held.push(sockets);
    }

    // Redis returns: each replica re-registers the sockets it holds.
    setup.proxy.restore();
    eventually(|| async { setup.sockets_in_redis().await == 4 }).await;
    // The cap is counted in Redis again, not as a share: with replica 0's
    // two closed, replica 1 may hold all four...
    for ws in held.remove(0) {
        ws.close().await;
    }
    eventually(|| async { setup.sockets_in_redis().await == 2 }).await;
    let mut more = Vec::new();
    for _ in 0..2 {
        more.push(replicas[1].ws("alice", &id, None).await.0);
    }
    // ...and no replica admits a fifth.
    for replica in replicas {
        let mut fifth = replica.ws_raw("alice", &id, "").await;
        fifth.expect_closed("ws_limit", 1008).await;
    }
    assert_eq!(setup.sockets_in_redis().await, 4);
}

#[tokio::test]
async fn socket_caps_per_draft_and_global_hold_across_replicas() {
    let cluster = Cluster::start(
        3,
        base_url(),
        &[
            ("WS_LIMITS_ENABLED", "true"),
            ("WS_MAX_SOCKETS_PER_USER", "100"),
            ("WS_MAX_SOCKETS_PER_DRAFT", "2"),
            ("WS_MAX_SOCKETS_GLOBAL", "4"),
        ],
    )
    .await;
    let drafts = [
        cluster.replica(0).create_draft("alice", "A").await,
        cluster.replica(0).create_draft("alice", "B").await,
        cluster.replica(0).create_draft("alice", "C").await,
    ];
    // Two on draft A, on two replicas: a third on the last one is refused.
    let (a1, _) = cluster.replica(0).ws("alice", &drafts[0], None).await;
    let (_a2, _) = cluster.replica(1).ws("alice", &drafts[0], None).await;
    let mut refused = cluster.replica(2).ws_raw("alice", &drafts[0], "").await;
    refused.expect_closed("ws_limit", 1008).await;
    assert_eq!(
        cluster
            .replica(2)
            .metric("ws_limit_rejections_total{scope=\"draft\"}")
            .await,
        1.0
    );
    // Two on draft B fill the global cap of four: draft C is refused too.
    let (_b1, _) = cluster.replica(1).ws("alice", &drafts[1], None).await;
    let (_b2, _) = cluster.replica(2).ws("alice", &drafts[1], None).await;
    let mut refused = cluster.replica(0).ws_raw("alice", &drafts[2], "").await;
    refused.expect_closed("ws_limit", 1008).await;
    assert_eq!(
        cluster
            .replica(0)
            .metric("ws_limit_rejections_total{scope=\"global\"}")
            .await,
        1.0
    );
    // One closes on replica 0; its slot is free on replica 2 at once.
    a1.close().await;
    eventually(|| async {
        let mut ws = cluster.replica(2).ws_raw("alice", &drafts[2], "").await;
        ws.next_json().await["type"] == "ready"
    })
    .await;
}

/// Replicas whose every Postgres connection goes through one proxy.
async fn behind_postgres_proxy(n: usize) -> (Cluster, Proxy) {
    let mut cluster = Cluster::start(
        0,
        base_url(),
        &[
            ("DATABASE_CONNECT_TIMEOUT_SECONDS", "1"),
            ("DATABASE_QUERY_TIMEOUT_SECONDS", "2"),
        ],
    )
    .await;
    let proxy = Proxy::start(crate::common::pg::server_addr()).await;
    let via_proxy = cluster.db.url_via(Some(proxy.addr));
    for _ in 0..n {
        let replica = cluster
            .spawn_replica_with(&[("DATABASE_URL", via_proxy.clone())])
            .await;
        cluster.replicas.push(replica);
    }
    (cluster, proxy)
}

#[tokio::test]
async fn a_postgres_outage_in_cluster_mode_is_503s_nothing_partial_and_recovery() {
    let (cluster, proxy) = behind_postgres_proxy(2).await;
    let id = cluster.replica(0).create_draft("alice", "Fragile").await;
    assert_eq!(
        cluster.replica(0).append("alice", &id, "kept").await.status,
        201
    );
    let (mut watcher, ready) = cluster.replica(1).ws("alice", &id, None).await;
    assert_eq!(ready["seq"], 1);

    // Every statement of the append runs; its COMMIT never arrives.
    proxy.cut_before_next_commit();
    let cut = cluster.replica(0).append("alice", &id, "half").await;
    assert_eq!((cut.status, cut.code()), (503, "unavailable"));
    assert!(proxy.armed_commit_met());

    // Then Postgres is gone for everyone.
    proxy.cut();
    for replica in &cluster.replicas {
        let append = replica.append("alice", &id, "lost").await;
        assert_eq!((append.status, append.code()), (503, "unavailable"));
        let read = replica
            .get("alice", &format!("/v1/collab/drafts/{id}"))
            .await;
        assert_eq!((read.status, read.code()), (503, "unavailable"));
        assert_eq!(ready_status(replica, true).await, 503);
        assert_eq!(ready_status(replica, false).await, 503);
    }
    // Nothing of any failed request is in the database.
    for (table, rows) in [("drafts", 1), ("segments", 1), ("events", 1)] {
        assert_eq!(cluster.db.count(table).await, rows, "{table}");
    }
    let head: i64 = cluster
        .db
        .client()
        .await
        .query_one("SELECT seq FROM drafts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(head, 1);

    // It returns: the next append takes the next seq, and the watcher,
    // whose socket stayed open throughout, gets it with no gap.
    proxy.restore();
    for replica in &cluster.replicas {
        eventually(|| async { ready_status(replica, true).await == 200 }).await;
    }
    let after = cluster.replica(0).append("alice", &id, "after").await;
    assert_eq!((after.status, after.body["seq"].as_u64()), (201, Some(2)));
    assert_eq!(watcher.next_seqs(1).await, [2]);
}

#[tokio::test]
async fn what_a_replica_answered_201_survives_its_sigkill() {
    let mut cluster = Cluster::start(2, base_url(), &[]).await;
    let id = cluster.replica(0).create_draft("alice", "Durable").await;
    let mut answered = Vec::new();
    for n in 0..20 {
        let reply = cluster
            .replica(0)
            .append("alice", &id, &format!("{n}"))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        answered.push(reply.body["seq"].as_u64().unwrap());
    }
    // Killed the instant its last 201 arrived: no drain, no flush.
    cluster.replicas[0].kill().await;
    let survivor = cluster.replica(1);
    let segments = survivor
        .get(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments?limit=100"),
        )
        .await;
    assert_eq!(seqs_of(&segments), answered);
    let contents: Vec<&str> = segments.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["content"].as_str().unwrap())
        .collect();
    let sent: Vec<String> = (0..20).map(|n| n.to_string()).collect();
    assert_eq!(contents, sent);
    assert_eq!(survivor.head("alice", &id).await, 20);
}
