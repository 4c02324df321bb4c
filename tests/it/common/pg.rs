//! A Postgres schema per test on the local server (TEST_DATABASE_URL, by
//! default the `collabd_test` database of 127.0.0.1:5432, created if
//! missing). The schema is dropped when the test ends; schemas left behind by
//! killed runs are swept on the next run.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/collabd_test";
const SCHEMA_PREFIX: &str = "collabd_t_";
/// Schemas older than this are leftovers of a run that never cleaned up.
const STALE_AFTER: Duration = Duration::from_secs(3600);

pub fn base_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn base_config() -> tokio_postgres::Config {
    base_url()
        .parse()
        .expect("TEST_DATABASE_URL is a Postgres URL")
}

/// The host and port tests connect to, for putting a proxy in front.
pub fn server_addr() -> std::net::SocketAddr {
    let config = base_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let ip = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{ip}:{port}")
        .parse()
        .expect("TEST_DATABASE_URL names an IP host")
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test Postgres at {url}: {e}; run scripts/test, which starts it"
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

static READY: OnceCell<()> = OnceCell::const_new();

/// Creates the test database if needed and sweeps stale schemas, once per process.
async fn prepare() {
    READY
        .get_or_init(|| async {
            let config = base_config();
            let dbname = config.get_dbname().unwrap_or("collabd_test").to_owned();
            let mut admin = config.clone();
            admin.dbname("postgres");
            let (client, connection) = admin.connect(NoTls).await.unwrap_or_else(|e| {
                panic!(
                    "cannot reach the test Postgres ({}): {e}; run scripts/test, which starts it",
                    base_url()
                )
            });
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
                .await
                .unwrap()
                .is_some();
            if !exists {
                // Another test binary may create it at the same moment: that is fine.
                let _ = client
                    .batch_execute(&format!("CREATE DATABASE \"{dbname}\""))
                    .await;
            }
            let client = connect(&base_url()).await;
            let cutoff = now_secs().saturating_sub(STALE_AFTER.as_secs());
            let rows = client
                .query(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                    &[&format!("{SCHEMA_PREFIX}%")],
                )
                .await
                .unwrap();
            for row in rows {
                let name: String = row.get(0);
                let born = name
                    .trim_start_matches(SCHEMA_PREFIX)
                    .split('_')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok());
                if born.is_some_and(|b| b < cutoff) {
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .await;
                }
            }
        })
        .await;
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One test's schema.
pub struct TestDb {
    pub schema: String,
}

impl TestDb {
    pub async fn create() -> Arc<TestDb> {
        prepare().await;
        let schema = format!(
            "{SCHEMA_PREFIX}{}_{}",
            now_secs(),
            uuid::Uuid::new_v4().simple()
        );
        connect(&base_url())
            .await
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .unwrap();
        Arc::new(TestDb { schema })
    }

    /// The URL of this schema on the server, or through `via` (a proxy).
    pub fn url_via(&self, via: Option<std::net::SocketAddr>) -> String {
        let config = base_config();
        let addr = via.unwrap_or_else(server_addr);
        let user = config.get_user().unwrap_or("postgres");
        let auth = match config.get_password() {
            Some(p) => format!("{user}:{}", String::from_utf8_lossy(p)),
            None => user.to_owned(),
        };
        let db = config.get_dbname().unwrap_or("collabd_test");
        format!(
            "postgres://{auth}@{addr}/{db}?options=-csearch_path%3D{}",
            self.schema
        )
    }

    pub fn url(&self) -> String {
        self.url_via(None)
    }

    /// A direct connection to this schema, bypassing any proxy.
    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    pub async fn count(&self, table: &str) -> i64 {
        let client = self.client().await;
        client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        super::cleanup(async move {
            let Ok((client, connection)) = tokio_postgres::connect(&base_url(), NoTls).await else {
                return;
            };
            tokio::spawn(async move {
                let _ = connection.await;
            });
            // Never wait long on a lock an aborted server still holds;
            // the sweep of a later run drops what is left.
            let _ = client
                .batch_execute(&format!(
                    "SET lock_timeout = '2s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                ))
                .await;
        });
    }
}
