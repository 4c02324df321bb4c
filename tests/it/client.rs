//! The TypeScript client (clients/typescript, built by scripts/test) against
//! real replicas: it carries promise 2 past the socket. A Node process
//! follows a draft through a proxy the test cuts and restores, while events
//! are written on another replica; what the client delivers must be the
//! server's log exactly, and an append through it must happen once.

use crate::common::cluster::Cluster;
use crate::common::node::NodeScript;
use crate::common::proxy::Proxy;
use crate::common::redis::base_url;

/// The client following a draft, and the events it delivered so far.
struct Follower {
    script: NodeScript,
    events: Vec<u64>,
}

impl Follower {
    fn start(base_url: &str, draft: &str, token: &str) -> Follower {
        Follower {
            script: NodeScript::start("e2e/follow.mjs", &[base_url, draft, token]),
            events: Vec::new(),
        }
    }

    /// Reads lines until one equals `expected` (recording events on the way).
    async fn until(&mut self, expected: &str) {
        loop {
            let line = self.script.next_line().await;
            if let Some(seq) = line.strip_prefix("event ") {
                self.events.push(seq.parse().unwrap());
            }
            if line == expected {
                return;
            }
        }
    }

    /// Waits for event `seq` unless it came already.
    async fn until_event(&mut self, seq: u64) {
        if !self.events.contains(&seq) {
            self.until(&format!("event {seq}")).await;
        }
    }
}

#[tokio::test]
async fn the_typescript_client_delivers_the_log_exactly_across_a_lost_network() {
    let cluster = Cluster::start(2, base_url(), &[]).await;
    let network = Proxy::start(cluster.replica(0).addr).await;
    let writer = cluster.replica(1);
    let draft = writer.create_draft("alice", "Followed").await;
    let token = writer.token("alice");
    let mut client = Follower::start(&format!("http://{}", network.addr), &draft, &token);
    client.until("state open").await;

    for n in 1..=5 {
        assert_eq!(
            writer.append("alice", &draft, &format!("{n}")).await.status,
            201
        );
    }
    client.until_event(5).await;

    // The network goes; events go on being written elsewhere.
    network.cut();
    client.until("state reconnecting").await;
    for n in 6..=10 {
        assert_eq!(
            writer.append("alice", &draft, &format!("{n}")).await.status,
            201
        );
    }
    network.restore();
    client.until_event(10).await;

    // An append through the client: once, with a key it made.
    client.script.command("append from the client").await;
    client.until("appended 11 false").await;
    client.until_event(11).await;

    let stored = writer.event_seqs("alice", &draft).await;
    assert_eq!(client.events, stored, "the client's events against the log");
    assert_eq!(stored, (1..=11).collect::<Vec<u64>>());
}
