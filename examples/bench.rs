//! collabd benchmarks: real replica processes, real sockets, and beside each
//! figure the ceiling it runs against on the same machine in the same run.
//!
//! ```text
//! scripts/bench --size full            # every scenario, 3 runs each, medians
//! scripts/bench --size smoke           # a tiny run: fails on errors, never on slowness
//! scripts/bench --scenario fanout      # one scenario
//! ```
//!
//! Scenarios: fanout (W writers, R watchers over 3 replicas; delivered events
//! per second and end-to-end latency, against `redis-benchmark` PUBLISH),
//! shards (the same fanout over many rooms on one Redis and on a Redis
//! Cluster of three masters: deliveries/s, Redis CPU per million deliveries
//! and the busiest master's share, against PUBLISH and per-master SPUBLISH),
//! connections (idle WebSockets on one replica; RSS per connection and idle
//! CPU), ratelimit (decisions per second through the HTTP middleware against
//! `redis-benchmark` EVALSHA of lua/gcra.lua, and the latency limits add),
//! appends (durable appends per second to one draft and to many, against
//! `pgbench` running the equivalent transaction), http (a read route with the
//! full middleware stack against the same handler with none), soak (three
//! replicas under a constant append rate for `--minutes`, RSS of each sampled
//! from /proc, the slope per million deliveries against its bound; with
//! `--scrape-seconds N` something scrapes /metrics meanwhile).
//!
//! Needs Postgres and Redis: BENCH_DATABASE_URL (a server URL ending in a
//! database, default postgres://postgres@127.0.0.1:5432/collabd_test) and
//! BENCH_REDIS_URL (default redis://127.0.0.1:6379/0), and for the shards
//! scenario BENCH_REDIS_CLUSTER_URL (a Redis Cluster of three masters);
//! scripts/bench finds or starts them. COLLABD_BIN names the server binary.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-of-at-least-thirty-two-bytes";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Size {
    Smoke,
    Full,
}

#[derive(Parser)]
#[command(about = "collabd benchmarks against their ceilings")]
struct Args {
    #[arg(long, value_enum, default_value = "smoke")]
    size: Size,
    /// Run only these scenarios (fanout, shards, connections, ratelimit,
    /// appends, http, soak). Without it: all of them, the soak only at smoke size.
    #[arg(long)]
    scenario: Vec<String>,
    /// Runs per scenario (default: 1 for smoke, 3 for full); figures are medians.
    #[arg(long)]
    repeat: Option<usize>,
    /// How long the soak scenario runs (a smoke soak runs one minute at most).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Scrape every replica's /metrics this often during the soak (0: never).
    #[arg(long, default_value_t = 0)]
    scrape_seconds: u64,
    /// Soak one standalone replica instead of three in cluster mode.
    #[arg(long)]
    standalone: bool,
    /// Soak watchers per draft (default: 15 smoke, 250 full; 4 drafts full).
    #[arg(long)]
    watchers: Option<usize>,
    /// Soak appends per second, the whole cluster (default: 20 smoke, 100 full).
    #[arg(long)]
    rate: Option<f64>,
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One figure of a scenario, collected over runs.
struct Row {
    scenario: &'static str,
    measure: String,
    unit: &'static str,
    values: Vec<f64>,
    /// What the ceiling is, and its figure in each run.
    ceiling: Option<(String, Vec<f64>)>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

// ---------- the pieces every scenario uses ----------

struct Backing {
    server_url: String,
    database: String,
    schema: String,
    redis_url: String,
    prefix: String,
}

impl Backing {
    async fn create() -> Res<Backing> {
        let url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/collabd_test".into());
        let (server_url, database) = url
            .rsplit_once('/')
            .ok_or("BENCH_DATABASE_URL needs a database")?;
        let backing = Backing {
            server_url: server_url.to_owned(),
            database: database.to_owned(),
            schema: format!("collabd_bench_{}", uuid::Uuid::new_v4().simple()),
            redis_url: std::env::var("BENCH_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
            prefix: format!("collabd-bench:{}:", uuid::Uuid::new_v4().simple()),
        };
        let admin = backing
            .connect(&format!("{}/postgres", backing.server_url))
            .await?;
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&backing.database],
            )
            .await?
            .is_some();
        if !exists {
            let _ = admin
                .batch_execute(&format!("CREATE DATABASE \"{}\"", backing.database))
                .await;
        }
        backing
            .connect(&url)
            .await?
            .batch_execute(&format!("CREATE SCHEMA \"{}\"", backing.schema))
            .await?;
        Ok(backing)
    }

    async fn connect(&self, url: &str) -> Res<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn database_url(&self) -> String {
        format!(
            "{}/{}?options=-csearch_path%3D{}",
            self.server_url, self.database, self.schema
        )
    }

    async fn drop_schema(&self) {
        if let Ok(client) = self
            .connect(&format!("{}/{}", self.server_url, self.database))
            .await
        {
            let _ = client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                    self.schema
                ))
                .await;
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "redis-cli -u '{}' --scan --pattern '*{}*' | xargs -r redis-cli -u '{}' DEL >/dev/null",
                self.redis_url, self.prefix, self.redis_url
            ))
            .status()
            .await;
    }
}

struct Replica {
    api: SocketAddr,
    metrics: SocketAddr,
    child: Child,
}

impl Replica {
    async fn start(envs: &[(&str, String)]) -> Res<Replica> {
        let bin = std::env::var("COLLABD_BIN").unwrap_or_else(|_| {
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("collabd")
                .display()
                .to_string()
        });
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AUTH_JWT_SECRET", SECRET)
            .env("APP_ENV", "prod")
            .env("LOG_LEVEL", "warn,collabd::app=info")
            .env("PORT", "0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("collabd listening") {
                    return Some(line);
                }
            }
            None
        })
        .await?
        .ok_or("replica exited before listening")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let value: Value = serde_json::from_str(&line)?;
        Ok(Replica {
            api: value["addr"].as_str().unwrap().parse()?,
            metrics: value["metrics_addr"].as_str().unwrap().parse()?,
            child,
        })
    }

    async fn metric(&self, http: &reqwest::Client, name: &str) -> Res<f64> {
        let text = http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn cluster_env(b: &Backing) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", b.database_url()),
        ("REDIS_URL", b.redis_url.clone()),
        ("REDIS_KEY_PREFIX", b.prefix.clone()),
    ]
}

fn token(user: &str) -> String {
    collabd::auth::Authenticator::new(SECRET)
        .mint(user, Duration::from_secs(3600))
        .unwrap()
}

async fn create_draft(http: &reqwest::Client, api: SocketAddr, title: &str) -> Res<String> {
    let reply: Value = http
        .post(format!("http://{api}/v1/collab/drafts"))
        .bearer_auth(token("alice"))
        .json(&json!({ "title": title }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(reply["id"].as_str().ok_or("no draft id")?.to_owned())
}

async fn append(http: &reqwest::Client, api: SocketAddr, draft: &str, content: &str) -> Res<()> {
    let status = http
        .post(format!("http://{api}/v1/collab/drafts/{draft}/segments"))
        .bearer_auth(token("alice"))
        .json(&json!({ "content": content }))
        .send()
        .await?
        .status();
    if status.as_u16() != 201 {
        return Err(format!("append answered {status}").into());
    }
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn watch(api: SocketAddr, draft: &str) -> Res<Socket> {
    let mut request = format!("ws://{api}/v1/collab/drafts/{draft}/ws").into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("alice")).parse()?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    match socket.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"ready\"") => Ok(socket),
        other => Err(format!("expected ready, got {other:?}").into()),
    }
}

/// Sends `total` GETs with `concurrency` in flight; returns (requests/s, mean latency s).
async fn load(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<String>,
    total: usize,
    concurrency: usize,
) -> Res<(f64, f64)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, bearer, next) =
                (http.clone(), url.to_owned(), bearer.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let mut request = http.get(&url);
                    if let Some(b) = &bearer {
                        request = request.bearer_auth(b);
                    }
                    let response = request.send().await?;
                    if !response.status().is_success() {
                        return Err::<Vec<f64>, Box<dyn std::error::Error + Send + Sync>>(
                            format!("{url} answered {}", response.status()).into(),
                        );
                    }
                    response.bytes().await?;
                    latencies.push(t.elapsed().as_secs_f64());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        all.len() as f64 / elapsed,
        all.iter().sum::<f64>() / all.len() as f64,
    ))
}

/// `redis-benchmark` requests per second for one command.
async fn redis_benchmark(redis_url: &str, requests: usize, command: &[&str]) -> Res<f64> {
    let output = Command::new("redis-benchmark")
        .args([
            "-u",
            redis_url,
            "-n",
            &requests.to_string(),
            "-c",
            "32",
            "-q",
        ])
        .args(command)
        .output()
        .await
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // The last progress line reads "<command>: 63694.27 requests per second, ...".
    let figure = text
        .split(['\r', '\n'])
        .filter_map(|part| part.split_once(" requests per second"))
        .filter_map(|(before, _)| before.split_whitespace().next_back()?.parse::<f64>().ok())
        .next_back()
        .ok_or_else(|| format!("cannot read redis-benchmark output: {text}"))?;
    Ok(figure)
}

/// A fanout workload: in each room, `watchers` sockets spread over the
/// replicas and `writers` appending `per_writer` segments each as fast as
/// they are answered. Every segment carries its send time, so each watcher
/// measures writer-to-watcher latency.
struct Rooms {
    drafts: Vec<String>,
    watchers: usize,
    writers: usize,
    per_writer: usize,
}

impl Rooms {
    /// Delivered events per second over the whole run, and every latency
    /// (seconds, sorted).
    async fn run(&self, http: &reqwest::Client, replicas: &[Replica]) -> Res<(f64, Vec<f64>)> {
        let mut sockets = Vec::new();
        for draft in &self.drafts {
            for i in 0..self.watchers {
                sockets.push(watch(replicas[i % replicas.len()].api, draft).await?);
            }
        }
        let t0 = Instant::now();
        let per_room = self.writers * self.per_writer;
        let readers: Vec<_> = sockets
            .into_iter()
            .map(|mut socket| {
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_room);
                    while latencies.len() < per_room {
                        match tokio::time::timeout(Duration::from_secs(60), socket.next()).await {
                            Ok(Some(Ok(Message::Text(text)))) => {
                                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                                if let Some(content) = frame["data"]["segment"]["content"].as_str()
                                {
                                    let sent: u128 =
                                        content.rsplit(':').next().unwrap().parse().unwrap();
                                    latencies.push((t0.elapsed().as_nanos() - sent) as f64 / 1e9);
                                }
                            }
                            Ok(Some(Ok(_))) => {}
                            other => return Err(format!("watcher stopped early: {other:?}")),
                        }
                    }
                    Ok((latencies, t0.elapsed()))
                })
            })
            .collect();
        let started = t0.elapsed();
        let mut writer_tasks = Vec::new();
        for (r, draft) in self.drafts.iter().enumerate() {
            for w in 0..self.writers {
                let (http, draft) = (http.clone(), draft.clone());
                let api = replicas[(r + w) % replicas.len()].api;
                let per_writer = self.per_writer;
                writer_tasks.push(tokio::spawn(async move {
                    for n in 0..per_writer {
                        let content = format!("{w}:{n}:{}", t0.elapsed().as_nanos());
                        append(&http, api, &draft, &content).await?;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                }));
            }
        }
        for w in writer_tasks {
            w.await??;
        }
        let mut latencies = Vec::new();
        let mut finished = Duration::ZERO;
        for r in readers {
            let (l, done) = r.await?.map_err(|e| e.to_string())?;
            latencies.extend(l);
            finished = finished.max(done);
        }
        latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let delivered = latencies.len() as f64 / (finished - started).as_secs_f64();
        Ok((delivered, latencies))
    }
}

// ---------- the scenarios ----------

/// One Redis against a Redis Cluster of three masters (BENCH_REDIS_CLUSTER_URL),
/// the same fanout on each: rooms whose channels spread over the slots, a
/// writer per room, watchers over three replicas. Beside deliveries/s: the
/// Redis CPU per million deliveries (every master's, read from `INFO cpu`),
/// and the busiest master's share of it, which sharded pub/sub should bring
/// from 1 towards 1/3; and the `redis-benchmark` ceilings, PUBLISH on the one
/// Redis and SPUBLISH on each master.
async fn shards(size: Size, b: &Backing, http: &reqwest::Client, rows: &mut Vec<Row>) -> Res<()> {
    let cluster_url = std::env::var("BENCH_REDIS_CLUSTER_URL")
        .map_err(|_| "BENCH_REDIS_CLUSTER_URL is not set (scripts/bench starts a cluster)")?;
    let (drafts, watchers, per_writer) = match size {
        Size::Smoke => (6, 2, 10),
        Size::Full => (12, 20, 200),
    };
    let single = vec![redis_node(&b.redis_url)?];
    let masters = cluster_masters(&cluster_url).await?;
    for (url, nodes, shards) in [(&b.redis_url, &single, 1), (&cluster_url, &masters, 3)] {
        let mut env = cluster_env(b);
        env.retain(|(k, _)| *k != "REDIS_URL");
        env.push(("REDIS_URL", url.clone()));
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(Replica::start(&env).await?);
        }
        let mut rooms = Rooms {
            drafts: Vec::new(),
            watchers,
            writers: 1,
            per_writer,
        };
        for r in 0..drafts {
            rooms
                .drafts
                .push(create_draft(http, replicas[r % 3].api, "shards").await?);
        }
        let before = redis_cpu(nodes).await?;
        let (delivered, latencies) = rooms.run(http, &replicas).await?;
        let after = redis_cpu(nodes).await?;
        drop(replicas);
        let spent: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: f64 = spent.iter().sum();
        let busiest = spent.iter().cloned().fold(0.0, f64::max);
        let deliveries = latencies.len() as f64;
        let label = format!("{drafts} rooms × {watchers} watchers, 3 replicas, {shards} shard(s)");
        let ceiling = if shards == 1 {
            let figure = redis_benchmark(
                url,
                20_000,
                &["PUBLISH", "collabd-bench-ceiling", &"x".repeat(400)],
            )
            .await?;
            Ceiling("redis-benchmark PUBLISH, msg/s".into(), figure)
        } else {
            let mut figures = Vec::new();
            for (host, port) in nodes {
                let channel = owned_channel(host, *port).await?;
                let node = format!("redis://{host}:{port}");
                figures.push(
                    redis_benchmark(&node, 20_000, &["SPUBLISH", &channel, &"x".repeat(400)])
                        .await?,
                );
            }
            Ceiling(
                "redis-benchmark SPUBLISH per master (median of 3), msg/s".into(),
                median(&figures),
            )
        };
        push(
            rows,
            "shards",
            format!("delivered events/s ({label})"),
            "ev/s",
            delivered,
            Some(ceiling),
        );
        push(
            rows,
            "shards",
            format!("delivery latency p99 ({shards} shard(s))"),
            "ms",
            percentile(&latencies, 0.99) * 1e3,
            None,
        );
        push(
            rows,
            "shards",
            format!("Redis CPU-s per million deliveries ({shards} shard(s), all masters)"),
            "s",
            total / deliveries * 1e6,
            None,
        );
        push(
            rows,
            "shards",
            format!("busiest master's share of Redis CPU ({shards} shard(s))"),
            "ratio",
            if total > 0.0 {
                busiest / total
            } else {
                f64::NAN
            },
            None,
        );
    }
    Ok(())
}

/// Host and port of a `redis://` URL (no credentials expected here).
fn redis_node(url: &str) -> Res<(String, u16)> {
    let rest = url.split("://").nth(1).ok_or("not a Redis URL")?;
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = host_port.rsplit('@').next().unwrap_or_default();
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or("no port in the Redis URL")?;
    Ok((host.to_owned(), port.parse()?))
}

async fn redis_cli(host: &str, port: u16, args: &[&str]) -> Res<String> {
    let output = Command::new("redis-cli")
        .args(["-h", host, "-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .map_err(|e| format!("redis-cli: {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The masters of the cluster a `redis-cluster://` URL names.
async fn cluster_masters(url: &str) -> Res<Vec<(String, u16)>> {
    let (host, port) = redis_node(url)?;
    let nodes = redis_cli(&host, port, &["CLUSTER", "NODES"]).await?;
    let masters: Vec<(String, u16)> = nodes
        .lines()
        .filter(|l| l.contains("master") && !l.contains("fail"))
        .filter_map(|l| {
            let addr = l.split_whitespace().nth(1)?.split('@').next()?;
            let (h, p) = addr.rsplit_once(':')?;
            Some((h.to_owned(), p.parse().ok()?))
        })
        .collect();
    if masters.len() != 3 {
        return Err(format!("expected 3 masters, found {masters:?}").into());
    }
    Ok(masters)
}

/// CPU seconds (user + system) each node has used so far.
async fn redis_cpu(nodes: &[(String, u16)]) -> Res<Vec<f64>> {
    let mut figures = Vec::new();
    for (host, port) in nodes {
        let info = redis_cli(host, *port, &["INFO", "cpu"]).await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        figures.push(field("used_cpu_sys:") + field("used_cpu_user:"));
    }
    Ok(figures)
}

/// A channel name whose slot this master owns (SPUBLISH elsewhere is MOVED).
async fn owned_channel(host: &str, port: u16) -> Res<String> {
    for i in 0..1000 {
        let channel = format!("collabd-bench-ceiling-{i}");
        let reply = redis_cli(host, port, &["SPUBLISH", &channel, "x"]).await?;
        if !reply.contains("MOVED") {
            return Ok(channel);
        }
    }
    Err(format!("no channel found on {host}:{port}").into())
}

async fn fanout(size: Size, b: &Backing, http: &reqwest::Client, rows: &mut Vec<Row>) -> Res<()> {
    let (writers, watchers, per_writer) = match size {
        Size::Smoke => (2, 6, 20),
        Size::Full => (4, 60, 250),
    };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Replica::start(&cluster_env(b)).await?);
    }
    let draft = create_draft(http, replicas[0].api, "fanout").await?;
    let rooms = Rooms {
        drafts: vec![draft],
        watchers,
        writers,
        per_writer,
    };
    let (delivered, latencies) = rooms.run(http, &replicas).await?;
    let ceiling = redis_benchmark(
        &b.redis_url,
        if size == Size::Smoke { 20_000 } else { 200_000 },
        &["PUBLISH", "collabd-bench-ceiling", &"x".repeat(400)],
    )
    .await?;
    let ceiling = Some(Ceiling("redis-benchmark PUBLISH, msg/s".into(), ceiling));
    let label = format!("{writers} writers, {watchers} watchers on 3 replicas");
    push(
        rows,
        "fanout",
        format!("delivered events/s ({label})"),
        "ev/s",
        delivered,
        ceiling,
    );
    push(
        rows,
        "fanout",
        "delivery latency p50".into(),
        "ms",
        percentile(&latencies, 0.5) * 1e3,
        None,
    );
    push(
        rows,
        "fanout",
        "delivery latency p99".into(),
        "ms",
        percentile(&latencies, 0.99) * 1e3,
        None,
    );
    push(
        rows,
        "fanout",
        "delivery latency max".into(),
        "ms",
        latencies.last().copied().unwrap_or(f64::NAN) * 1e3,
        None,
    );
    Ok(())
}

async fn connections(size: Size, http: &reqwest::Client, rows: &mut Vec<Row>) -> Res<()> {
    let (count, idle) = match size {
        Size::Smoke => (200, Duration::from_secs(2)),
        Size::Full => (10_000, Duration::from_secs(10)),
    };
    let replica = Replica::start(&[]).await?;
    let draft = create_draft(http, replica.api, "idle").await?;
    let rss_before = replica
        .metric(http, "process_resident_memory_bytes")
        .await?;
    let mut sockets = Vec::with_capacity(count);
    for chunk in 0..count.div_ceil(100) {
        let batch =
            (chunk * 100..((chunk + 1) * 100).min(count)).map(|_| watch(replica.api, &draft));
        for socket in futures_util::future::join_all(batch).await {
            sockets.push(socket?);
        }
    }
    let rss_after = replica
        .metric(http, "process_resident_memory_bytes")
        .await?;
    let pid = replica.child.id().ok_or("replica exited")?;
    let cpu_before = cpu_seconds(pid)?;
    let t = Instant::now();
    // The measurement window: the replica has nothing to do but hold the sockets.
    tokio::time::sleep(idle).await;
    let cpu = (cpu_seconds(pid)? - cpu_before) / t.elapsed().as_secs_f64() * 100.0;
    push(
        rows,
        "connections",
        format!("RSS per idle WebSocket ({count} open)"),
        "KiB",
        (rss_after - rss_before) / count as f64 / 1024.0,
        None,
    );
    push(
        rows,
        "connections",
        format!("CPU while {count} sockets idle"),
        "% core",
        cpu,
        None,
    );
    for mut s in sockets {
        let _ = s.close(None).await;
    }
    Ok(())
}

/// User plus system CPU seconds of a process, from /proc (10 ms ticks).
fn cpu_seconds(pid: u32) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("bad stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

async fn ratelimit(
    size: Size,
    b: &Backing,
    http: &reqwest::Client,
    rows: &mut Vec<Row>,
) -> Res<()> {
    let total = if size == Size::Smoke { 2_000 } else { 40_000 };
    let mut on_env = cluster_env(b);
    on_env.extend([
        ("RATE_LIMIT_ENABLED", "true".to_owned()),
        ("RATE_LIMIT_PER_MINUTE_DEFAULT", "60000000".to_owned()),
        ("RATE_LIMIT_BURST_DEFAULT", "4000000000".to_owned()),
    ]);
    let on = Replica::start(&on_env).await?;
    let off = Replica::start(&cluster_env(b)).await?;
    let bearer = Some(token("alice"));
    let (rps_on, mean_on) = load(
        http,
        &format!("http://{}/v1/collab/drafts", on.api),
        bearer.clone(),
        total,
        32,
    )
    .await?;
    let (_, mean_off) = load(
        http,
        &format!("http://{}/v1/collab/drafts", off.api),
        bearer,
        total,
        32,
    )
    .await?;
    let sha = Command::new("redis-cli")
        .args([
            "-u",
            &b.redis_url,
            "SCRIPT",
            "LOAD",
            collabd::adapters::redis::ratelimit::GCRA_LUA,
        ])
        .output()
        .await?;
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_owned();
    let key = format!("{}rl:{{bench}}", b.prefix);
    let ceiling = redis_benchmark(
        &b.redis_url,
        total * 5,
        &[
            "EVALSHA",
            &sha,
            "1",
            &key,
            "4000000000",
            "60000000",
            "60",
            "1",
        ],
    )
    .await?;
    push(
        rows,
        "ratelimit",
        "limit decisions/s through the HTTP middleware".into(),
        "req/s",
        rps_on,
        Some(Ceiling(
            "redis-benchmark EVALSHA gcra.lua, calls/s".into(),
            ceiling,
        )),
    );
    push(
        rows,
        "ratelimit",
        "latency added by limits (mean on - off)".into(),
        "ms",
        (mean_on - mean_off) * 1e3,
        None,
    );
    Ok(())
}

async fn appends(size: Size, b: &Backing, http: &reqwest::Client, rows: &mut Vec<Row>) -> Res<()> {
    let (total, seconds) = if size == Size::Smoke {
        (200, 2)
    } else {
        (4_000, 10)
    };
    let replica = Replica::start(&[("DATABASE_URL", b.database_url())]).await?;
    let concurrency = 16;
    for (label, drafts) in [("one draft", 1usize), ("16 drafts", 16)] {
        let mut ids = Vec::new();
        for i in 0..drafts {
            ids.push(create_draft(http, replica.api, &format!("appends {i}")).await?);
        }
        let ids = Arc::new(ids);
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|w| {
                let (http, ids, api) = (http.clone(), ids.clone(), replica.api);
                tokio::spawn(async move {
                    for n in 0..total / concurrency {
                        append(&http, api, &ids[(w + n) % ids.len()], "x").await?;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let rate = (total / concurrency * concurrency) as f64 / started.elapsed().as_secs_f64();
        let ceiling = pgbench(b, drafts, seconds, concurrency).await?;
        push(
            rows,
            "appends",
            format!("durable appends/s, {label}, {concurrency} writers"),
            "ops/s",
            rate,
            Some(Ceiling(
                "pgbench, same transaction shape, tps".into(),
                ceiling,
            )),
        );
    }
    Ok(())
}

/// pgbench running what an append does: lock the draft row, insert a row,
/// bump the head, commit.
async fn pgbench(b: &Backing, drafts: usize, seconds: u64, clients: usize) -> Res<f64> {
    let client = b.connect(&b.database_url()).await?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_rows, bench_drafts;
             CREATE TABLE bench_drafts (id int PRIMARY KEY, seq bigint NOT NULL DEFAULT 0);
             CREATE TABLE bench_rows (draft int NOT NULL, seq bigint NOT NULL, body text NOT NULL,
                                      PRIMARY KEY (draft, seq));",
        )
        .await?;
    client
        .execute(
            "INSERT INTO bench_drafts (id) SELECT generate_series(1, $1)",
            &[&(drafts as i32)],
        )
        .await?;
    let script = std::env::temp_dir().join(format!("collabd-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "\\set d random(1, {drafts})\nBEGIN;\nSELECT seq FROM bench_drafts WHERE id = :d FOR UPDATE;\n\
             INSERT INTO bench_rows (draft, seq, body) SELECT :d, seq + 1, 'x' FROM bench_drafts WHERE id = :d;\n\
             UPDATE bench_drafts SET seq = seq + 1 WHERE id = :d;\nCOMMIT;\n"
        ),
    )?;
    let url = format!("{}/{}", b.server_url, b.database);
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(&url)
        .env("PGOPTIONS", format!("-c search_path={}", b.schema))
        .output()
        .await
        .map_err(|e| format!("pgbench: {e}"))?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| {
            format!(
                "cannot read pgbench output: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into()
        })
}

async fn http_overhead(size: Size, http: &reqwest::Client, rows: &mut Vec<Row>) -> Res<()> {
    use collabd::adapters::memory::MemoryAudit;
    use collabd::app::{AppState, Backends};
    let total = if size == Size::Smoke { 2_000 } else { 40_000 };
    let mut config = collabd::config::Config::defaults();
    config.rate_limit_enabled = true;
    config.rate_limit_per_minute_default = 60_000_000;
    config.rate_limit_burst_default = 4_000_000_000;
    let state = AppState::new(config, Backends::memory(Arc::new(MemoryAudit::new())));
    let full =
        collabd::app::public_router(state).into_make_service_with_connect_info::<SocketAddr>();
    let bare = axum::Router::new().route(
        "/healthz",
        axum::routing::get(|| async { axum::Json(json!({ "status": "ok" })) }),
    );
    let full_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (full_addr, bare_addr) = (full_listener.local_addr()?, bare_listener.local_addr()?);
    tokio::spawn(async move { axum::serve(full_listener, full).await });
    tokio::spawn(async move { axum::serve(bare_listener, bare).await });
    // Warm both up, then measure in alternating order from run to run, so
    // neither always goes first on a noisy machine.
    let full_url = format!("http://{full_addr}/healthz");
    let bare_url = format!("http://{bare_addr}/healthz");
    load(http, &full_url, None, total / 10, 32).await?;
    load(http, &bare_url, None, total / 10, 32).await?;
    let bare_first = rows
        .iter()
        .any(|r| r.scenario == "http" && r.values.len() % 2 == 1);
    let ((full_rps, full_mean), (bare_rps, bare_mean)) = if bare_first {
        let bare = load(http, &bare_url, None, total, 32).await?;
        (load(http, &full_url, None, total, 32).await?, bare)
    } else {
        let full = load(http, &full_url, None, total, 32).await?;
        (full, load(http, &bare_url, None, total, 32).await?)
    };
    push(
        rows,
        "http",
        "GET /healthz, full middleware stack".into(),
        "req/s",
        full_rps,
        Some(Ceiling(
            "same handler, no middleware, req/s".into(),
            bare_rps,
        )),
    );
    push(
        rows,
        "http",
        "mean latency added by the middleware".into(),
        "ms",
        (full_mean - bare_mean) * 1e3,
        None,
    );
    Ok(())
}

// ---------- soak: memory under a steady load ----------

/// Soak settings: how long, and whether something scrapes `/metrics`.
#[derive(Clone, Copy, Debug)]
struct SoakArgs {
    minutes: f64,
    scrape_every: Option<Duration>,
    /// One standalone replica, which keeps every event in memory by design:
    /// the figure is then the memory each stored event costs.
    standalone: bool,
    watchers: Option<usize>,
    rate: Option<f64>,
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> Res<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024.0)
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// The growth a soak accepts, per replica: this many bytes per million
/// deliveries over the measured window (the last third of the run), unless
/// the whole growth in that window stays under the noise floor (allocator
/// arenas and page-grained RSS move by a few hundred KB on their own). The
/// leak this guards against grew ~6 MB per million deliveries.
const SOAK_BOUND_PER_MILLION: f64 = 1024.0 * 1024.0;
const SOAK_NOISE_FLOOR: f64 = 2.0 * 1024.0 * 1024.0;

/// A watcher that reads every frame and checks the seqs: each once, in order.
fn spawn_watcher(
    mut socket: Socket,
    delivered: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Res<()>> {
    tokio::spawn(async move {
        let mut last = 0u64;
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                frame = tokio::time::timeout(Duration::from_secs(60), socket.next()) => frame,
            };
            let text = match frame {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                other => return Err(format!("watcher stopped: {other:?}").into()),
            };
            let value: Value = serde_json::from_str(text.as_str())?;
            let Some(seq) = value["seq"].as_u64() else {
                continue;
            };
            if seq != last + 1 {
                return Err(format!("watcher saw seq {seq} after {last}").into());
            }
            last = seq;
            delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
}

/// A socket that reads one frame every two seconds, slower than events
/// arrive, through a tiny receive buffer: its replica's outbound queue fills
/// and the replica kicks it as a slow consumer; it then reconnects, for as
/// long as the soak lasts.
fn spawn_slow_consumer(
    api: SocketAddr,
    draft: String,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Res<()>> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let tcp = tokio::net::TcpSocket::new_v4()?;
            tcp.set_recv_buffer_size(2048)?;
            let stream = tcp.connect(api).await?;
            let mut request =
                format!("ws://{api}/v1/collab/drafts/{draft}/ws").into_client_request()?;
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {}", token("alice")).parse()?,
            );
            let (mut socket, _) = tokio_tungstenite::client_async(request, stream).await?;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                match socket.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
        Ok(())
    })
}

/// Three replicas in cluster mode under a constant append rate with watchers
/// on every replica (and a slow consumer per draft, kicked now and then);
/// RSS of each replica sampled from /proc, so sampling never runs the
/// metrics upkeep itself. Fails when a replica grows faster than the bound.
async fn soak(
    size: Size,
    args: SoakArgs,
    b: &Backing,
    http: &reqwest::Client,
    rows: &mut Vec<Row>,
) -> Res<()> {
    let (drafts, watchers_per_draft, appends_per_second) = match size {
        Size::Smoke => (2, 15, 20.0),
        Size::Full => (4, 250, 100.0),
    };
    let watchers_per_draft = args.watchers.unwrap_or(watchers_per_draft);
    let appends_per_second = args.rate.unwrap_or(appends_per_second);
    let minutes = if size == Size::Smoke {
        args.minutes.min(1.0)
    } else {
        args.minutes
    };
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let sample_every = Duration::from_secs_f64((duration.as_secs_f64() / 30.0).clamp(2.0, 30.0));
    let n = if args.standalone { 1 } else { 3 };
    let mut replicas = Vec::new();
    for _ in 0..n {
        let mut env = if args.standalone {
            Vec::new()
        } else {
            cluster_env(b)
        };
        env.push(("WS_OUTBOUND_QUEUE", "32".into()));
        replicas.push(Replica::start(&env).await?);
    }
    let pids: Vec<u32> = replicas
        .iter()
        .map(|r| r.child.id().ok_or("replica exited"))
        .collect::<Result<_, _>>()?;
    let baseline = pids
        .iter()
        .map(|p| rss_bytes(*p))
        .collect::<Res<Vec<f64>>>()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut draft_ids = Vec::new();
    for d in 0..drafts {
        let draft = create_draft(http, replicas[d % n].api, &format!("soak {d}")).await?;
        for w in 0..watchers_per_draft {
            let socket = watch(replicas[w % n].api, &draft).await?;
            tasks.push(spawn_watcher(socket, delivered.clone(), stop.clone()));
        }
        tasks.push(spawn_slow_consumer(
            replicas[d % n].api,
            draft.clone(),
            stop.clone(),
        ));
        draft_ids.push(draft);
    }
    let per_draft = Duration::from_secs_f64(drafts as f64 / appends_per_second);
    for (d, draft) in draft_ids.iter().enumerate() {
        let (http, draft, api, stop) = (
            http.clone(),
            draft.clone(),
            replicas[(d + 1) % n].api,
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_draft);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                n += 1;
                append(
                    &http,
                    api,
                    &draft,
                    &format!("soak segment {n} {}", "x".repeat(200)),
                )
                .await?;
            }
        }));
    }
    if let Some(every) = args.scrape_every {
        let targets: Vec<SocketAddr> = replicas.iter().map(|r| r.metrics).collect();
        let (http, stop) = (http.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                for target in &targets {
                    http.get(format!("http://{target}/metrics"))
                        .send()
                        .await?
                        .bytes()
                        .await?;
                }
            }
        }));
    }
    // (deliveries so far, RSS of each replica), sampled at a steady pace.
    let mut samples: Vec<(f64, Vec<f64>)> = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(sample_every);
    while started.elapsed() < duration {
        tick.tick().await;
        if let Some(failed) = tasks.iter().position(|t| t.is_finished()) {
            stop.cancel();
            return Err(format!(
                "soak task {failed} ended early: {:?}",
                tasks.remove(failed).await?
            )
            .into());
        }
        let count = delivered.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let rss = pids
            .iter()
            .map(|p| rss_bytes(*p))
            .collect::<Res<Vec<f64>>>()?;
        eprintln!(
            "soak: {:>6.0} s {:>10.0} deliveries  RSS MB {}",
            started.elapsed().as_secs_f64(),
            count,
            rss.iter()
                .map(|r| format!("{:.1}", r / 1e6))
                .collect::<Vec<_>>()
                .join(" ")
        );
        samples.push((count, rss));
    }
    stop.cancel();
    for task in tasks {
        task.await??;
    }
    let kicked = {
        let mut total = 0.0;
        for r in &replicas {
            total += r
                .metric(http, "ws_disconnects_total{reason=\"slow_consumer\"}")
                .await?;
        }
        total
    };
    // The load has stopped and every socket is closed; give the replicas
    // time to drop their rooms and buffers and to hand freed pages back (the
    // trim runs every 10 s), then see what is left.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = pids
        .iter()
        .map(|p| rss_bytes(*p))
        .collect::<Res<Vec<f64>>>()?;
    let window = &samples[samples.len() * 2 / 3..];
    let deliveries = window.last().map(|s| s.0).unwrap_or(0.0) - window[0].0;
    let mut worst = 0.0f64;
    let mut failures = Vec::new();
    for (i, _) in pids.iter().enumerate() {
        let points: Vec<(f64, f64)> = window.iter().map(|(x, rss)| (*x, rss[i])).collect();
        let per_million = slope(&points) * 1e6;
        let growth = per_million * deliveries / 1e6;
        worst = worst.max(per_million);
        if per_million > SOAK_BOUND_PER_MILLION && growth > SOAK_NOISE_FLOOR {
            failures.push(format!(
                "replica {i} grew {:.0} KB per million deliveries ({:.0} KB over the last third)",
                per_million / 1024.0,
                growth / 1024.0
            ));
        }
    }
    let scraped = match args.scrape_every {
        Some(every) => format!("scraped every {} s", every.as_secs()),
        None => "never scraped".into(),
    };
    let mode = if args.standalone {
        "1 standalone replica"
    } else {
        "3 replicas"
    };
    let label = format!(
        "{mode}, {drafts} drafts x {watchers_per_draft} watchers, {appends_per_second} appends/s, {minutes} min, {scraped}"
    );
    push(
        rows,
        "soak",
        format!("deliveries ({label})"),
        "count",
        delivered.load(std::sync::atomic::Ordering::Relaxed) as f64,
        None,
    );
    push(
        rows,
        "soak",
        "slow consumers kicked".into(),
        "count",
        kicked,
        None,
    );
    let last = samples.last().map(|s| s.1.clone()).unwrap_or_default();
    push(
        rows,
        "soak",
        "RSS per replica at the end (largest)".into(),
        "MB",
        last.iter().cloned().fold(0.0, f64::max) / 1e6,
        None,
    );
    push(
        rows,
        "soak",
        "RSS per replica before the load (largest)".into(),
        "MB",
        baseline.iter().cloned().fold(0.0, f64::max) / 1e6,
        None,
    );
    push(
        rows,
        "soak",
        "RSS per replica after the load stopped and sockets closed (largest)".into(),
        "MB",
        after.iter().cloned().fold(0.0, f64::max) / 1e6,
        None,
    );
    push(
        rows,
        "soak",
        "RSS growth over the last third (worst replica)".into(),
        "KB",
        worst * deliveries / 1e6 / 1024.0,
        Some(Ceiling("noise floor, KB".into(), SOAK_NOISE_FLOOR / 1024.0)),
    );
    push(
        rows,
        "soak",
        "RSS slope over the last third (worst replica)".into(),
        "KB/M deliveries",
        worst / 1024.0,
        Some(Ceiling(
            "bound, KB per million deliveries".into(),
            SOAK_BOUND_PER_MILLION / 1024.0,
        )),
    );
    if args.standalone {
        // Every delivery on the one replica is one of `watchers_per_draft`
        // copies of a stored event; the store grows by design.
        push(
            rows,
            "soak",
            "RSS per stored event (standalone keeps every event)".into(),
            "bytes",
            worst / 1e6 * watchers_per_draft as f64,
            None,
        );
        return Ok(());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// One ceiling figure: what was run, and its value.
struct Ceiling(String, f64);

fn push(
    rows: &mut Vec<Row>,
    scenario: &'static str,
    measure: String,
    unit: &'static str,
    value: f64,
    ceiling: Option<Ceiling>,
) {
    let index = match rows
        .iter()
        .position(|r| r.scenario == scenario && r.measure == measure)
    {
        Some(i) => i,
        None => {
            rows.push(Row {
                scenario,
                measure,
                unit,
                values: Vec::new(),
                ceiling: None,
            });
            rows.len() - 1
        }
    };
    let row = &mut rows[index];
    row.values.push(value);
    if let Some(Ceiling(label, figure)) = ceiling {
        row.ceiling
            .get_or_insert_with(|| (label, Vec::new()))
            .1
            .push(figure);
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let repeat = args
        .repeat
        .unwrap_or(if args.size == Size::Full { 3 } else { 1 });
    let all = [
        "fanout",
        "shards",
        "connections",
        "ratelimit",
        "appends",
        "http",
        "soak",
    ];
    let chosen: Vec<&str> = if args.scenario.is_empty() {
        all.iter()
            .copied()
            .filter(|s| *s != "soak" || args.size == Size::Smoke)
            .collect()
    } else {
        all.iter()
            .copied()
            .filter(|s| args.scenario.iter().any(|a| a == s))
            .collect()
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let backing = match Backing::create().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: cannot prepare Postgres and Redis: {e}");
            std::process::exit(1);
        }
    };
    let soak_args = SoakArgs {
        minutes: args.minutes,
        scrape_every: (args.scrape_seconds > 0).then(|| Duration::from_secs(args.scrape_seconds)),
        standalone: args.standalone,
        watchers: args.watchers,
        rate: args.rate,
    };
    let mut rows = Vec::new();
    let mut failed = None;
    'runs: for run in 0..repeat {
        for scenario in &chosen {
            if *scenario == "soak" && run > 0 {
                // One long run says more than the median of several.
                continue;
            }
            eprintln!("bench: run {} of {repeat}: {scenario}", run + 1);
            let result = match *scenario {
                "fanout" => fanout(args.size, &backing, &http, &mut rows).await,
                "shards" => shards(args.size, &backing, &http, &mut rows).await,
                "connections" => connections(args.size, &http, &mut rows).await,
                "ratelimit" => ratelimit(args.size, &backing, &http, &mut rows).await,
                "appends" => appends(args.size, &backing, &http, &mut rows).await,
                "soak" => soak(args.size, soak_args, &backing, &http, &mut rows).await,
                _ => http_overhead(args.size, &http, &mut rows).await,
            };
            if let Err(e) = result {
                failed = Some(format!("{scenario}: {e}"));
                break 'runs;
            }
        }
    }
    backing.drop_schema().await;
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "collabd benchmarks: commit {commit}, size {:?}, {repeat} run(s) each, medians",
        args.size
    );
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| scenario | measure | median | unit | runs | ceiling (same machine, same run) |");
    println!("| --- | --- | ---: | --- | ---: | --- |");
    for row in &rows {
        println!(
            "| {} | {} | {:.2} | {} | {} | {} |",
            row.scenario,
            row.measure,
            median(&row.values),
            row.unit,
            row.values.len(),
            row.ceiling
                .as_ref()
                .map(|(label, figures)| format!("{label}: {:.0}", median(figures)))
                .unwrap_or_else(|| "-".into())
        );
    }
    if let Some(error) = failed {
        eprintln!("bench: failed: {error}");
        std::process::exit(1);
    }
}
