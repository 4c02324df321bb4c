//! Test harness: `spawn_app()` starts the real server on 127.0.0.1:0 with its
//! own memory backends, and gives HTTP and WebSocket helpers that read like
//! the story of a test. Logs print only when TEST_LOG is set.

pub mod balancer;
pub mod cluster;
pub mod logfields;
pub mod node;
pub mod otlp;
pub mod pg;
pub mod proxy;
pub mod redis;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use collabd::adapters::memory::MemoryAudit;
use collabd::app::{run, AppState, Backends};
use collabd::auth::Authenticator;
use collabd::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The built binary with none of the caller's environment but `PATH`: a
/// developer's exported `DATABASE_URL`, `REDIS_URL` or `REDIS_KEY_PREFIX`
/// (docs/CLUSTER.md tells them to export these) never reaches a test's server.
pub fn collabd_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_collabd"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

/// Runs a `collabd` command that must refuse to start, asserts that it said
/// why in exactly one line on stderr, and returns (that line, stdout).
pub fn refused_start(cmd: &mut std::process::Command) -> (String, String) {
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert!(!output.status.success(), "it started: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    (stderr, String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every `.rs` file under `dir`.
pub fn rust_sources(dir: &std::path::Path, into: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The value of one series (`name{labels}` as exposed) in a Prometheus
/// exposition; 0 when absent.
pub fn series_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The metric families a Prometheus exposition declares (`# TYPE` lines).
pub fn family_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// An address nothing listens on (it did a moment ago).
pub fn closed_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

static LOGS: Once = Once::new();

fn init_logs() {
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            collabd::telemetry::init_logging(collabd::telemetry::LogFormat::Pretty, "debug");
        }
    });
}

/// Which adapters a test runs against: the conformance suite runs each test
/// with every set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Standalone: everything in process.
    Memory,
    /// Postgres, with fanout, limits and leases in process (one replica).
    Postgres,
    /// Cluster mode: Postgres plus Redis fanout, limits and leases, under a
    /// key prefix of the test's own.
    Cluster,
}

/// Declares each named `async fn(kind: Kind)` as three tests, one per kind.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::common::Kind::Memory).await
            })+
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::common::Kind::Postgres).await
            })+
        }
        mod cluster {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::common::Kind::Cluster).await
            })+
        }
    };
}

/// One audit row, whichever sink holds it.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub action: String,
    pub user_id: String,
    pub request_id: String,
    pub draft_id: Option<uuid::Uuid>,
    pub metadata: Value,
    pub ip: Option<String>,
}

/// An HTTP and WebSocket client of one server, as one user or another.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    auth: Authenticator,
}

impl Api {
    pub fn new(addr: SocketAddr, secret: &str) -> Api {
        Api {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            auth: Authenticator::new(secret),
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.auth.mint(user, Duration::from_secs(3600)).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, user: &str, path: &str) -> Reply {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap();
        read_reply(response).await
    }

    pub async fn post(&self, user: &str, path: &str, body: Value) -> Reply {
        self.post_with(user, path, &[], body).await
    }

    /// A POST with extra headers, e.g. `X-Request-Id` or `Idempotency-Key`.
    pub async fn post_with(
        &self,
        user: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Reply {
        let mut request = self.http.post(self.url(path)).bearer_auth(self.token(user));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read_reply(request.json(&body).send().await.unwrap()).await
    }

    /// Creates a draft owned by `user` and returns its id.
    pub async fn create_draft(&self, user: &str, title: &str) -> String {
        let reply = self
            .post(user, "/v1/collab/drafts", json!({ "title": title }))
            .await;
        assert_eq!(reply.status, 201, "create failed: {}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn add(&self, owner: &str, draft: &str, user: &str, role: &str) -> Reply {
        self.post(
            owner,
            &format!("/v1/collab/drafts/{draft}/collaborators"),
            json!({ "user_id": user, "role": role }),
        )
        .await
    }

    pub async fn append(&self, user: &str, draft: &str, content: &str) -> Reply {
        self.post(
            user,
            &format!("/v1/collab/drafts/{draft}/segments"),
            json!({ "content": content }),
        )
        .await
    }

    pub async fn pass(&self, user: &str, draft: &str, to: &str) -> Reply {
        self.post(
            user,
            &format!("/v1/collab/drafts/{draft}/ring/pass"),
            json!({ "to_user_id": to }),
        )
        .await
    }

    pub async fn head(&self, user: &str, draft: &str) -> u64 {
        let reply = self.get(user, &format!("/v1/collab/drafts/{draft}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["seq"].as_u64().unwrap()
    }

    /// The seqs of the draft's log, as `GET /events` gives them.
    pub async fn event_seqs(&self, user: &str, draft: &str) -> Vec<u64> {
        let reply = self
            .get(
                user,
                &format!("/v1/collab/drafts/{draft}/events?limit=1000"),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        seqs_of(&reply)
    }

    pub fn ws_url(&self, draft: &str, query: &str) -> String {
        format!("ws://{}/v1/collab/drafts/{draft}/ws{query}", self.addr)
    }

    /// Opens a socket as `user` (token in the header) and returns it unread.
    pub async fn ws_raw(&self, user: &str, draft: &str, query: &str) -> WsClient {
        let mut request = self.ws_url(draft, query).into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token(user)).parse().unwrap(),
        );
        WsClient::connect(request).await
    }

    /// Opens a socket and reads its `ready` frame.
    pub async fn ws(&self, user: &str, draft: &str, since: Option<u64>) -> (WsClient, Value) {
        let query = since.map(|s| format!("?since={s}")).unwrap_or_default();
        let mut ws = self.ws_raw(user, draft, &query).await;
        let ready = ws.next_json().await;
        assert_eq!(ready["type"], "ready", "first frame: {ready}");
        (ws, ready)
    }
}

pub struct TestApp {
    pub api: Api,
    /// The management listener: /metrics and the probes.
    pub metrics_addr: SocketAddr,
    pub audit: Arc<MemoryAudit>,
    /// The schema a Postgres-backed app uses.
    pub db: Option<Arc<pg::TestDb>>,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// The Redis prefix of a cluster-mode app, deleted after the server.
    prefix: Option<redis::TestPrefix>,
}

pub async fn spawn_app(kind: Kind) -> TestApp {
    spawn_with(kind, |_| {}).await
}

/// Starts a server whose configuration `adjust` has changed from the defaults.
pub async fn spawn_with(kind: Kind, adjust: impl FnOnce(&mut Config)) -> TestApp {
    match kind {
        Kind::Memory => {
            let audit = Arc::new(MemoryAudit::new());
            spawn_with_backends(adjust, Backends::memory(audit.clone()), audit).await
        }
        Kind::Postgres => spawn_on(pg::TestDb::create().await, None, adjust).await,
        Kind::Cluster => {
            let prefix = redis::TestPrefix::new();
            let name = prefix.prefix.clone();
            let mut app = spawn_on(pg::TestDb::create().await, None, |c| {
                c.redis_url = Some(redis::base_url());
                c.redis_key_prefix = name;
                adjust(c)
            })
            .await;
            app.prefix = Some(prefix);
            app
        }
    }
}

/// Starts a Postgres-backed server on an existing schema (a second replica, or
/// a restart), optionally reaching Postgres through a proxy.
pub async fn spawn_on(
    db: Arc<pg::TestDb>,
    via: Option<SocketAddr>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = test_config();
    config.database_url = Some(db.url_via(via));
    adjust(&mut config);
    let backends = Backends::from_config(&config)
        .await
        .expect("postgres backends");
    let mut app = serve(config, backends, Arc::new(MemoryAudit::new())).await;
    app.db = Some(db);
    app
}

fn test_config() -> Config {
    init_logs();
    let mut config = Config::defaults();
    config.auth_jwt_secret = "test-secret".into();
    config.shutdown_timeout_seconds = 5;
    config
}

pub async fn spawn_with_backends(
    adjust: impl FnOnce(&mut Config),
    backends: Backends,
    audit: Arc<MemoryAudit>,
) -> TestApp {
    let mut config = test_config();
    adjust(&mut config);
    serve(config, backends, audit).await
}

async fn serve(config: Config, backends: Backends, audit: Arc<MemoryAudit>) -> TestApp {
    config.validate().expect("test config is valid");
    let secret = config.auth_jwt_secret.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let management = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = management.local_addr().unwrap();
    let state = AppState::new(config, backends);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, Some(management), state.clone(), async move {
        let _ = stopped.await;
    }));
    TestApp {
        api: Api::new(addr, &secret),
        metrics_addr,
        audit,
        db: None,
        state,
        stop: Some(stop),
        server: Some(server),
        prefix: None,
    }
}

/// The seqs of a list answer's items, in order.
pub fn seqs_of(reply: &Reply) -> Vec<u64> {
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// A response, read whole: status, headers and JSON body.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The error code of an error envelope, checking the envelope's shape.
    pub fn code(&self) -> &str {
        let error = &self.body["error"];
        assert!(
            error["message"].is_string(),
            "envelope lacks a message: {}",
            self.body
        );
        assert!(
            error["request_id"].is_string(),
            "envelope lacks a request_id: {}",
            self.body
        );
        error["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error envelope: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn read_reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    Reply {
        status,
        headers,
        body,
    }
}

impl TestApp {
    /// Every audit row so far, oldest first.
    pub async fn audit_rows(&self) -> Vec<AuditRow> {
        match &self.db {
            None => self
                .audit
                .rows()
                .into_iter()
                .map(|r| AuditRow {
                    action: r.action.as_str().to_owned(),
                    user_id: r.user_id.to_string(),
                    request_id: r.request_id,
                    draft_id: r.draft_id,
                    metadata: r.metadata,
                    ip: r.ip,
                })
                .collect(),
            Some(db) => db
                .client()
                .await
                .query(
                    "SELECT action, user_id, request_id, draft_id, metadata, ip
                       FROM audit_events ORDER BY ts, id",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| AuditRow {
                    action: r.get(0),
                    user_id: r.get(1),
                    request_id: r.get(2),
                    draft_id: r.get(3),
                    metadata: r.get(4),
                    ip: r.get(5),
                })
                .collect(),
        }
    }

    /// The /metrics text of the management listener.
    pub async fn scrape(&self) -> String {
        let response = self
            .http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Starts draining, as SIGTERM would.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Drains and waits for the server to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        let server = self.server.take().unwrap();
        within(server).await.unwrap()
    }
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// Runs cleanup from a `Drop`: on a fresh runtime on its own thread (a drop
/// may happen inside a test's runtime), waiting for it to finish.
pub fn cleanup<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    })
    .join();
}

/// Waits for a future, failing the test after `DEADLINE`.
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("timed out waiting for a condition")
}

/// Polls `check` until it returns true, failing the test after `DEADLINE`.
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a socket ended: the last error frame's code and the close frame.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub error_code: Option<String>,
    pub close_code: Option<u16>,
    pub reason: Option<String>,
}

impl WsClient {
    pub async fn connect(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> WsClient {
        Self::try_connect(request).await.expect("websocket connect")
    }

    pub async fn try_connect(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (stream, _) = within(tokio_tungstenite::connect_async(request)).await?;
        Ok(WsClient { stream })
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Sends without caring whether the server is still listening.
    pub async fn send_text_unchecked(&mut self, text: &str) {
        let _ = self
            .stream
            .send(Message::Text(text.to_owned().into()))
            .await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::Binary(bytes.into()))
            .await
            .unwrap();
    }

    /// The next JSON text frame.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let message = within(self.stream.next())
                .await
                .expect("socket ended")
                .expect("socket error");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads `n` events and returns their seqs, in arrival order.
    pub async fn next_seqs(&mut self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        while seqs.len() < n {
            let frame = self.next_json().await;
            seqs.push(
                frame["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no seq in {frame}")),
            );
        }
        seqs
    }

    /// Reads until the server closes, returning the last error frame's code,
    /// the close frame and the seqs of any events read on the way.
    pub async fn until_closed(&mut self) -> (Closed, Vec<u64>) {
        let mut closed = Closed {
            error_code: None,
            close_code: None,
            reason: None,
        };
        let mut seqs = Vec::new();
        loop {
            match within(self.stream.next()).await {
                None | Some(Err(_)) => return (closed, seqs),
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == "error" {
                        closed.error_code = frame["code"].as_str().map(str::to_owned);
                    } else if let Some(seq) = frame["seq"].as_u64() {
                        if frame["type"] != "ready" {
                            seqs.push(seq);
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if let Some(frame) = frame {
                        closed.close_code = Some(u16::from(frame.code));
                        closed.reason = Some(frame.reason.to_string());
                    }
                    // Keep polling so the client's close reply goes out and
                    // the handshake completes, as a real client's would.
                    while let Some(Ok(_)) = within(self.stream.next()).await {}
                    return (closed, seqs);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Expects the server to end the socket with this error code and close code.
    pub async fn expect_closed(&mut self, code: &str, close_code: u16) {
        let (closed, _) = self.until_closed().await;
        assert_eq!(
            closed,
            Closed {
                error_code: Some(code.to_owned()),
                close_code: Some(close_code),
                reason: Some(code.to_owned()),
            }
        );
    }

    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}
