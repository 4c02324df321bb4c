//! Several real replica processes (the built binary) on their own ports,
//! sharing one Postgres schema and one Redis key prefix: the topology of a
//! cluster behind a load balancer, on loopback.

use std::process::Stdio;
use std::sync::Arc;

use fred::interfaces::{HashesInterface, SortedSetsInterface};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::pg::TestDb;
use super::redis::TestPrefix;
use super::{within, Api};

pub const SECRET: &str = "cluster-test-secret";

pub struct Replica {
    pub api: Api,
    pub metrics_addr: std::net::SocketAddr,
    /// Every line the replica printed so far.
    pub logs: Arc<std::sync::Mutex<Vec<String>>>,
    /// Ends when both pipes have closed and every line is in `logs`.
    collecting: Option<tokio::task::JoinHandle<()>>,
    child: Child,
}

impl Replica {
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("replica is running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// This replica's /metrics.
    pub async fn scrape(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series on this replica's /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        super::series_value(&self.scrape().await, series)
    }

    /// Waits for a JSON log line matching `pred` and returns it parsed.
    pub async fn log_line(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let mut found = None;
        super::eventually(|| {
            let hit = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| pred(v));
            let done = hit.is_some();
            found = hit;
            async move { done }
        })
        .await;
        found.unwrap()
    }

    /// SIGSTOP: the process freezes, its sockets stay open, its lease lapses.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM: the drain begins.
    pub fn begin_drain(&self) {
        self.signal("-TERM");
    }

    /// SIGTERM, and waits for the drain to end, the process to exit and its
    /// last line to reach `logs`.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.begin_drain();
        let status = within(self.child.wait()).await.unwrap();
        if let Some(collecting) = self.collecting.take() {
            within(collecting).await.unwrap();
        }
        status
    }

    /// SIGKILL: no drain, no goodbye, leases left to lapse.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }
}

impl std::ops::Deref for Replica {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Fields drop in order: the replicas are killed before their schema and
/// Redis prefix are cleaned up, so none renews a lease into a prefix that
/// was just deleted.
pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub db: Arc<TestDb>,
    pub prefix: TestPrefix,
    pub redis_url: String,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `n` replicas with these extra settings, on Redis at `redis_url`.
    pub async fn start(n: usize, redis_url: String, env: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster {
            db: TestDb::create().await,
            prefix: TestPrefix::new(),
            redis_url,
            replicas: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for _ in 0..n {
            let replica = cluster.spawn_replica().await;
            cluster.replicas.push(replica);
        }
        cluster
    }

    pub async fn spawn_replica(&self) -> Replica {
        self.spawn_replica_with(&[]).await
    }

    /// A replica whose settings differ from the others' (its own proxy to
    /// Redis or Postgres, say).
    pub async fn spawn_replica_with(&self, extra: &[(&str, String)]) -> Replica {
        let mut cmd = Command::from(super::collabd_command());
        cmd.env("DATABASE_URL", self.db.url())
            .env("REDIS_URL", &self.redis_url)
            .env("REDIS_KEY_PREFIX", &self.prefix.prefix)
            .env("AUTH_JWT_SECRET", SECRET)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .env("SHUTDOWN_TIMEOUT_SECONDS", "2")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start a replica");
        let (tx, mut lines) = mpsc::unbounded_channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for reader in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(reader).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("[replica] {line}");
                    }
                    let _ = tx.send(line);
                }
            });
        }
        // Only the readers send from here on: a replica that exits closes
        // the channel, and the wait below says why at once.
        drop(tx);
        let mut seen: Vec<String> = Vec::new();
        let (addr, metrics_addr): (std::net::SocketAddr, std::net::SocketAddr) = within(async {
            while let Some(line) = lines.recv().await {
                if line.contains("collabd listening") {
                    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                    return (
                        value["addr"].as_str().unwrap().parse().unwrap(),
                        value["metrics_addr"].as_str().unwrap().parse().unwrap(),
                    );
                }
                seen.push(line);
            }
            panic!("replica exited before listening: {seen:#?}");
        })
        .await;
        // Keep draining so the replica never blocks on a full pipe.
        let logs = Arc::new(std::sync::Mutex::new(seen));
        let collecting = {
            let logs = logs.clone();
            tokio::spawn(async move {
                while let Some(line) = lines.recv().await {
                    logs.lock().unwrap().push(line);
                }
            })
        };
        Replica {
            api: Api::new(addr, SECRET),
            metrics_addr,
            logs,
            collecting: Some(collecting),
            child,
        }
    }

    /// One series' value on each replica, in order.
    pub async fn each_metric(&self, series: &str) -> Vec<f64> {
        let mut each = Vec::new();
        for replica in &self.replicas {
            each.push(replica.metric(series).await);
        }
        each
    }

    pub fn replica(&self, i: usize) -> &Replica {
        &self.replicas[i % self.replicas.len()]
    }

    /// The hash tag of this cluster's lease keys.
    fn lease_base(&self) -> String {
        format!("{{{}ws}}", self.prefix.prefix)
    }

    /// (incarnation, lease deadline) of every live replica, from Redis.
    pub async fn leases(&self) -> Vec<(String, f64)> {
        let redis = super::redis::client(&self.redis_url).await;
        redis
            .zrange(
                format!("{}:incarnations", self.lease_base()),
                0,
                -1,
                None,
                false,
                None,
                true,
            )
            .await
            .unwrap()
    }

    /// Sockets recorded in Redis under the live incarnations.
    pub async fn sockets_in_redis(&self) -> i64 {
        let redis = super::redis::client(&self.redis_url).await;
        let mut sockets = 0;
        for (inc, _) in self.leases().await {
            let n: i64 = redis
                .hlen(format!("{}:inc:{inc}:sockets", self.lease_base()))
                .await
                .unwrap();
            sockets += n;
        }
        sockets
    }

    /// Waits until every replica has registered, then until each has
    /// renewed its lease `rounds` times more.
    pub async fn until_every_lease_renewed(&self, rounds: usize) {
        let n = self.replicas.len();
        super::eventually(|| async { self.leases().await.len() == n }).await;
        for _ in 0..rounds {
            let before = self.leases().await;
            super::eventually(|| async {
                let now = self.leases().await;
                now.len() == n
                    && before
                        .iter()
                        .all(|(inc, was)| now.iter().any(|(i, d)| i == inc && d > was))
            })
            .await;
        }
    }
}
