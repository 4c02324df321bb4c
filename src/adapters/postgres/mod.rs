//! Durable adapters: drafts, events and audit rows in Postgres, through a
//! deadpool pool of tokio-postgres connections. Any number of replicas can
//! share one database: every mutation is one transaction that locks the
//! draft's row, so seqs stay gap-free and appends exactly-once cluster-wide.

pub mod audit;
pub mod claim;
pub mod migrate;
pub mod store;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::error::Error;

pub use audit::PostgresAudit;
pub use store::PostgresStore;

/// Pool settings from configuration.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub url: String,
    pub max_size: usize,
    /// Bounds connecting, waiting for a pooled connection, and recycling one.
    pub connect_timeout: Duration,
}

/// Builds the pool. Connections are made lazily, so this succeeds even while
/// Postgres is down; a lost connection is dropped on recycle and replaced.
pub fn pool(settings: &PoolSettings) -> Result<Pool, Error> {
    let manager = Manager::from_config(
        connection_config(settings)?,
        NoTls,
        // Fast: a pooled connection is reused unless it is known closed. A
        // dead one fails its query with `unavailable` and is dropped; the
        // alternative, a test query per checkout, would double the round
        // trips of every request.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(Error::internal)
}

/// One line for a failed first connection: where (hosts and ports, never
/// the URL, which may hold a password) and why, down to the root cause.
pub(crate) fn unreachable(config: &tokio_postgres::Config, cause: &dyn std::error::Error) -> Error {
    let ports = config.get_ports();
    let addrs: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            }
        })
        .collect();
    let mut why = cause.to_string();
    let mut source = cause.source();
    while let Some(inner) = source {
        why = format!("{why}: {inner}");
        source = inner.source();
    }
    Error::unavailable(format!(
        "cannot reach Postgres at {} (DATABASE_URL): {why}",
        addrs.join(", ")
    ))
}

/// How every connection of this replica is made: the URL, the connect
/// deadline, keepalives and the application name.
pub(crate) fn connection_config(settings: &PoolSettings) -> Result<tokio_postgres::Config, Error> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| Error::internal(format!("DATABASE_URL is not a valid Postgres URL: {e}")))?;
    // TCP keepalives find a peer that vanished (a failover, a cut network)
    // on an idle pooled connection within about a minute, instead of the
    // kernel's two hours; the next query then gets a fresh connection.
    config
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("collabd");
    }
    Ok(config)
}

/// Maps a database error to the contract: lost connections and transient
/// conditions are `unavailable` (retry), constraint violations name what the
/// client got wrong, anything else is `internal`. Lets `?` convert.
impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        db_error(e)
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => db_error(e),
            other => Error::unavailable(format!("postgres pool: {other}")),
        }
    }
}

fn db_error(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        return if *code == SqlState::FOREIGN_KEY_VIOLATION {
            Error::draft_not_found()
        } else if *code == SqlState::UNIQUE_VIOLATION {
            Error::Validation("conflicts with an existing record; retry the request".into())
        } else if *code == SqlState::CHECK_VIOLATION || *code == SqlState::NOT_NULL_VIOLATION {
            Error::Validation("a value is out of range".into())
        } else if code.code().starts_with("08")
            || code.code().starts_with("53")
            || code.code().starts_with("57P")
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            Error::unavailable(format!("postgres: {db}"))
        } else {
            Error::internal(format!("postgres: {db}"))
        };
    }
    // No server error: the connection is closed, refused or broken.
    Error::unavailable(format!("postgres: {e}"))
}

/// The scrape's view of Postgres: `health_status{component="store"}` (the
/// store's own timed ping) and the pool gauges (size, in use, waiting).
pub struct PostgresHealth {
    store: PostgresStore,
    metrics: crate::telemetry::Metrics,
}

impl PostgresHealth {
    pub fn new(store: PostgresStore, metrics: crate::telemetry::Metrics) -> Self {
        PostgresHealth { store, metrics }
    }
}

#[async_trait::async_trait]
impl crate::ports::HealthCheck for PostgresHealth {
    fn component(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), Error> {
        let status = self.store.pool().status();
        self.metrics.db_pool(
            status.max_size,
            status.size,
            status.size.saturating_sub(status.available),
            status.waiting,
        );
        crate::ports::Store::ping(&self.store).await
    }
}

/// A pool with what every Postgres adapter applies to it: a deadline per
/// operation and the `db_*` metrics.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    /// Deadline for one operation, including waiting for a connection.
    timeout: Duration,
    metrics: crate::telemetry::Metrics,
}

impl Db {
    pub(crate) fn new(pool: Pool, timeout: Duration, metrics: crate::telemetry::Metrics) -> Self {
        Db {
            pool,
            timeout,
            metrics,
        }
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs one operation under the deadline, so a hung connection cannot
    /// hold a request forever, and times it by name.
    pub(crate) async fn timed<T>(
        &self,
        query: &'static str,
        op: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| Err(Error::unavailable("postgres: operation timed out")));
        self.metrics
            .db_query(query, started.elapsed().as_secs_f64());
        result
    }

    /// A pooled connection, timing the wait.
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, Error> {
        let started = std::time::Instant::now();
        let conn = self.pool.get().await.map_err(Error::from);
        self.metrics.db_pool_wait(started.elapsed().as_secs_f64());
        conn
    }
}
