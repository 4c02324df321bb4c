//! Start-up in one place, the composition root: turn the configuration into
//! adapters and settings, build the shared state, compose the routers, serve
//! on already-bound listeners until the shutdown future resolves, then drain.
//! The only module that reads `Config` or names a concrete adapter.
//!
//! Draining (`run`): readiness turns false and new sockets are refused while
//! requests and open sockets are still served for
//! `SHUTDOWN_DRAIN_DELAY_SECONDS`; then the listener closes, every socket is
//! told `shutdown` and closed with 1001, and in-flight requests finish, each
//! within `SHUTDOWN_TIMEOUT_SECONDS`; the management listener answers to the
//! end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::{middleware, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::adapters::fallback::{self, FallbackLimiter, ReplicaCount};
use crate::adapters::memory::{
    MemoryAudit, MemoryFanout, MemoryLeases, MemoryRateLimiter, MemoryStore, SoleLeader,
};
use crate::adapters::otlp::{MetricsPush, PushSettings};
use crate::adapters::postgres::claim::{claim, Claim, Sharing};
use crate::adapters::postgres::migrate::MigrateError;
use crate::adapters::postgres::{self, PoolSettings, PostgresAudit, PostgresHealth, PostgresStore};
use crate::adapters::redis::{
    self, RedisFanout, RedisHealth, RedisLeadership, RedisLeases, RedisRateLimiter, RedisSettings,
};
use crate::auth::{AuthSettings, Authenticator, Jwks, JwksSettings, SharedSecret};
use crate::collab::audit::Auditor;
use crate::collab::service::{CollabCaps, CollabService};
use crate::config::{self, Config, MigrateArgs};
use crate::error::Error;
use crate::http::body::BodyLimits;
use crate::http::{server, Health, RequestContext};
use crate::limits::http::{Policies, RateLimits};
use crate::ports::{
    AuditSink, Fanout, HealthCheck, Leadership, RateLimiter, RoomSink, Rooms, SocketCaps,
    SocketLeases, Store,
};
use crate::realtime::hub::{Hub, RoomRegistry};
use crate::realtime::ws::{Sessions, SocketSettings};
use crate::telemetry::metrics::UPKEEP_INTERVAL;
use crate::telemetry::{self, Metrics};

/// Which adapters run, as said once in the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Postgres,
    Cluster,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Postgres => "postgres",
            Mode::Cluster => "cluster",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Standalone => "state, fanout and limits in this process",
            Mode::Postgres => {
                "drafts, events and audit in Postgres; fanout and limits in this process"
            }
            Mode::Cluster => {
                "drafts, events and audit in Postgres; fanout, limits and socket caps in Redis"
            }
        }
    }
}

/// The adapters behind every port.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub fanout: Arc<dyn Fanout>,
    pub limiter: Arc<dyn RateLimiter>,
    pub leases: Arc<dyn SocketLeases>,
    pub rooms: Arc<dyn Rooms>,
    pub audit: Arc<dyn AuditSink>,
    pub leadership: Arc<dyn Leadership>,
    /// What the scrape reports as `health_status`, besides the process.
    pub checks: Vec<Arc<dyn HealthCheck>>,
    /// Where the fanout delivers; the hub serves the same rooms.
    pub registry: RoomRegistry,
    pub metrics: Metrics,
    pub mode: Mode,
    /// This replica's claim on the database (Postgres modes): held for the
    /// life of the process.
    pub claim: Option<Claim>,
    /// An identity provider's signing keys (`AUTH_JWKS_URL`), loaded.
    pub jwks: Option<Jwks>,
    /// Where metrics are pushed (`OTEL_METRICS_EXPORTER=otlp`).
    pub metrics_push: Option<Arc<MetricsPush>>,
}

/// The store as a health check, for the modes whose store has no other.
struct StoreHealth(Arc<dyn Store>);

#[async_trait]
impl HealthCheck for StoreHealth {
    fn component(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), Error> {
        self.0.ping().await
    }
}

impl Backends {
    /// Standalone: everything in this process, nothing else needed. The
    /// audit sink is passed in so a caller can read the rows back.
    pub fn memory(audit: Arc<MemoryAudit>) -> Self {
        let metrics = Metrics::new();
        let registry = RoomRegistry::new(metrics.clone());
        let leases = Arc::new(MemoryLeases::new());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        Backends {
            checks: vec![Arc::new(StoreHealth(store.clone()))],
            store,
            fanout: Arc::new(MemoryFanout::new(Arc::new(registry.clone()))),
            limiter: Arc::new(MemoryRateLimiter::new()),
            leases: leases.clone(),
            rooms: leases,
            audit,
            leadership: Arc::new(SoleLeader),
            registry,
            metrics,
            mode: Mode::Standalone,
            claim: None,
            jwks: None,
            metrics_push: None,
        }
    }

    /// Durable: drafts, events and audit rows in Postgres (migrated first);
    /// fanout and limits in this process, so this replica must be the only
    /// one on the database (it is refused otherwise).
    pub async fn postgres(config: &Config, settings: &PoolSettings) -> Result<Self, StartError> {
        Backends::durable(config, settings, Sharing::Alone).await
    }

    async fn durable(
        config: &Config,
        settings: &PoolSettings,
        sharing: Sharing,
    ) -> Result<Self, StartError> {
        // A replica being replaced may still be draining: its sockets, then
        // its requests, each get the shutdown timeout after the drain delay.
        let wait = Duration::from_secs(
            config.database_connect_timeout_seconds
                + config.shutdown_drain_delay_seconds
                + 2 * config.shutdown_timeout_seconds,
        );
        let claim = claim(settings, sharing, wait).await?;
        let pool = postgres::pool(settings)?;
        let applied = postgres::migrate::migrate(&pool).await?;
        tracing::info!(applied = ?applied, "database schema is current");
        let timeout = config.database_query_timeout();
        let mut backends = Backends::memory(Arc::new(MemoryAudit::new()));
        let metrics = backends.metrics.clone();
        let store = PostgresStore::new(pool.clone(), timeout, metrics.clone());
        backends.store = Arc::new(store.clone());
        backends.audit = Arc::new(PostgresAudit::new(pool, timeout, metrics.clone()));
        backends.checks = vec![Arc::new(PostgresHealth::new(store, metrics))];
        backends.mode = Mode::Postgres;
        backends.claim = Some(claim);
        Ok(backends)
    }

    /// Cluster: Postgres as above, and Redis for room fanout, rate limits,
    /// socket caps and leadership shared by every replica.
    pub async fn cluster(
        config: &Config,
        database: &PoolSettings,
        settings: &RedisSettings,
    ) -> Result<Self, StartError> {
        let mut backends = Backends::durable(config, database, Sharing::Cluster).await?;
        let pool = redis::pool(settings).await?;
        let metrics = backends.metrics.clone();
        let rooms: Arc<dyn RoomSink> = Arc::new(backends.registry.clone());
        let fanout = RedisFanout::start(settings, pool.clone(), rooms, metrics.clone()).await?;
        let ttl = Duration::from_secs(config.ws_lease_ttl_seconds);
        let leases =
            RedisLeases::start(pool.clone(), &settings.prefix, ttl, metrics.clone()).await?;
        let replicas: ReplicaCount = {
            let leases = leases.clone();
            Arc::new(move || leases.replicas())
        };
        let limiter = RedisRateLimiter::new(pool.clone(), &settings.prefix, metrics.clone());
        backends.limiter = Arc::new(FallbackLimiter::new(
            Arc::new(limiter),
            fail_mode(config.rate_limit_fail_mode),
            replicas,
            metrics,
        ));
        backends.fanout = Arc::new(fanout);
        backends.leases = leases.clone();
        backends.rooms = leases;
        backends.leadership = Arc::new(RedisLeadership::new(pool.clone(), &settings.prefix));
        backends.checks.push(Arc::new(RedisHealth::new(pool)));
        backends.mode = Mode::Cluster;
        Ok(backends)
    }

    /// The adapters the configuration asks for.
    pub async fn from_config(config: &Config) -> Result<Self, StartError> {
        let mut backends = match (pool_settings(config), redis_settings(config)) {
            (Some(database), Some(redis)) => Backends::cluster(config, &database, &redis).await?,
            (Some(database), None) => Backends::postgres(config, &database).await?,
            _ => Backends::memory(Arc::new(MemoryAudit::new())),
        };
        backends.jwks = identity_provider(config).await?;
        backends.metrics_push = metrics_push(config, &backends.metrics)?;
        Ok(backends)
    }
}

/// The identity provider's keys, when `AUTH_JWKS_URL` is set: read once now,
/// so a replica that cannot read them says so and does not start.
async fn identity_provider(config: &Config) -> Result<Option<Jwks>, StartError> {
    let Some(location) = &config.auth_jwks_url else {
        return Ok(None);
    };
    let settings = JwksSettings {
        refresh: Duration::from_secs(config.auth_jwks_refresh_seconds),
        min_refresh: Duration::from_secs(config.auth_jwks_min_refresh_seconds),
    };
    let load = async { Jwks::load(crate::adapters::jwks::source(location)?, settings).await };
    load.await.map(Some).map_err(StartError::Jwks)
}

/// The OTLP metrics push, when `OTEL_METRICS_EXPORTER=otlp`: to
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as given, else to
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (default http://localhost:4318) + `/v1/metrics`.
fn metrics_push(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<MetricsPush>>, StartError> {
    if config.otel_metrics_exporter != config::MetricsExporter::Otlp {
        return Ok(None);
    }
    let endpoint = config
        .otel_exporter_otlp_metrics_endpoint
        .clone()
        .unwrap_or_else(|| {
            let base = config
                .otel_exporter_otlp_endpoint
                .as_deref()
                .unwrap_or("http://localhost:4318");
            format!("{}/v1/metrics", base.trim_end_matches('/'))
        });
    let push = MetricsPush::new(PushSettings {
        endpoint,
        timeout: Duration::from_millis(config.otel_metric_export_timeout),
        service_name: config.otel_service_name.clone(),
        instance_id: telemetry::instance_id().to_owned(),
        started: metrics.started(),
    })
    .map_err(StartError::MetricsPush)?;
    Ok(Some(Arc::new(push)))
}

/// What tokens must be signed with and say, from the configuration.
pub fn auth_settings(config: &Config) -> AuthSettings {
    AuthSettings {
        secrets: config
            .shared_secrets()
            .into_iter()
            .map(|(kid, secret)| SharedSecret { kid, secret })
            .collect(),
        issuer: config.auth_jwt_issuer.clone(),
        audience: config.auth_jwt_audience.clone(),
    }
}

// ---------- configuration into settings ----------

/// Postgres pool settings, when a database is configured.
pub fn pool_settings(config: &Config) -> Option<PoolSettings> {
    config.database_url.as_ref().map(|url| PoolSettings {
        url: url.clone(),
        max_size: config.database_pool_size as usize,
        connect_timeout: Duration::from_secs(config.database_connect_timeout_seconds),
    })
}

/// Redis settings, when cluster mode is configured.
pub fn redis_settings(config: &Config) -> Option<RedisSettings> {
    config.redis_url.as_ref().map(|url| RedisSettings {
        url: url.clone(),
        prefix: config.redis_key_prefix.clone(),
        pool_size: config.redis_pool_size as usize,
        timeout: Duration::from_millis(config.redis_timeout_ms),
    })
}

fn fail_mode(mode: config::FailMode) -> fallback::FailMode {
    match mode {
        config::FailMode::Local => fallback::FailMode::Local,
        config::FailMode::Open => fallback::FailMode::Open,
        config::FailMode::Closed => fallback::FailMode::Closed,
    }
}

pub fn log_format(config: &Config) -> telemetry::LogFormat {
    match config.log_format() {
        config::LogFormat::Json => telemetry::LogFormat::Json,
        config::LogFormat::Pretty => telemetry::LogFormat::Pretty,
    }
}

pub fn trace_settings(config: &Config) -> telemetry::TraceSettings {
    use config::{TracesExporter as E, TracesSampler as S};
    use telemetry::{Exporter, Sampling};
    telemetry::TraceSettings {
        enabled: config.otel_enabled,
        otlp_endpoint: config.otel_exporter_otlp_endpoint.clone(),
        exporter: config.otel_traces_exporter.map(|e| match e {
            E::Otlp => Exporter::Otlp,
            E::Console => Exporter::Console,
            E::None => Exporter::None,
        }),
        service_name: config.otel_service_name.clone(),
        sampling: match config.otel_traces_sampler {
            Some(S::AlwaysOn) => Sampling::AlwaysOn,
            Some(S::AlwaysOff) => Sampling::AlwaysOff,
            Some(S::Traceidratio) => Sampling::Ratio,
            None | Some(S::ParentbasedAlwaysOn) => Sampling::ParentAlwaysOn,
            Some(S::ParentbasedAlwaysOff) => Sampling::ParentAlwaysOff,
            Some(S::ParentbasedTraceidratio) => Sampling::ParentRatio,
        },
        sampler_arg: config.otel_traces_sampler_arg,
    }
}

/// The caps a socket counts against: the WS_* caps when WS_LIMITS_ENABLED,
/// and MAX_WS_CONNECTIONS_PER_DRAFT always (the tighter per-draft cap wins).
fn socket_caps(config: &Config) -> SocketCaps {
    let enabled = config.ws_limits_enabled;
    let per_draft = [
        enabled.then_some(config.ws_max_sockets_per_draft),
        config.max_ws_connections_per_draft,
    ]
    .into_iter()
    .flatten()
    .min();
    SocketCaps {
        per_user: enabled.then_some(config.ws_max_sockets_per_user),
        per_draft,
        global: enabled.then_some(config.ws_max_sockets_global),
    }
}

/// `collabd migrate`: the migrations, on a one-connection pool.
pub async fn migrate(args: &MigrateArgs) -> Result<Vec<i32>, StartError> {
    let settings = PoolSettings {
        url: args.database_url.clone(),
        max_size: 1,
        connect_timeout: Duration::from_secs(args.database_connect_timeout_seconds),
    };
    let pool = postgres::pool(&settings)?;
    Ok(postgres::migrate::migrate(&pool).await?)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Backend(#[from] Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] MigrateError),
    #[error("AUTH_JWKS_URL: {0}")]
    Jwks(Error),
    #[error("OTEL_METRICS_EXPORTER=otlp: {0}")]
    MetricsPush(Error),
    #[error("cannot listen on {addr} ({variable}): {source}")]
    Bind {
        variable: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

// ---------- the shared state ----------

/// Everything the routers and background tasks share. Cheap to clone: all
/// shared parts are `Arc`s. Features see only their part of it, through
/// `FromRef`.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub collab: CollabService,
    pub sessions: Sessions,
    pub rate_limits: RateLimits,
    pub request_context: RequestContext,
    pub metrics: Metrics,
    store: Arc<dyn Store>,
    audit: Arc<dyn AuditSink>,
    rooms: Arc<dyn Rooms>,
    leadership: Arc<dyn Leadership>,
    checks: Arc<[Arc<dyn HealthCheck>]>,
    /// Held, never read: released when the last clone of the state goes.
    _claim: Option<Arc<Claim>>,
    metrics_push: Option<Arc<MetricsPush>>,
    /// Cancelled when draining starts; sockets watch it.
    pub shutdown: CancellationToken,
    /// Tracks socket sessions so shutdown can wait for their goodbyes.
    pub sockets: TaskTracker,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.sessions.auth.clone()
    }
}

impl FromRef<AppState> for CollabService {
    fn from_ref(state: &AppState) -> Self {
        state.collab.clone()
    }
}

impl FromRef<AppState> for Sessions {
    fn from_ref(state: &AppState) -> Self {
        state.sessions.clone()
    }
}

impl AppState {
    pub fn new(config: Config, backends: Backends) -> Self {
        let metrics = backends.metrics.clone();
        let auth = Authenticator::counted(
            auth_settings(&config),
            backends.jwks.clone(),
            metrics.clone(),
        );
        let auditor = Auditor::new(
            backends.audit.clone(),
            config.audit_enabled,
            config.audit_sample_rate,
            metrics.clone(),
        );
        let caps = CollabCaps {
            max_collaborators: config.max_collaborators_per_draft,
            max_segments: config.max_segments_per_draft,
        };
        let collab = CollabService::new(
            backends.store.clone(),
            backends.fanout.clone(),
            auditor,
            caps,
            metrics.clone(),
        );
        let hub = Hub::new(
            backends.registry,
            backends.store.clone(),
            backends.fanout,
            metrics.clone(),
        );
        let shutdown = CancellationToken::new();
        let sockets = TaskTracker::new();
        let sessions = Sessions {
            auth: auth.clone(),
            collab: collab.clone(),
            hub,
            leases: backends.leases,
            caps: socket_caps(&config),
            settings: SocketSettings {
                max_message_bytes: config.ws_max_message_bytes as usize,
                outbound_queue: config.ws_outbound_queue as usize,
                allowed_origins: config.ws_allowed_origins.clone().into(),
                ping_interval: Duration::from_secs(config.ws_ping_interval_seconds),
                idle_timeout: Duration::from_secs(config.ws_idle_timeout_seconds),
                inbound_per_second: config.ws_inbound_per_second,
                inbound_burst: config.ws_inbound_burst,
            },
            metrics: metrics.clone(),
            draining: shutdown.clone(),
            closing: CancellationToken::new(),
            tracker: sockets.clone(),
        };
        let rate_limits = RateLimits {
            enabled: config.rate_limit_enabled,
            limiter: backends.limiter,
            policies: Arc::new(Policies::per_minute(
                (
                    config.rate_limit_per_minute_default,
                    config.rate_limit_burst_default,
                ),
                (
                    config.rate_limit_per_minute_mutation,
                    config.rate_limit_burst_mutation,
                ),
            )),
            auth,
            metrics: metrics.clone(),
        };
        let proxies = config.trusted_proxies.clone();
        let request_context = RequestContext {
            trusted: Arc::new(move |ip| proxies.contains(ip)),
            metrics: metrics.clone(),
        };
        AppState {
            config: Arc::new(config),
            collab,
            sessions,
            rate_limits,
            request_context,
            metrics,
            store: backends.store,
            audit: backends.audit,
            rooms: backends.rooms,
            leadership: backends.leadership,
            checks: backends.checks.into(),
            _claim: backends.claim.map(Arc::new),
            metrics_push: backends.metrics_push,
            shutdown,
            sockets,
        }
    }

    /// Brings the scrape-time figures up to date: process, backend health
    /// and pool gauges, active rooms. Each check is bounded so a dead
    /// backend cannot stall a scrape.
    pub async fn collect_metrics(&self) {
        const CHECK: Duration = Duration::from_secs(1);
        self.metrics.process();
        self.metrics.run_upkeep();
        for check in self.checks.iter() {
            let answered = tokio::time::timeout(CHECK, check.check()).await;
            self.metrics
                .health(check.component(), matches!(answered, Ok(Ok(()))));
        }
        if let Ok(Ok(rooms)) = tokio::time::timeout(CHECK, self.rooms.active_rooms()).await {
            self.metrics.active_rooms(rooms);
        }
    }

    /// One round of the state gauges: the replica that leads the job reports
    /// the store's totals; the others report zeros, so a fleet sum counts
    /// them once.
    pub async fn refresh_stored_totals(&self) {
        let every = Duration::from_secs(self.config.state_metrics_interval_seconds);
        if !self.leadership.lead("state-gauges", every * 2).await {
            self.metrics.state(0, 0, 0);
            return;
        }
        match (self.store.counts().await, self.audit.count().await) {
            (Ok(counts), Ok(rows)) => self.metrics.state(counts.drafts, counts.segments, rows),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error.message = %e, "state gauges not refreshed")
            }
        }
    }
}

#[async_trait]
impl Health for AppState {
    /// Readiness: not draining and the store answers. Mirrors the result
    /// into `health_status{component="store"}`.
    async fn ready(&self) -> Result<(), Error> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Unavailable("draining".into()));
        }
        let store = self.store.ping().await;
        self.metrics.health("store", store.is_ok());
        store
    }

    async fn metrics_text(&self) -> String {
        self.collect_metrics().await;
        self.metrics.render()
    }
}

impl AppState {
    /// One OTLP metrics push of what /metrics would answer now, when the
    /// push is on.
    async fn push_metrics(&self) {
        if let Some(push) = &self.metrics_push {
            push.push(&self.metrics_text().await).await;
        }
    }
}

/// The public API: every feature's routes behind the request context,
/// CORS, the rate limit and the body limit.
pub fn public_router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(crate::collab::http::router())
        .merge(crate::realtime::ws::router())
        .merge(crate::http::probes::<AppState, AppState>())
        .merge(crate::http::openapi::router())
        .fallback(crate::http::not_found)
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        // A backstop only: read_whole has refused larger bodies already.
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Inside the rate limit: a throttled client's body is never read.
        .layer(middleware::from_fn_with_state(
            BodyLimits {
                max_bytes: state.config.max_body_bytes,
                timeout: Duration::from_secs(state.config.http_body_timeout_seconds),
            },
            crate::http::body::read_whole,
        ))
        .layer(middleware::from_fn_with_state(
            state.rate_limits.clone(),
            crate::limits::http::rate_limit,
        ));
    // Outside the rate limit, so a preflight is answered as it is; inside
    // the request context, so it has an id and an access line.
    let routes = match crate::http::cors::layer(&state.config.cors_allowed_origins) {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    routes
        .layer(middleware::from_fn_with_state(
            state.request_context.clone(),
            crate::http::request_context,
        ))
        .with_state(state)
}

// ---------- serving ----------

/// Serves the public API on `public` and, when given, /metrics and the
/// probes on `management`, until `shutdown` resolves; then drains and returns.
///
/// The drain, in order: readiness turns false on both listeners and new
/// sockets are refused, while every request and open socket is still served
/// for `SHUTDOWN_DRAIN_DELAY_SECONDS` (load balancers see the 503 and stop
/// routing); then the public listener stops accepting, every socket is told
/// `shutdown` (1001) and in-flight requests finish, each within
/// `SHUTDOWN_TIMEOUT_SECONDS`; the management listener answers to the end.
pub async fn run(
    public: TcpListener,
    management: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let draining = state.shutdown.clone();
    let closing = state.sessions.closing.clone();
    let sockets = state.sockets.clone();
    let grace = state.config.shutdown_timeout();
    let delay = Duration::from_secs(state.config.shutdown_drain_delay_seconds);
    let timeouts = server::Timeouts {
        header: Duration::from_secs(state.config.http_header_timeout_seconds),
        keep_alive: Duration::from_secs(state.config.http_keepalive_timeout_seconds),
    };
    let background = spawn_background(&state);
    let management_done = CancellationToken::new();
    if let Some(listener) = management {
        let app =
            crate::http::management::router(state.clone(), state.config.metrics_auth_token.clone());
        let stopped = management_done.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = server::serve(listener, app, timeouts, stopped).await {
                tracing::error!(error.message = %e, "management listener failed");
            }
        });
    }
    let stop_accepting = CancellationToken::new();
    let last_push = state
        .metrics_push
        .clone()
        .map(|push| (push, state.metrics.clone()));
    let app = public_router(state);
    let mut server = tokio::spawn(server::serve(
        public,
        app,
        timeouts,
        stop_accepting.clone().cancelled_owned(),
    ));
    tokio::select! {
        _ = shutdown => {}
        _ = draining.cancelled() => {}
        // The server task ended by itself (it panicked): nothing to drain.
        ended = &mut server => {
            background.cancel();
            management_done.cancel();
            return ended.unwrap_or_else(|join| Err(std::io::Error::other(join)));
        }
    }
    tracing::info!(
        delay_seconds = delay.as_secs(),
        "shutdown requested: draining"
    );
    draining.cancel();
    tokio::time::sleep(delay).await;
    stop_accepting.cancel();
    background.cancel();
    closing.cancel();
    sockets.close();
    if tokio::time::timeout(grace, sockets.wait()).await.is_err() {
        tracing::warn!("sockets still open after the shutdown timeout; dropping them");
    }
    let result = match tokio::time::timeout(grace, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!("requests still running after the shutdown timeout; exiting");
            Ok(())
        }
    };
    if let Some((push, metrics)) = last_push {
        push_last_metrics(&push, &metrics).await;
    }
    management_done.cancel();
    result
}

/// The most the push on exit may add to a shutdown.
const LAST_PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The figures of the last interval, drain included, pushed once more on
/// exit, within `LAST_PUSH_TIMEOUT` whatever the collector does.
async fn push_last_metrics(push: &MetricsPush, metrics: &Metrics) {
    metrics.process();
    let text = metrics.render();
    let pushed = tokio::time::timeout(LAST_PUSH_TIMEOUT, push.push(&text))
        .instrument(telemetry::untraced("metrics push"))
        .await;
    if pushed.is_err() {
        tracing::warn!(
            timeout_seconds = LAST_PUSH_TIMEOUT.as_secs(),
            "the last metrics push did not finish in time; its figures are lost"
        );
    }
}

/// How often memory the allocator holds free goes back to the system, so RSS
/// comes down after a load (glibc would keep it at the peak).
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Periodic work: the stored-totals poller, the metrics upkeep, the rooms'
/// head check and the memory trim. Stopped by the returned token.
fn spawn_background(state: &AppState) -> CancellationToken {
    let stop = CancellationToken::new();
    let config = &state.config;
    let poller = state.clone();
    every(
        "state gauges",
        Duration::from_secs(config.state_metrics_interval_seconds),
        &stop,
        move || {
            let poller = poller.clone();
            async move { poller.refresh_stored_totals().await }
        },
    );
    let metrics = state.metrics.clone();
    every("metrics upkeep", UPKEEP_INTERVAL, &stop, move || {
        metrics.run_upkeep();
        std::future::ready(())
    });
    let hub = state.sessions.hub.clone();
    every(
        "room head check",
        Duration::from_secs(config.room_head_check_seconds),
        &stop,
        move || {
            let hub = hub.clone();
            async move { hub.check_heads().await }
        },
    );
    every("memory trim", TRIM_INTERVAL, &stop, || {
        telemetry::process::return_free_memory();
        std::future::ready(())
    });
    if state.metrics_push.is_some() {
        let pusher = state.clone();
        every(
            "metrics push",
            Duration::from_millis(config.otel_metric_export_interval),
            &stop,
            move || {
                let pusher = pusher.clone();
                async move { pusher.push_metrics().await }
            },
        );
    }
    stop
}

/// Runs `step` every `period` (a late tick waits, never bunches) until
/// `stop` is cancelled, each tick in an untraced span named `job`: its log
/// lines say which job wrote them, and no tick becomes a trace of its own.
fn every<F, Fut>(job: &'static str, period: Duration, stop: &CancellationToken, mut step: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => step().instrument(telemetry::untraced(job)).await,
            }
        }
    });
}

/// `collabd serve`: adapters, listeners, run until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> Result<(), StartError> {
    // Start-up's own calls (migrations, the first lease) are not traces.
    let backends = Backends::from_config(&config)
        .instrument(telemetry::untraced("start-up"))
        .await?;
    let addr = SocketAddr::new(config.host, config.port);
    let bind = |variable: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                variable,
                addr,
                source,
            })
    };
    let listener = bind("HOST/PORT", addr).await?;
    let management = bind("METRICS_ADDR", config.metrics_addr).await?;
    // Before "listening" is announced: from then on SIGTERM means drain.
    let shutdown = shutdown_signal();
    let mode = backends.mode;
    tracing::info!(
        mode = mode.name(),
        addr = %listener.local_addr()?,
        metrics_addr = %management.local_addr()?,
        app_env = ?config.app_env,
        rate_limit_enabled = config.rate_limit_enabled,
        ws_limits_enabled = config.ws_limits_enabled,
        audit_enabled = config.audit_enabled,
        "collabd listening ({} mode: {})",
        mode.name(),
        mode.describe()
    );
    let state = AppState::new(config, backends);
    Ok(run(listener, Some(management), state, shutdown).await?)
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives
/// right after start-up is never missed (nor kills the process outright).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {},
                        _ = interrupt.recv() => {},
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error.message = %e, "cannot listen for SIGTERM or SIGINT");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
