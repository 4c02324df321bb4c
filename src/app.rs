//! Start-up in one place: choose adapters, build the shared state, serve on an
//! already-bound listener until the shutdown future resolves, then drain.
//!
//! Draining: readiness turns false, new sockets are refused, every open
//! socket is told `shutdown` and closed with 1001; after
//! `SHUTDOWN_DRAIN_DELAY_SECONDS` the listener closes and in-flight requests
//! finish, all within `SHUTDOWN_TIMEOUT_SECONDS` of each step.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::memory::{
    MemoryAudit, MemoryFanout, MemoryLeases, MemoryRateLimiter, MemoryStore,
};
use crate::adapters::postgres::migrate::MigrateError;
use crate::adapters::postgres::{self, PoolSettings, PostgresAudit, PostgresStore};
use crate::adapters::redis::{self, RedisFanout, RedisLeases, RedisRateLimiter, RedisSettings};
use crate::audit::Auditor;
use crate::auth::Authenticator;
use crate::collab::service::{CollabCaps, CollabService};
use crate::config::Config;
use crate::limits::fallback::{FallbackLimiter, ReplicaCount};
use crate::limits::http::Policies;
use crate::ports::{AuditSink, Fanout, RateLimiter, Rooms, SocketCaps, SocketLeases, Store};
use crate::realtime::hub::{Hub, RoomRegistry};
use crate::telemetry::Metrics;

/// The adapters behind every port.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub fanout: Arc<dyn Fanout>,
    pub limiter: Arc<dyn RateLimiter>,
    pub leases: Arc<dyn SocketLeases>,
    pub rooms: Arc<dyn Rooms>,
    pub audit: Arc<dyn AuditSink>,
    /// Where the fanout delivers; the hub serves the same rooms.
    pub registry: RoomRegistry,
    pub metrics: Metrics,
    /// Set in the modes that have them, for pool gauges and health.
    pub pg_pool: Option<deadpool_postgres::Pool>,
    pub redis_pool: Option<fred::clients::Pool>,
    /// Names this replica in leader elections (the state-gauge poller).
    pub replica_id: String,
    /// Said once in the start-up log.
    pub mode: &'static str,
}

impl Backends {
    /// Standalone: everything in this process, nothing else needed. The
    /// audit sink is passed in so a caller can read the rows back.
    pub fn memory(audit: Arc<MemoryAudit>) -> Self {
        let registry = RoomRegistry::new();
        let leases = Arc::new(MemoryLeases::new());
        Backends {
            store: Arc::new(MemoryStore::new()),
            fanout: Arc::new(MemoryFanout::new(registry.clone())),
            limiter: Arc::new(MemoryRateLimiter::new()),
            leases: leases.clone(),
            rooms: leases,
            audit,
            registry,
            metrics: Metrics::new(),
            pg_pool: None,
            redis_pool: None,
            replica_id: uuid::Uuid::new_v4().to_string(),
            mode: "standalone",
        }
    }

    /// Durable: drafts, events and audit rows in Postgres (migrated first);
    /// fanout and limits in this process.
    pub async fn postgres(config: &Config, settings: &PoolSettings) -> Result<Self, StartError> {
        let pool = postgres::pool(settings)?;
        let applied = postgres::migrate::migrate(&pool).await?;
        tracing::info!(applied = ?applied, "database schema is current");
        let timeout = config.database_query_timeout();
        let mut backends = Backends::memory(Arc::new(MemoryAudit::new()));
        let metrics = backends.metrics.clone();
        backends.store = Arc::new(PostgresStore::new(pool.clone(), timeout, metrics.clone()));
        backends.audit = Arc::new(PostgresAudit::new(pool.clone(), timeout, metrics));
        backends.pg_pool = Some(pool);
        backends.mode = "postgres";
        Ok(backends)
    }

    /// Cluster: Postgres as above, and Redis for room fanout, rate limits and
    /// socket caps shared by every replica.
    pub async fn cluster(
        config: &Config,
        database: &PoolSettings,
        settings: &RedisSettings,
    ) -> Result<Self, StartError> {
        let mut backends = Backends::postgres(config, database).await?;
        let pool = redis::pool(settings).await?;
        let metrics = backends.metrics.clone();
        let fanout = RedisFanout::start(
            settings,
            pool.clone(),
            backends.registry.clone(),
            metrics.clone(),
        )
        .await?;
        let ttl = std::time::Duration::from_secs(config.ws_lease_ttl_seconds);
        let leases =
            RedisLeases::start(pool.clone(), &settings.prefix, ttl, metrics.clone()).await?;
        let replicas: ReplicaCount = {
            let leases = leases.clone();
            Arc::new(move || leases.replicas())
        };
        let limiter = RedisRateLimiter::new(pool.clone(), &settings.prefix, metrics.clone());
        backends.limiter = Arc::new(FallbackLimiter::new(
            Arc::new(limiter),
            config.rate_limit_fail_mode,
            replicas,
            metrics,
        ));
        backends.redis_pool = Some(pool);
        backends.fanout = Arc::new(fanout);
        backends.leases = leases.clone();
        backends.rooms = leases;
        backends.mode = "cluster";
        Ok(backends)
    }

    /// The adapters the configuration asks for.
    pub async fn from_config(config: &Config) -> Result<Self, StartError> {
        match (config.database(), config.redis()) {
            (Some(database), Some(redis)) => Backends::cluster(config, &database, &redis).await,
            (Some(database), None) => Backends::postgres(config, &database).await,
            _ => Ok(Backends::memory(Arc::new(MemoryAudit::new()))),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Backend(#[from] crate::error::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] MigrateError),
    #[error("cannot listen on {addr} ({variable}): {source}")]
    Bind {
        variable: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a handler may need. Cheap to clone: all shared parts are `Arc`s.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Authenticator,
    pub collab: CollabService,
    pub hub: Hub,
    pub limiter: Arc<dyn RateLimiter>,
    pub policies: Arc<Policies>,
    pub leases: Arc<dyn SocketLeases>,
    pub rooms: Arc<dyn Rooms>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Metrics,
    pub pg_pool: Option<deadpool_postgres::Pool>,
    pub redis_pool: Option<fred::clients::Pool>,
    pub replica_id: Arc<str>,
    pub socket_caps: SocketCaps,
    /// Cancelled when draining starts; sockets watch it.
    pub shutdown: CancellationToken,
    /// Tracks socket sessions so shutdown can wait for their goodbyes.
    pub sockets: TaskTracker,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
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

impl AppState {
    pub fn new(config: Config, backends: Backends) -> Self {
        let metrics = backends.metrics.clone();
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
            backends.store,
            backends.fanout,
            metrics.clone(),
        );
        AppState {
            auth: Authenticator::new(&config.auth_jwt_secret),
            policies: Arc::new(Policies::from_config(&config)),
            socket_caps: socket_caps(&config),
            config: Arc::new(config),
            collab,
            hub,
            limiter: backends.limiter,
            leases: backends.leases,
            rooms: backends.rooms,
            audit: backends.audit,
            metrics,
            pg_pool: backends.pg_pool,
            redis_pool: backends.redis_pool,
            replica_id: Arc::from(backends.replica_id),
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
        }
    }

    /// Readiness: not draining and the store answers. Mirrors the result
    /// into `health_status{component="store"}`.
    pub async fn ready(&self) -> Result<(), crate::error::Error> {
        if self.shutdown.is_cancelled() {
            return Err(crate::error::Error::Unavailable("draining".into()));
        }
        let store = self.collab.store().ping().await;
        self.metrics.health("store", store.is_ok());
        store
    }

    /// Brings the scrape-time figures up to date: process, pools, backend
    /// health, active rooms. Each check is bounded so a dead backend cannot
    /// stall a scrape.
    pub async fn collect_metrics(&self) {
        const CHECK: Duration = Duration::from_secs(1);
        self.metrics.process();
        self.metrics.run_upkeep();
        let store = tokio::time::timeout(CHECK, self.collab.store().ping()).await;
        self.metrics.health("store", matches!(store, Ok(Ok(()))));
        if let Some(pool) = &self.pg_pool {
            postgres::sample_pool(pool, &self.metrics);
        }
        if let Some(pool) = &self.redis_pool {
            let ping = tokio::time::timeout(CHECK, redis::ping(pool)).await;
            self.metrics.health("redis", matches!(ping, Ok(Ok(()))));
        }
        if let Ok(Ok(rooms)) = tokio::time::timeout(CHECK, self.rooms.active_rooms()).await {
            self.metrics.active_rooms(rooms);
        }
    }

    /// One round of the state gauges: the replica holding the poller lease
    /// reports the store's totals; the others report zeros, so a fleet sum
    /// counts them once.
    pub async fn poll_state(&self) {
        let every = Duration::from_secs(self.config.state_metrics_interval_seconds);
        let leader = match &self.redis_pool {
            None => true,
            Some(pool) => redis::leases::lead(
                pool,
                &self.config.redis_key_prefix,
                "state-gauges",
                &self.replica_id,
                every * 2,
            )
            .await
            .unwrap_or(false),
        };
        if !leader {
            self.metrics.state(0, 0, 0);
            return;
        }
        match (self.collab.store().counts().await, self.audit.count().await) {
            (Ok(counts), Ok(rows)) => self.metrics.state(counts.drafts, counts.segments, rows),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error.message = %e, "state gauges not refreshed")
            }
        }
    }
}

/// Serves the public API on `public` and, when given, /metrics and the
/// probes on `management`, until `shutdown` resolves; then drains and returns.
pub async fn run(
    public: TcpListener,
    management: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain = state.shutdown.clone();
    let sockets = state.sockets.clone();
    let grace = state.config.shutdown_timeout();
    let delay = Duration::from_secs(state.config.shutdown_drain_delay_seconds);
    let background = spawn_background(&state);
    if let Some(listener) = management {
        let app = crate::http::management::router(state.clone());
        let stop = drain.clone();
        tokio::spawn(async move {
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = server.await {
                tracing::error!(error.message = %e, "management listener failed");
            }
        });
    }
    let app = crate::http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let signal = {
        let drain = drain.clone();
        async move {
            shutdown.await;
            tracing::info!(
                delay_seconds = delay.as_secs(),
                "shutdown requested: draining"
            );
            drain.cancel();
            // Readiness is already false; give load balancers time to see it.
            tokio::time::sleep(delay).await;
        }
    };
    let server = axum::serve(public, app).with_graceful_shutdown(signal);
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        _ = drain.cancelled() => {}
        // The server stopped by itself (an accept error): nothing to drain.
        ended = &mut server => {
            background.cancel();
            return ended.unwrap_or_else(|join| Err(std::io::Error::other(join)));
        }
    }
    background.cancel();
    sockets.close();
    if tokio::time::timeout(grace, sockets.wait()).await.is_err() {
        tracing::warn!("sockets still open after the shutdown timeout; dropping them");
    }
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!("requests still running after the shutdown timeout; exiting");
            Ok(())
        }
    }
}

/// Periodic work: the state-gauge poller. Stopped by the returned token.
fn spawn_background(state: &AppState) -> CancellationToken {
    let stop = CancellationToken::new();
    let every = Duration::from_secs(state.config.state_metrics_interval_seconds);
    let (state, token) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => state.poll_state().await,
            }
        }
    });
    stop
}

/// `collabd serve`: logs, adapters, listener, run until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let backends = Backends::from_config(&config).await?;
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
    let what = match backends.mode {
        "standalone" => "state, fanout and limits in this process",
        "postgres" => "drafts, events and audit in Postgres; fanout and limits in this process",
        _ => "drafts, events and audit in Postgres; fanout, limits and socket caps in Redis",
    };
    tracing::info!(
        mode = backends.mode,
        addr = %listener.local_addr()?,
        metrics_addr = %management.local_addr()?,
        app_env = ?config.app_env,
        rate_limit_enabled = config.rate_limit_enabled,
        ws_limits_enabled = config.ws_limits_enabled,
        audit_enabled = config.audit_enabled,
        "collabd listening ({} mode: {what})",
        backends.mode
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
