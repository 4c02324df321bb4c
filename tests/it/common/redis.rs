//! Redis for tests: the shared server (TEST_REDIS_URL, by default
//! 127.0.0.1:6379) with a key prefix of the test's own, deleted afterwards, or
//! a private redis-server on a free port for tests that flush or stop it.

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
                    let mut scan = client.scan(pattern, Some(1000), None);
                    while let Some(Ok(mut page)) = scan.next().await {
                        let stale: Vec<fred::types::Key> = page
                            .take_results()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|key| {
                                key.as_str()
                                    .is_some_and(|k| born(k).is_some_and(|b| b < cutoff))
                            })
                            .collect();
                        if !stale.is_empty() {
                            let _: i64 = client.del(stale).await.unwrap_or(0);
                        }
                    }
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

/// Every key under `prefix` (hash-tagged keys included).
pub async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
    let client = client(url).await;
    let mut found = Vec::new();
    for pattern in [format!("{prefix}*"), format!("{{{prefix}*")] {
        let mut scan = client.scan(pattern, Some(500), None);
        while let Some(Ok(mut page)) = scan.next().await {
            let keys = page.take_results().unwrap_or_default();
            found.extend(keys.iter().filter_map(|k| k.as_str().map(str::to_owned)));
        }
    }
    found
}

/// Deletes every key under `prefix` (hash-tagged keys included).
pub async fn delete_prefix(url: &str, prefix: &str) {
    let keys = keys_under(url, prefix).await;
    if !keys.is_empty() {
        let _: i64 = client(url).await.del(keys).await.unwrap_or(0);
    }
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
