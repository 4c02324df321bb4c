//! The demo page in a real browser (headless Chromium, driven by
//! clients/typescript/e2e/browser.mjs) against three replicas behind a load
//! balancer, on another origin (CORS). While a writer appends without
//! pause, the replica the page is connected to is killed, then Redis is cut
//! until the page has seen more; the page's events must equal the server's
//! log exactly. The same page
//! served from an origin CORS does not allow cannot read the API. A
//! screenshot of the page is taken and must not be blank.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

    // Which replica holds the page's socket (the only socket there is).
    let mut holder = None;
    for (i, replica) in cluster.replicas.iter().enumerate() {
        if replica.metric("ws_active_connections").await == 1.0 {
            holder = Some(i);
        }
    }
    let holder = holder.expect("a replica holds the page's socket");
    let survivor = cluster.replicas[(holder + 1) % 3].api.clone();

    // A writer appends on a surviving replica all through what follows.
    let head = Arc::new(AtomicU64::new(1));
    let stop = CancellationToken::new();
    let writing = {
        let (survivor, draft, head, stop) =
            (survivor.clone(), draft.clone(), head.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let reply = survivor.append("alice", &draft, "segment").await;
                assert_eq!(reply.status, 201, "{}", reply.body);
                head.store(reply.body["seq"].as_u64().unwrap(), SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Wait for the page to see the writes made after this point: each phase
    // lasts until the writer wrote, and the page got, a few more events.
    let progress = |head: &AtomicU64| head.load(SeqCst) as usize + 3;
    page_events(&mut browser, 4).await;

    // The page's replica dies mid-stream: the page reconnects elsewhere.
    cluster.replicas[holder].kill().await;
    page_events(&mut browser, progress(&head)).await;

    // Redis gone for a while: the writes go on, and so does the page.
    redis.cut();
    page_events(&mut browser, progress(&head)).await;
    redis.restore();
    stop.cancel();
    writing.await.unwrap();

    let stored = survivor.event_seqs("alice", &draft).await;
    let seen = page_events(&mut browser, stored.len()).await;
    assert_eq!(seen, stored, "the page's events against the log");

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
