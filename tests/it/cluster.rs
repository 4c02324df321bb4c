//! The cluster promises, proven with three real replica processes sharing a
//! Postgres schema and a Redis prefix: every watcher on every replica sees
//! every event once and in order; socket caps and rate limits hold
//! cluster-wide, and a SIGKILLed replica stops counting within its lease TTL;
//! a Redis outage mid-stream loses nothing; a `SCRIPT FLUSH` costs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::cluster::Cluster;
use crate::common::otlp::{Collector, ReceivedPoint};
use crate::common::proxy::Proxy;
use crate::common::redis::{base_url, PrivateRedis};
use crate::common::*;
use collabd::adapters::redis::leases::active_rooms;
use collabd::adapters::redis::{pool as redis_pool, RedisSettings};
use fred::interfaces::LuaInterface;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn rooms(cluster: &Cluster) -> u64 {
    let settings = RedisSettings {
        url: cluster.redis_url.clone(),
        prefix: cluster.prefix.prefix.clone(),
        pool_size: 1,
        timeout: Duration::from_secs(5),
    };
    active_rooms(
        &redis_pool(&settings).await.unwrap(),
        &cluster.prefix.prefix,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn watchers_on_every_replica_see_every_event_once_in_order() {
    let cluster = Arc::new(Cluster::start(3, base_url(), &[]).await);
    let id = cluster.replica(0).create_draft("alice", "Everywhere").await;
    let mut watchers = Vec::new();
    for i in 0..6 {
        watchers.push(cluster.replica(i).ws("alice", &id, None).await.0);
    }
    // Writers on all three replicas at once.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (cluster, id) = (cluster.clone(), id.clone());
            tokio::spawn(async move {
                for n in 0..20 {
                    let reply = cluster
                        .replica(w)
                        .append("alice", &id, &format!("{w}-{n}"))
                        .await;
                    assert_eq!(reply.status, 201, "{}", reply.body);
                }
            })
        })
        .collect();
    let expected: Vec<u64> = (1..=60).collect();
    let seen = futures_util::future::join_all(watchers.iter_mut().map(|w| w.next_seqs(60))).await;
    for writer in writers {
        writer.await.unwrap();
    }
    for (i, seqs) in seen.into_iter().enumerate() {
        assert_eq!(seqs, expected, "watcher {i} on replica {}", i % 3);
    }
    // Each replica received the other two's events over pub/sub, and timed
    // how long each took to arrive.
    for replica in &cluster.replicas {
        assert!(replica.metric("fanout_lag_seconds_count").await >= 40.0);
    }
    // Resuming on another replica replays from the shared log.
    let (mut late, ready) = cluster.replica(2).ws("alice", &id, Some(55)).await;
    assert_eq!(ready["seq"], 60);
    assert_eq!(late.next_seqs(5).await, [56, 57, 58, 59, 60]);
}

#[tokio::test]
async fn the_socket_cap_holds_cluster_wide_and_a_killed_replica_stops_counting() {
    let mut cluster = Cluster::start(
        3,
        base_url(),
        &[
            ("WS_LIMITS_ENABLED", "true"),
            ("WS_MAX_SOCKETS_PER_USER", "3"),
            ("WS_LEASE_TTL_SECONDS", "3"),
        ],
    )
    .await;
    let one = cluster.replica(0).create_draft("alice", "One").await;
    let two = cluster.replica(0).create_draft("alice", "Two").await;
    let (_a, _) = cluster.replica(0).ws("alice", &one, None).await;
    let (_b, _) = cluster.replica(2).ws("alice", &one, None).await;
    let (_c, _) = cluster.replica(2).ws("alice", &two, None).await;
    assert_eq!(rooms(&cluster).await, 2);
    for i in 0..3 {
        let mut refused = cluster.replica(i).ws_raw("alice", &one, "").await;
        refused.expect_closed("ws_limit", 1008).await;
    }

    // Replica 2 dies holding two of alice's sockets; within the lease TTL
    // they stop counting, and so does the room only it served.
    let killed = Instant::now();
    cluster.replicas[2].kill().await;
    let survivor = &cluster.replicas[0];
    eventually(|| async {
        let mut ws = survivor.ws_raw("alice", &one, "").await;
        ws.next_json().await["type"] == "ready"
    })
    .await;
    // The lease was last renewed before the kill, so it lapses within the
    // TTL of it; the margin is the polling's (one refused socket per try,
    // on two cores shared with the other replicas).
    assert!(
        killed.elapsed() < Duration::from_millis(3_000 + 1_000),
        "took {:?} where the lease TTL is 3 s",
        killed.elapsed()
    );
    eventually(|| async { rooms(&cluster).await == 1 }).await;
}

/// (live incarnations, sockets recorded under them) in Redis.
async fn lease_records(cluster: &Cluster) -> (i64, i64) {
    (
        cluster.leases().await.len() as i64,
        cluster.sockets_in_redis().await,
    )
}

#[tokio::test]
async fn a_replica_whose_lease_lapsed_comes_back_without_stale_counts() {
    let cluster = Cluster::start(
        2,
        base_url(),
        &[
            ("WS_LIMITS_ENABLED", "true"),
            ("WS_MAX_SOCKETS_PER_USER", "2"),
            ("WS_LEASE_TTL_SECONDS", "2"),
        ],
    )
    .await;
    let id = cluster.replica(0).create_draft("alice", "Paused").await;
    let (_a, _) = cluster.replicas[1].ws("alice", &id, None).await;
    let (b, _) = cluster.replicas[1].ws("alice", &id, None).await;
    let mut refused = cluster.replicas[0].ws_raw("alice", &id, "").await;
    refused.expect_closed("ws_limit", 1008).await;

    // Frozen, replica 1 cannot renew: its two sockets stop counting.
    cluster.replicas[1].pause();
    let (_c, _) = within(async {
        loop {
            let mut ws = cluster.replicas[0].ws_raw("alice", &id, "").await;
            let first = ws.next_json().await;
            if first["type"] == "ready" {
                return (ws, first);
            }
        }
    })
    .await;
    // One socket closes while its replica is frozen.
    b.close().await;
    cluster.replicas[1].resume();

    // Back, it registers a new incarnation with the one socket it still
    // holds: the old incarnation and the closed socket never count again.
    eventually(|| async { lease_records(&cluster).await == (2, 2) }).await;
    let mut over = cluster.replicas[0].ws_raw("alice", &id, "").await;
    over.expect_closed("ws_limit", 1008).await;
}

#[tokio::test]
async fn the_rate_limit_holds_cluster_wide() {
    let cluster = Cluster::start(
        3,
        base_url(),
        &[
            ("RATE_LIMIT_ENABLED", "true"),
            ("RATE_LIMIT_BURST_DEFAULT", "4"),
            ("RATE_LIMIT_PER_MINUTE_DEFAULT", "60"),
        ],
    )
    .await;
    let started = Instant::now();
    let mut allowed = 0u64;
    let mut limited = 0u64;
    for round in 0..15 {
        let replies = futures_util::future::join_all(
            (0..3).map(|i| cluster.replica(round + i).get("alice", "/v1/collab/drafts")),
        )
        .await;
        for reply in replies {
            match reply.status {
                200 => allowed += 1,
                429 => limited += 1,
                other => panic!("unexpected status {other}: {}", reply.body),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // burst + 1 at once, then one per second: what a single server admits.
    let ceiling = 5 + elapsed.ceil() as u64;
    assert!(allowed >= 5, "allowed only {allowed}");
    assert!(
        allowed <= ceiling,
        "allowed {allowed} > {ceiling} in {elapsed:.2}s"
    );
    assert_eq!(allowed + limited, 45);
}

#[tokio::test]
async fn a_redis_outage_mid_stream_loses_no_event_and_causes_no_5xx() {
    let redis = PrivateRedis::start().await;
    let proxy = Proxy::start(redis.addr).await;
    let cluster = Arc::new(
        Cluster::start(
            3,
            format!("redis://{}/0", proxy.addr),
            &[
                ("RATE_LIMIT_ENABLED", "true"),
                ("RATE_LIMIT_BURST_DEFAULT", "1000"),
                ("RATE_LIMIT_BURST_MUTATION", "1000"),
                ("REDIS_TIMEOUT_MS", "300"),
            ],
        )
        .await,
    );
    let id = cluster.replica(0).create_draft("alice", "Outage").await;
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(cluster.replica(i).ws("alice", &id, None).await.0);
    }
    let total = 45u64;
    for n in 0..total {
        if n == 15 {
            proxy.cut();
        }
        if n == 30 {
            proxy.restore();
        }
        let reply = cluster
            .replica(n as usize)
            .append("alice", &id, &format!("{n}"))
            .await;
        assert_eq!(reply.status, 201, "append {n}: {}", reply.body);
    }
    // Every watcher, on every replica, ends with every event once, in order.
    let expected: Vec<u64> = (1..=total).collect();
    for (i, watcher) in watchers.iter_mut().enumerate() {
        assert_eq!(
            watcher.next_seqs(total as usize).await,
            expected,
            "watcher on replica {i}"
        );
    }
}

#[tokio::test]
async fn script_flush_mid_load_causes_no_error_and_no_fallback() {
    let redis = PrivateRedis::start().await;
    let cluster = Cluster::start(
        2,
        redis.url(),
        &[
            ("RATE_LIMIT_ENABLED", "true"),
            ("RATE_LIMIT_BURST_DEFAULT", "1000"),
            ("RATE_LIMIT_BURST_MUTATION", "1000"),
            ("WS_LIMITS_ENABLED", "true"),
        ],
    )
    .await;
    let id = cluster.replica(0).create_draft("alice", "Flush").await;
    let admin = crate::common::redis::client(&redis.url()).await;
    for n in 0..30 {
        if n % 10 == 5 {
            admin.script_flush(false).await.unwrap();
        }
        let replica = cluster.replica(n);
        assert_eq!(replica.append("alice", &id, "x").await.status, 201);
        assert_eq!(replica.get("alice", "/v1/collab/drafts").await.status, 200);
        if n % 10 == 6 {
            let (ws, _) = replica.ws("alice", &id, None).await;
            ws.close().await;
        }
    }
    // Every call reloaded its script and ran in Redis: none fell back to the
    // local limiter, which would have answered all the same.
    for replica in &cluster.replicas {
        assert_eq!(
            replica
                .metric("ratelimit_fallback_total{mode=\"local\"}")
                .await,
            0.0
        );
    }
}

#[tokio::test]
async fn one_replica_reports_the_state_gauges_and_every_one_the_rooms() {
    let cluster = Cluster::start(3, base_url(), &[("STATE_METRICS_INTERVAL_SECONDS", "1")]).await;
    let first = cluster
        .replica(0)
        .create_draft("alice", "Counted once")
        .await;
    cluster
        .replica(1)
        .create_draft("alice", "Counted once too")
        .await;
    let (_ws, _) = cluster.replica(2).ws("alice", &first, None).await;
    eventually(|| async {
        let mut reports = Vec::new();
        for replica in &cluster.replicas {
            reports.push(replica.metric("collab_drafts").await);
        }
        reports.iter().sum::<f64>() == 2.0 && reports.iter().filter(|r| **r > 0.0).count() == 1
    })
    .await;
    // A young replica's CPU time is a fraction of a second, and reported as
    // one (a whole-number counter would still say 0).
    let cpu = cluster.replica(0).metric("process_cpu_seconds_total").await;
    assert!(cpu > 0.0 && cpu < 60.0, "process_cpu_seconds_total {cpu}");
    // Computed at scrape time, from the leases and a ping: read until they
    // agree rather than once.
    for replica in &cluster.replicas {
        eventually(|| async {
            replica.metric("drafts_active_rooms").await == 1.0
                && replica.metric("health_status{component=\"redis\"}").await == 1.0
        })
        .await;
    }
}

#[tokio::test]
async fn a_request_on_one_replica_and_its_delivery_on_another_share_a_trace() {
    // The collector is unreachable: tracing must neither block nor fail requests.
    let cluster = Cluster::start(
        2,
        base_url(),
        &[
            ("OTEL_ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("LOG_LEVEL", "info,collabd=debug"),
        ],
    )
    .await;
    let id = cluster.replicas[0].create_draft("alice", "Traced").await;
    let (mut watcher, _) = cluster.replicas[1].ws("alice", &id, None).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = cluster.replicas[0]
        .post_with(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments"),
            &[
                ("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01")),
                ("x-request-id", "traced-append"),
            ],
            serde_json::json!({ "content": "across replicas" }),
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(watcher.next_seqs(1).await, [1]);

    // Every line of the request carries its ids, however deep the span it
    // was written in. Written in the service's span, inside the request's.
    let committed = cluster.replicas[0]
        .log_line(|l| {
            l["message"] == "event committed" && l["span"]["request_id"] == "traced-append"
        })
        .await;
    assert_eq!(committed["span"]["trace_id"], trace_id);
    assert_ne!(committed["span"]["name"], "http");
    // And so is every line of that request, whatever its span.
    cluster.replicas[0]
        .log_line(|l| {
            l["message"] == "request completed" && l["span"]["request_id"] == "traced-append"
        })
        .await;
    let lines: Vec<serde_json::Value> = cluster.replicas[0]
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["span"]["request_id"] == "traced-append")
        .collect();
    let names: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l["span"]["name"].as_str())
        .collect();
    assert!(names.len() >= 2, "only spans {names:?}");
    for line in &lines {
        assert_eq!(line["span"]["trace_id"], trace_id, "{line}");
        assert!(line["span"]["span_id"].is_string(), "{line}");
        assert_eq!(line["span"]["user_id"], "alice", "{line}");
    }

    // A WebSocket session's lines carry its connection, draft and upgrade.
    let (ws, ready) = cluster.replicas[0].ws("alice", &id, None).await;
    let connection = ready["connection_id"].as_str().unwrap().to_owned();
    ws.close().await;
    let closed = cluster.replicas[0]
        .log_line(|l| {
            l["span"]["connection_id"] == connection.as_str() && l["message"] == "socket closed"
        })
        .await;
    assert_eq!(closed["span"]["draft_id"], id.as_str());
    assert!(closed["span"]["request_id"].is_string());
    assert!(closed["span"]["trace_id"].is_string());

    let request = cluster.replicas[0]
        .log_line(|l| {
            l["message"] == "request completed" && l["span"]["request_id"] == "traced-append"
        })
        .await;
    assert_eq!(request["span"]["trace_id"], trace_id);
    assert!(request["span"]["span_id"]
        .as_str()
        .is_some_and(|s| s.len() == 16));
    let delivery = cluster.replicas[1]
        .log_line(|l| l["message"] == "event received from fanout" && l["span"]["seq"] == 1)
        .await;
    assert_eq!(delivery["span"]["trace_id"], trace_id);

    // Tokens (every JWT starts "eyJ") and the secret never reach the logs.
    for replica in &cluster.replicas {
        for line in replica.logs.lock().unwrap().iter() {
            assert!(!line.contains("eyJ"), "a token was logged: {line}");
            assert!(
                !line.contains(crate::common::cluster::SECRET),
                "the secret was logged: {line}"
            );
        }
    }

    // Every field of every line, at the top or in `span`, is one the
    // operator's table in docs/OBSERVABILITY.md explains.
    let documented = crate::common::logfields::documented();
    for replica in &cluster.replicas {
        for line in replica.logs.lock().unwrap().iter() {
            let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) else {
                panic!("not a JSON line: {line}");
            };
            let inner = fields.get("span").and_then(|s| s.as_object());
            let keys = fields
                .keys()
                .chain(inner.into_iter().flat_map(|s| s.keys()));
            for key in keys {
                assert!(documented.contains(key), "{key} is not documented: {line}");
            }
        }
    }
}

#[tokio::test]
async fn a_draining_replica_releases_its_sockets_leases_before_it_exits() {
    // A lease TTL no test waits out: only the drain can free these slots.
    let mut cluster = Cluster::start(
        2,
        base_url(),
        &[
            ("WS_LIMITS_ENABLED", "true"),
            ("WS_MAX_SOCKETS_PER_USER", "2"),
            ("WS_LEASE_TTL_SECONDS", "120"),
        ],
    )
    .await;
    let id = cluster.replica(0).create_draft("alice", "Drained").await;
    let (mut a, _) = cluster.replica(0).ws("alice", &id, None).await;
    let (mut b, _) = cluster.replica(0).ws("alice", &id, None).await;
    let mut refused = cluster.replica(1).ws_raw("alice", &id, "").await;
    refused.expect_closed("ws_limit", 1008).await;

    let terminating = {
        let mut replica = cluster.replicas.remove(0);
        tokio::spawn(async move { replica.terminate().await })
    };
    a.expect_closed("shutdown", 1001).await;
    b.expect_closed("shutdown", 1001).await;
    assert!(within(terminating).await.unwrap().success());
    // Both slots are free at once on the survivor, long before the TTL.
    let survivor = cluster.replica(0);
    let (_c, _) = survivor.ws("alice", &id, None).await;
    let (_d, _) = survivor.ws("alice", &id, None).await;
    assert_eq!(lease_records(&cluster).await.1, 2);
}

/// `OTEL_METRICS_EXPORTER=otlp`: each replica pushes what its /metrics
/// serves, every family and the figures of a real append, under its own
/// `service.instance.id`; the last push, on exit, carries the drain.
#[tokio::test]
async fn metrics_are_pushed_over_otlp_as_the_scrape_serves_them() {
    let collector = Collector::start().await;
    let endpoint = format!("{}/v1/metrics", collector.url());
    let mut cluster = Cluster::start(
        2,
        base_url(),
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    )
    .await;
    let id = cluster.replicas[0].create_draft("alice", "Pushed").await;
    let (mut watcher, _) = cluster.replicas[1].ws("alice", &id, None).await;
    let reply = cluster.replicas[0]
        .post(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments"),
            serde_json::json!({ "content": "counted" }),
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(watcher.next_seqs(1).await, [1]);

    // Every family either replica serves arrives, from two processes, and
    // nothing the scrape does not serve.
    let mut scraped = BTreeSet::new();
    for replica in &cluster.replicas {
        scraped.extend(family_names(&replica.scrape().await));
    }
    eventually(|| async {
        let points = collector.points();
        let pushed: BTreeSet<String> = points.iter().map(|p| p.metric.clone()).collect();
        let instances: BTreeSet<&str> = points.iter().map(|p| p.instance.as_str()).collect();
        pushed == scraped && instances.len() == 2
    })
    .await;
    let latest = |metric: &str, pred: &dyn Fn(&ReceivedPoint) -> bool| -> f64 {
        // Cumulative: the newest point of each instance is its total.
        let points = collector.points();
        let mut newest: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for p in points.iter().filter(|p| p.metric == metric && pred(p)) {
            let slot = newest
                .entry(p.instance.clone())
                .or_insert((p.push, p.value));
            if p.push >= slot.0 {
                *slot = (p.push, p.value);
            }
        }
        newest.values().map(|(_, v)| v).sum()
    };
    // The figures of the append and the open socket, once pushes made
    // after them have arrived from both replicas.
    let append_route = |p: &ReceivedPoint| {
        p.attribute("route") == Some("/v1/collab/drafts/{id}/segments")
            && p.attribute("method") == Some("POST")
    };
    eventually(|| async {
        let appends = latest("collab_mutations_total", &|p| {
            p.kind == "sum" && p.attribute("type") == Some("append_segment")
        });
        let timed = latest("http_request_duration_seconds", &|p| {
            p.kind == "histogram" && append_route(p)
        });
        let sockets = latest("ws_active_connections", &|p| p.kind == "gauge");
        (appends, timed, sockets) == (1.0, 1.0, 1.0)
    })
    .await;
    let bounds = collector
        .points()
        .into_iter()
        .find(|p| p.metric == "http_request_duration_seconds")
        .unwrap()
        .bounds;
    assert_eq!(bounds.first(), Some(&0.0005), "{bounds:?}");

    // The push on exit carries the drain: the watcher told `shutdown`.
    let terminating = {
        let mut replica = cluster.replicas.remove(1);
        tokio::spawn(async move { replica.terminate().await })
    };
    watcher.expect_closed("shutdown", 1001).await;
    assert!(within(terminating).await.unwrap().success());
    let shutdowns = latest("ws_disconnects_total", &|p| {
        p.attribute("reason") == Some("shutdown")
    });
    assert_eq!(shutdowns, 1.0);
    assert!(cluster.replicas[0].terminate().await.success());
}

#[tokio::test]
async fn spans_reach_the_collector_with_their_kinds_and_are_flushed_on_exit() {
    let collector = Collector::start().await;
    let endpoint = collector.url();
    // The batch exporter would wait ten minutes: only the flush on exit
    // can deliver these spans within the test.
    // Background loops tick often here (a lease renewal every 667 ms, the
    // gauges and head checks every second): none may become a trace.
    let mut cluster = Cluster::start(
        2,
        base_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("SHUTDOWN_DRAIN_DELAY_SECONDS", "2"),
            ("WS_LEASE_TTL_SECONDS", "2"),
            ("STATE_METRICS_INTERVAL_SECONDS", "1"),
            ("ROOM_HEAD_CHECK_SECONDS", "1"),
        ],
    )
    .await;
    let id = cluster.replicas[0].create_draft("alice", "Traced").await;
    let (mut watcher, _) = cluster.replicas[1].ws("alice", &id, None).await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let reply = cluster.replicas[0]
        .post_with(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments"),
            &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
            serde_json::json!({ "content": "traced" }),
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(watcher.next_seqs(1).await, [1]);
    watcher.close().await;
    // Let the replicas renew their leases a few times meanwhile.
    cluster.until_every_lease_renewed(3).await;
    assert!(collector.spans().is_empty(), "exported before the exit");

    // Draining, a replica answers /readyz with a 503: a server error, so
    // its span is marked failed.
    cluster.replicas[0].begin_drain();
    let readyz = cluster.replicas[0].url("/readyz");
    let http = cluster.replicas[0].http.clone();
    eventually(|| async {
        http.get(&readyz)
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    for replica in &mut cluster.replicas {
        assert!(replica.terminate().await.success());
    }
    let spans = collector.spans();
    let ticks: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.name == "background"
                || matches!(s.attribute("op"), Some("renew" | "register"))
                || s.name == "store counts"
        })
        .collect();
    assert!(ticks.is_empty(), "background work exported: {ticks:?}");
    let traced: Vec<(String, SpanKind)> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| (s.name, s.kind))
        .collect();
    for (name, kind) in [
        ("POST /v1/collab/drafts/{id}/segments", SpanKind::Server),
        ("mutate", SpanKind::Client),
        ("fanout publish", SpanKind::Producer),
        ("fanout deliver", SpanKind::Consumer),
    ] {
        assert!(
            traced.contains(&(name.to_owned(), kind)),
            "no {name} span of kind {kind:?} in the caller's trace: {traced:?}"
        );
    }
    // With the OpenTelemetry semantic conventions' attributes.
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == trace_id && s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let server = named("POST /v1/collab/drafts/{id}/segments");
    assert_eq!(server.attribute("http.request.method"), Some("POST"));
    assert_eq!(
        server.attribute("http.route"),
        Some("/v1/collab/drafts/{id}/segments")
    );
    assert!(!server.failed);
    let store = named("mutate");
    assert_eq!(store.attribute("db.system.name"), Some("postgresql"));
    assert_eq!(store.attribute("db.operation.name"), Some("mutate"));
    let publish = named("fanout publish");
    assert_eq!(publish.attribute("messaging.system"), Some("redis"));
    assert_eq!(publish.attribute("messaging.operation.type"), Some("send"));
    // The 503 while draining: failed, with the error's code as its type.
    let refused = spans
        .iter()
        .find(|s| s.name == "GET /readyz" && s.failed)
        .unwrap_or_else(|| panic!("no failed GET /readyz span"));
    assert_eq!(refused.attribute("error.type"), Some("unavailable"));
}

/// Promise 5: at every level, even `trace`, no segment content, no
/// idempotency key and no token reaches a log line, in plain text or hex.
#[tokio::test]
async fn no_content_key_or_token_reaches_the_logs_even_at_trace_level() {
    // Trace everywhere, and the directives that would beat a plain target
    // rule: a span's name, a more specific target.
    let mut cluster = Cluster::start(
        2,
        base_url(),
        &[(
            "LOG_LEVEL",
            "trace,[http]=trace,[ws]=trace,tokio_postgres::query=trace,tungstenite::protocol=trace",
        )],
    )
    .await;
    let content = "content-that-stays-private-7f3a";
    let key = "key-that-stays-private-9c1e";
    let (writer, reader) = (&cluster.replicas[0], &cluster.replicas[1]);
    let browser_token = reader.token("bob");
    let id = writer.create_draft("alice", "Private").await;
    assert_eq!(writer.add("alice", &id, "bob", "viewer").await.status, 201);
    let (mut watcher, _) = reader.ws("bob", &id, None).await;
    let path = format!("/v1/collab/drafts/{id}/segments");
    let body = serde_json::json!({ "content": content, "idempotency_key": key });
    assert_eq!(writer.post("alice", &path, body.clone()).await.status, 201);
    assert_eq!(writer.post("alice", &path, body).await.status, 200);
    assert_eq!(
        watcher.next_json().await["data"]["segment"]["content"],
        content
    );
    assert_eq!(reader.get("bob", &path).await.status, 200);
    // Refused input is not logged either.
    let refused = writer
        .post(
            "alice",
            &path,
            serde_json::json!({ "content": format!("{content}\u{0}"), "idempotency_key": key }),
        )
        .await;
    assert_eq!(refused.status, 400);
    watcher.close().await;
    // A browser's socket, authenticated in the query string.
    let query = format!("?access_token={browser_token}");
    let request = reader.ws_url(&id, &query).into_client_request().unwrap();
    let mut browser = WsClient::connect(request).await;
    assert_eq!(browser.next_json().await["type"], "ready");
    browser.close().await;
    // Every line written, to the last: the replicas have exited.
    for replica in &mut cluster.replicas {
        assert!(replica.terminate().await.success());
    }

    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let secrets = [
        content.to_owned(),
        hex(content),
        key.to_owned(),
        hex(key),
        "eyJ".to_owned(),
        crate::common::cluster::SECRET.to_owned(),
    ];
    let mut lines = 0;
    for replica in &cluster.replicas {
        for line in replica.logs.lock().unwrap().iter() {
            lines += 1;
            for secret in &secrets {
                assert!(!line.contains(secret.as_str()), "{secret} logged: {line}");
            }
        }
    }
    // Trace level was on: the replicas said a great deal, just not that.
    assert!(lines > 200, "only {lines} lines at trace level");
}

/// The drain, watched from outside: readiness fails first on both
/// listeners while requests and open sockets are still served through the
/// drain delay; then the socket gets its 1001; the process exits cleanly.
#[tokio::test]
async fn a_drain_fails_readiness_first_and_serves_until_the_delay_is_over() {
    // Long enough for the checks below on two busy cores.
    let mut cluster =
        Cluster::start(1, base_url(), &[("SHUTDOWN_DRAIN_DELAY_SECONDS", "10")]).await;
    let replica = &cluster.replicas[0];
    let id = replica.create_draft("alice", "Draining").await;
    let (mut ws, _) = replica.ws("alice", &id, None).await;
    let ready = |url: String| {
        let http = replica.http.clone();
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    let public = replica.url("/readyz");
    let management = format!("http://{}/readyz", replica.metrics_addr);
    assert_eq!(ready(public.clone()).await.unwrap(), 200);

    replica.begin_drain();
    eventually(|| async { ready(public.clone()).await.ok() == Some(503) }).await;
    assert_eq!(ready(management.clone()).await.unwrap(), 503);
    // Still served meanwhile: a write, its delivery to the open socket, and
    // the metrics; only a new socket is refused.
    assert_eq!(replica.append("alice", &id, "during").await.status, 201);
    assert_eq!(ws.next_seqs(1).await, [1]);
    let metrics = replica
        .http
        .get(format!("http://{}/metrics", replica.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let mut refused = replica.ws_url(&id, "").into_client_request().unwrap();
    refused.headers_mut().insert(
        "authorization",
        format!("Bearer {}", replica.token("alice"))
            .parse()
            .unwrap(),
    );
    match WsClient::try_connect(refused).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        Err(other) => panic!("refused with something other than a 503: {other}"),
        Ok(_) => panic!("a new socket was accepted while draining"),
    }
    // Then the goodbye, the public listener gone, and a clean exit.
    ws.expect_closed("shutdown", 1001).await;
    let public_addr = replica.addr;
    eventually(|| async { tokio::net::TcpStream::connect(public_addr).await.is_err() }).await;
    assert!(cluster.replicas[0].terminate().await.success());
}

/// docs/CLUSTER.md: every key collabd writes expires by itself, so a
/// deployment whose replicas all died leaves nothing behind in Redis.
#[tokio::test]
async fn a_deployment_whose_replicas_all_died_leaves_nothing_in_redis() {
    let mut cluster = Cluster::start(
        1,
        base_url(),
        &[
            ("WS_LIMITS_ENABLED", "true"),
            ("WS_LEASE_TTL_SECONDS", "2"),
            ("RATE_LIMIT_ENABLED", "true"),
            ("STATE_METRICS_INTERVAL_SECONDS", "1"),
        ],
    )
    .await;
    let id = cluster.replica(0).create_draft("alice", "Left").await;
    let (_ws, _) = cluster.replica(0).ws("alice", &id, None).await;
    let prefix = cluster.prefix.prefix.clone();
    let keys = || crate::common::redis::keys_under(&cluster.redis_url, &prefix);
    // A lease, a socket record, a rate-limit bucket and the gauges' leader.
    eventually(|| async {
        let keys = keys().await;
        ["incarnations", ":sockets", "rl:", "leader:"]
            .iter()
            .all(|kind| keys.iter().any(|k| k.contains(kind)))
    })
    .await;
    // SIGKILL: nobody deletes anything; it all expires.
    cluster.replicas[0].kill().await;
    eventually(|| async { keys().await.is_empty() }).await;
}
