//! Redis for tests: the shared server (TEST_REDIS_URL, by default
//! 127.0.0.1:6379, or a Redis Cluster's `redis-cluster://` URL) with a key
//! prefix of the test's own, deleted afterwards; a private redis-server on a
//! free port for tests that flush or stop it; or a private Redis Cluster for
//! tests that kill one of its masters.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use fred::types::scan::Scanner;
use futures_util::StreamExt;

pub fn base_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// The test Redis's address, for a proxy in front of it.
pub fn server_addr() -> SocketAddr {
    let url = base_url();
    let host_port = url
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .expect("TEST_REDIS_URL names an IP host and port")
}

/// The test Redis URL with its address replaced by a proxy's.
pub fn url_via(proxy: SocketAddr) -> String {
    let url = base_url();
    let db = url.rsplit_once('/').map(|(_, db)| db).unwrap_or("0");
    format!("redis://{proxy}/{db}")
}

const TEST_PREFIX: &str = "collabd-test:";

/// Prefixes older than this belong to a run that was killed before it could
/// clean up: no test runs this long.
const STALE_AFTER_SECS: u64 = 3600;

/// A key prefix no other test uses, with its birth time in it so a later run
/// can tell a leftover from a live test's.
pub fn unique_prefix() -> String {
    sweep_stale_prefixes_once();
    format!(
        "{TEST_PREFIX}{}_{}:",
        now_secs(),
        uuid::Uuid::new_v4().simple()
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The birth time in a test key (`collabd-test:<secs>_<uuid>:...`, possibly
/// inside a `{...}` hash tag); `None` for a key in the older form without
/// one, which the sweep leaves alone: a run of an older checkout may be
/// using it right now.
fn born(key: &str) -> Option<u64> {
    let rest = key.trim_start_matches('{').strip_prefix(TEST_PREFIX)?;
    rest.split_once('_')?.0.parse().ok()
}

/// Once per test process, deletes the keys of test prefixes left by killed
/// runs (as the Postgres harness drops their schemas).
fn sweep_stale_prefixes_once() {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        super::cleanup(async {
            let sweep = async {
                let client = client(&base_url()).await;
                let cutoff = now_secs().saturating_sub(STALE_AFTER_SECS);
                for pattern in [format!("{TEST_PREFIX}*"), format!("{{{TEST_PREFIX}*")] {
                    let stale: Vec<String> = scan_keys(&client, &pattern)
                        .await
                        .into_iter()
                        .filter(|k| born(k).is_some_and(|b| b < cutoff))
                        .collect();
                    delete_keys(&client, stale).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), sweep).await;
        });
    });
}

pub async fn client(url: &str) -> fred::clients::Client {
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap_or_else(|e| {
        panic!("cannot reach the test Redis at {url}: {e}; run scripts/test, which starts it")
    });
    client
}

/// The keys matching `pattern`, on every master of a cluster.
async fn scan_keys(client: &fred::clients::Client, pattern: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut take = |mut page: fred::types::scan::ScanResult| {
        let keys = page.take_results().unwrap_or_default();
        found.extend(keys.iter().filter_map(|k| k.as_str().map(str::to_owned)));
    };
    if client.is_clustered() {
        let mut scan = client.scan_cluster(pattern.to_owned(), Some(500), None);
        while let Some(Ok(page)) = scan.next().await {
            take(page);
        }
    } else {
        let mut scan = client.scan(pattern.to_owned(), Some(500), None);
        while let Some(Ok(page)) = scan.next().await {
            take(page);
        }
    }
    found
}

/// Deletes `keys`, one command per key (keys of several slots cannot share
/// one on a cluster).
async fn delete_keys(client: &fred::clients::Client, keys: Vec<String>) {
    for key in keys {
        let _: i64 = client.del(key).await.unwrap_or(0);
    }
}

/// Every key under `prefix` (hash-tagged keys included).
pub async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
    let client = client(url).await;
    let mut found = Vec::new();
    for pattern in [format!("{prefix}*"), format!("{{{prefix}*")] {
        found.extend(scan_keys(&client, &pattern).await);
    }
    found
}

/// Deletes every key under `prefix` (hash-tagged keys included).
pub async fn delete_prefix(url: &str, prefix: &str) {
    let keys = keys_under(url, prefix).await;
    delete_keys(&client(url).await, keys).await;
}

/// A prefix on the shared Redis, cleaned up when dropped.
pub struct TestPrefix {
    pub prefix: String,
}

impl TestPrefix {
    pub fn new() -> TestPrefix {
        TestPrefix {
            prefix: unique_prefix(),
        }
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        super::cleanup(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), delete_prefix(&base_url(), &prefix))
                    .await;
        });
    }
}

/// A redis-server of the test's own, on a free port, stopped when dropped.
/// It can be stopped and started again on the same port (with no data: it
/// never saves), as a restart after a crash would look to its clients.
pub struct PrivateRedis {
    pub addr: SocketAddr,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut redis = PrivateRedis {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child: None,
        };
        redis.start_again().await;
        redis
    }

    /// Starts the server (after `stop`) and waits until it accepts.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let addr = self.addr;
        super::eventually(|| async { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
    }

    /// Kills the server and waits until it is gone: every key and loaded
    /// script goes with it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// A Redis Cluster of the test's own: three masters and three replicas,
/// redis-server processes on six free ports that are children of the test
/// (killed when it ends, passing or failing; a test process killed outright
/// leaves them), joined by the same shell functions scripts/test uses.
pub struct PrivateRedisCluster {
    pub base_port: u16,
    dir: std::path::PathBuf,
    nodes: std::sync::Mutex<Vec<(u16, tokio::process::Child)>>,
}

const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/services.sh");

impl PrivateRedisCluster {
    pub async fn start() -> PrivateRedisCluster {
        let base_port = free_port_run();
        let dir = std::env::temp_dir().join(format!("collabd-test-cluster-{base_port}"));
        // A leftover of a killed run would keep its nodes.conf files.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let nodes = (base_port..base_port + 6)
            .map(|port| {
                // The function execs redis-server: the child is the node.
                let child = tokio::process::Command::new("bash")
                    .arg("-c")
                    .arg(format!(". {SERVICES} && redis_cluster_node \"$0\" \"$1\""))
                    .arg(&dir)
                    .arg(port.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("redis-server is installed (scripts/test installs it)");
                (port, child)
            })
            .collect();
        let cluster = PrivateRedisCluster {
            base_port,
            dir,
            nodes: std::sync::Mutex::new(nodes),
        };
        let created = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". {SERVICES} && create_redis_cluster \"$0\" \"$1\""
            ))
            .arg(&cluster.dir)
            .arg(base_port.to_string())
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(created.success(), "the private Redis Cluster did not form");
        cluster
    }

    /// fred's cluster URL, naming three of the nodes.
    pub fn url(&self) -> String {
        let p = self.base_port;
        format!(
            "redis-cluster://127.0.0.1:{p}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            p + 1,
            p + 2
        )
    }

    /// The port of the master that owns `key`'s slot now, as the cluster
    /// sees it; `None` while no client can read the cluster's state.
    pub async fn master_of(&self, key: &str) -> Option<u16> {
        let client = self.client().await?;
        let slot: u16 = client
            .custom(fred::cmd!("CLUSTER", blocking: false), vec!["KEYSLOT", key])
            .await
            .ok()?;
        let nodes: String = client
            .custom(fred::cmd!("CLUSTER", blocking: false), vec!["NODES"])
            .await
            .ok()?;
        let _ = client.quit().await;
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // `[slot->-id]` and `[slot-<-id]` mark a slot on the move.
                let owns = fields[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .any(|range| match range.split_once('-') {
                        Some((a, b)) => {
                            (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&slot)
                        }
                        None => range.parse::<u16>().ok() == Some(slot),
                    });
                let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                owns.then_some(port)
            })
    }

    /// How many clients subscribe to `channel` as a shard channel, asked of
    /// the master that owns its slot.
    pub async fn shard_subscribers(&self, channel: &str) -> i64 {
        let Some(port) = self.master_of(channel).await else {
            return 0;
        };
        self.shard_subscribers_at(port, channel).await
    }

    /// The same, asked of the node on `port`.
    pub async fn shard_subscribers_at(&self, port: u16, channel: &str) -> i64 {
        let output = tokio::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PUBSUB", "SHARDNUMSUB", channel])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Moves `key`'s slot to another master, as `redis-cli --cluster reshard`
    /// would (keys included), and returns that master's port.
    pub async fn move_slot_of(&self, key: &str) -> u16 {
        let from = self.master_of(key).await.unwrap();
        let cli = |port: u16, args: Vec<String>| async move {
            let output = tokio::process::Command::new("redis-cli")
                .arg("-p")
                .arg(port.to_string())
                .args(&args)
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            assert!(
                output.status.success() && !text.contains("ERR"),
                "redis-cli {args:?}: {text}"
            );
            text
        };
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let slot = cli(from, words(&format!("CLUSTER KEYSLOT {key}"))).await;
        let nodes = cli(from, words("CLUSTER NODES")).await;
        let masters: Vec<(String, u16)> = nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let port = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                (fields[0].to_owned(), port)
            })
            .collect();
        let id_of = |port: u16| masters.iter().find(|m| m.1 == port).unwrap().0.clone();
        let to = masters.iter().map(|m| m.1).find(|p| *p != from).unwrap();
        let (from_id, to_id) = (id_of(from), id_of(to));
        cli(
            to,
            words(&format!("CLUSTER SETSLOT {slot} IMPORTING {from_id}")),
        )
        .await;
        cli(
            from,
            words(&format!("CLUSTER SETSLOT {slot} MIGRATING {to_id}")),
        )
        .await;
        for round in 0.. {
            let keys = cli(from, words(&format!("CLUSTER GETKEYSINSLOT {slot} 100"))).await;
            if keys.is_empty() {
                break;
            }
            assert!(round < 100, "slot {slot} still holds keys: {keys}");
            let mut args = words(&format!("MIGRATE 127.0.0.1 {to} \"\" 0 5000 KEYS"));
            args[3] = String::new();
            args.extend(words(&keys));
            let reply = cli(from, args).await;
            assert!(reply == "OK" || reply == "NOKEY", "MIGRATE: {reply}");
        }
        for (_, port) in &masters {
            cli(
                *port,
                words(&format!("CLUSTER SETSLOT {slot} NODE {to_id}")),
            )
            .await;
        }
        to
    }

    /// SIGKILL to the node on `port`.
    pub fn kill(&self, port: u16) {
        let mut nodes = self.nodes.lock().unwrap();
        let at = nodes.iter().position(|(p, _)| *p == port).unwrap();
        let (_, mut child) = nodes.remove(at);
        child.start_kill().unwrap();
    }

    /// True once `key`'s slot has a master other than `dead` and the cluster
    /// says it is healthy again.
    pub async fn failed_over(&self, key: &str, dead: u16) -> bool {
        let Some(master) = self.master_of(key).await else {
            return false;
        };
        let Some(client) = self.client().await else {
            return false;
        };
        let info: Result<String, _> = client
            .custom(fred::cmd!("CLUSTER", blocking: false), vec!["INFO"])
            .await;
        let _ = client.quit().await;
        master != dead && info.is_ok_and(|i| i.contains("cluster_state:ok"))
    }

    /// A client, when one can read the cluster's state (it cannot while a
    /// master is down and not yet replaced).
    async fn client(&self) -> Option<fred::clients::Client> {
        let client = Builder::from_config(Config::from_url(&self.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.ok()?;
        Some(client)
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for (_, child) in self.nodes.lock().unwrap().iter_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first of six consecutive free ports whose cluster bus ports (+10000)
/// are free too, all below the ephemeral range (32768), where the kernel
/// may hand one to an outgoing connection at any time.
pub fn free_port_run() -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        let base = fastrand::u16(10_000..22_000);
        if (base..base + 6).all(|p| free(p) && free(p + 10_000)) {
            return base;
        }
    }
}
