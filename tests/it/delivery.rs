//! Delivery at the edges: a fault, then silence. Three replica processes;
//! one append goes wrong (its commit reply is lost, or its replica cannot
//! reach Redis), and no later write comes to reveal the gap. Every watcher
//! on every replica must still get the event, once, in order.

use crate::common::cluster::Cluster;
use crate::common::pg::server_addr;
use crate::common::proxy::Proxy;
use crate::common::redis::{base_url, server_addr as redis_addr, url_via as redis_url_via};
use crate::common::*;
use serde_json::json;

/// Three replicas checking their rooms' heads every `head_check` seconds;
/// the third reaches Redis through a proxy the test can cut.
async fn with_replica_2_behind_a_redis_proxy(head_check: &str) -> (Cluster, Proxy) {
    let redis = Proxy::start(redis_addr()).await;
    let settings = [
        ("ROOM_HEAD_CHECK_SECONDS", head_check),
        ("REDIS_TIMEOUT_MS", "300"),
    ];
    let mut cluster = Cluster::start(2, base_url(), &settings).await;
    let replica = cluster
        .spawn_replica_with(&[("REDIS_URL", redis_url_via(redis.addr))])
        .await;
    cluster.replicas.push(replica);
    (cluster, redis)
}

/// The next frame that carries a seq, skipping any other.
async fn next_seq(ws: &mut WsClient) -> u64 {
    loop {
        let frame = ws.next_json().await;
        if let Some(seq) = frame["seq"].as_u64() {
            if frame["type"] != "ready" {
                return seq;
            }
        }
    }
}

/// Each watcher got `seq` once: the next event any of them reads, after one
/// more append, is `seq + 1`.
async fn then_exactly_once(cluster: &Cluster, draft: &str, watchers: &mut [WsClient], seq: u64) {
    let reply = cluster.replica(0).append("alice", draft, "after").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    for (i, ws) in watchers.iter_mut().enumerate() {
        assert_eq!(next_seq(ws).await, seq + 1, "watcher {i} saw a repeat");
    }
}

#[tokio::test]
async fn a_commit_whose_reply_was_lost_reaches_every_watcher_when_the_retry_replays_it() {
    // The periodic head check is out of the way: the replay must publish.
    let postgres = Proxy::start(server_addr()).await;
    let mut cluster = Cluster::start(2, base_url(), &[("ROOM_HEAD_CHECK_SECONDS", "300")]).await;
    let via_proxy = cluster.db.url_via(Some(postgres.addr));
    let replica = cluster
        .spawn_replica_with(&[("DATABASE_URL", via_proxy)])
        .await;
    cluster.replicas.push(replica);
    let draft = cluster.replica(0).create_draft("alice", "Lost reply").await;
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(cluster.replica(i).ws("alice", &draft, None).await.0);
    }

    postgres.lose_next_commit_reply();
    let writer = cluster.replica(2);
    let path = format!("/v1/collab/drafts/{draft}/segments");
    let body = json!({ "content": "committed, unheard", "idempotency_key": "k-lost" });
    let first = writer.post("alice", &path, body.clone()).await;
    assert!(postgres.armed_commit_met(), "the COMMIT never went through");
    assert_eq!(first.status, 503, "{}", first.body);
    let retry = writer.post("alice", &path, body).await;
    assert_eq!(retry.status, 200, "the retry replays: {}", retry.body);
    assert_eq!(retry.body["seq"], 1);

    // Silence: no other write. Every watcher gets seq 1.
    for (i, ws) in watchers.iter_mut().enumerate() {
        assert_eq!(next_seq(ws).await, 1, "watcher on replica {i}");
    }
    then_exactly_once(&cluster, &draft, &mut watchers, 1).await;
}

#[tokio::test]
async fn an_append_on_a_replica_cut_from_redis_reaches_every_watcher_though_the_draft_goes_quiet() {
    let (cluster, redis) = with_replica_2_behind_a_redis_proxy("1").await;
    let draft = cluster.replica(0).create_draft("alice", "Cut").await;
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(cluster.replica(i).ws("alice", &draft, None).await.0);
    }

    redis.cut();
    // Postgres is fine: the append commits; its publish fails.
    let reply = cluster
        .replica(2)
        .append("alice", &draft, "unpublished")
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    // Silence, and Redis still cut: the other replicas find it in the store.
    for (i, ws) in watchers.iter_mut().enumerate() {
        assert_eq!(next_seq(ws).await, 1, "watcher on replica {i}");
    }
    assert!(
        cluster
            .replica(0)
            .metric("fanout_catchups_total{cause=\"head_check\"}")
            .await
            + cluster
                .replica(1)
                .metric("fanout_catchups_total{cause=\"head_check\"}")
                .await
            >= 1.0
    );
    redis.restore();
    then_exactly_once(&cluster, &draft, &mut watchers, 1).await;
}

#[tokio::test]
async fn a_client_resuming_on_a_replica_whose_room_is_behind_gets_the_stores_head() {
    // No head check during the test: only the join can reveal the event.
    let (cluster, redis) = with_replica_2_behind_a_redis_proxy("300").await;
    let draft = cluster.replica(0).create_draft("alice", "Rejoin").await;
    // Keeps replica 0's room alive, with its head cached at 0.
    let (mut staying, _) = cluster.replica(0).ws("alice", &draft, None).await;

    redis.cut();
    let reply = cluster.replica(2).append("alice", &draft, "missed").await;
    assert_eq!(reply.status, 201, "{}", reply.body);

    // A client that saw nothing resumes on replica 0.
    let (mut resumed, ready) = cluster.replica(0).ws("alice", &draft, Some(0)).await;
    assert_eq!(ready["seq"], 1, "ready carries the store's head");
    assert_eq!(next_seq(&mut resumed).await, 1);
    // The watcher already in the room gets it too, when the room caught up.
    assert_eq!(next_seq(&mut staying).await, 1);
    assert!(
        cluster
            .replica(0)
            .metric("fanout_catchups_total{cause=\"join\"}")
            .await
            >= 1.0
    );
    redis.restore();
    then_exactly_once(&cluster, &draft, &mut [staying, resumed], 1).await;
}
