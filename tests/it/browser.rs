//! The demo page in a real browser (headless Chromium, driven by
//! clients/typescript/e2e/browser.mjs) against three replicas behind a load
//! balancer, on another origin (CORS). While a writer appends, the replica
//! the page is connected to is killed, then Redis is cut for a few seconds;
//! the page's events must equal the server's log exactly. The same page
//! served from an origin CORS does not allow cannot read the API. A
//! screenshot of the page is taken and must not be blank.

use crate::common::balancer::Balancer;
use crate::common::cluster::Cluster;
use crate::common::node::NodeScript;
use crate::common::proxy::Proxy;
use crate::common::redis::{server_addr as redis_addr, url_via as redis_url_via};

/// The demo page's server on a port of its own choosing, and its origin.
async fn demo_server() -> (NodeScript, String) {
    let mut server = NodeScript::start("demo/serve.mjs", &["0"]);
    let url = server.next_with("demo on").await;
    let origin = url.trim_end_matches('/').to_owned();
    (server, origin)
}

/// The seqs the page has delivered, once it has at least `n`.
async fn page_events(browser: &mut NodeScript, n: usize) -> Vec<u64> {
    browser.command(&format!("wait {n}")).await;
    serde_json::from_str(&browser.next_with("events").await).unwrap()
}

#[tokio::test]
async fn the_demo_page_shows_the_log_exactly_through_a_replica_kill_and_a_redis_cut() {
    let (_server, origin) = demo_server().await;
    let redis = Proxy::start(redis_addr()).await;
    let mut cluster = Cluster::start(
        3,
        redis_url_via(redis.addr),
        &[
            ("CORS_ALLOWED_ORIGINS", origin.as_str()),
            ("REDIS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let balancer = Balancer::start(cluster.replicas.iter().map(|r| r.addr).collect()).await;
    let writer = cluster.replica(0).api.clone();
    let draft = writer.create_draft("alice", "Written together").await;
    assert_eq!(
        writer.add("alice", &draft, "bob", "viewer").await.status,
        201
    );

    let page = format!(
        "{origin}/?api=http://{}&draft={draft}&user=bob#token={}",
        balancer.addr,
        writer.token("bob")
    );
    let mut browser = NodeScript::start("e2e/browser.mjs", &[&page]);
    browser.next_with("loaded").await;
    assert_eq!(page_events(&mut browser, 1).await, [1]);

    let append = |n: u64| {
        let writer = &writer;
        let draft = &draft;
        async move {
            let reply = writer.append("alice", draft, &format!("segment {n}")).await;
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
    };
    for n in 2..=4 {
        append(n).await;
    }
    assert_eq!(page_events(&mut browser, 4).await, [1, 2, 3, 4]);

    // Kill the replica holding the page's socket (the only socket there is).
    let mut holder = None;
    for (i, replica) in cluster.replicas.iter().enumerate() {
        if replica.metric("ws_active_connections").await == 1.0 {
            holder = Some(i);
        }
    }
    let holder = holder.expect("a replica holds the page's socket");
    cluster.replicas[holder].kill().await;
    let survivor = cluster.replicas[(holder + 1) % 3].api.clone();
    for n in 5..=7 {
        let reply = survivor
            .append("alice", &draft, &format!("segment {n}"))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    assert_eq!(
        page_events(&mut browser, 7).await,
        (1..=7).collect::<Vec<u64>>()
    );

    // Redis gone for a while: appends go on; the page still gets them.
    redis.cut();
    for n in 8..=10 {
        let reply = survivor
            .append("alice", &draft, &format!("segment {n}"))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let during = page_events(&mut browser, 10).await;
    redis.restore();
    assert_eq!(during, (1..=10).collect::<Vec<u64>>());

    let stored = survivor.event_seqs("alice", &draft).await;
    assert_eq!(during, stored, "the page's events against the log");

    // The same page from an origin CORS does not allow: the browser refuses
    // the API's answers, and the page says so.
    let (_other, other_origin) = demo_server().await;
    let refused_page = page.replace(&origin, &other_origin);
    let mut refused = NodeScript::start("e2e/browser.mjs", &[&refused_page]);
    refused.next_with("loaded").await;
    refused.command("error").await;
    let error = refused.next_with("error").await;
    assert!(
        error.contains("Failed to fetch"),
        "the page showed: {error}"
    );

    let shot = std::env::temp_dir().join(format!("collabd-demo-{}.png", uuid::Uuid::new_v4()));
    browser
        .command(&format!("screenshot {}", shot.display()))
        .await;
    let distinct: usize = browser.next_with("screenshot").await.parse().unwrap();
    let _ = std::fs::remove_file(&shot);
    assert!(
        distinct > 32,
        "the screenshot looks blank ({distinct} byte values)"
    );
}
