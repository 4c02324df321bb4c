//! Who may serve a database. Replicas with Redis (cluster mode) share one,
//! each holding a shared advisory lock for its whole life; a replica without
//! Redis fans out only to its own sockets, so it must be the only one, and
//! holds the same lock exclusively. Either kind is refused at start-up while
//! the other holds the lock: watchers could otherwise silently miss events.
//!
//! The lock lives on a connection of its own, outside the pool, so it is
//! released when the process ends, however it ends.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use super::PoolSettings;
use crate::error::Error;

/// How often a claim that is refused is tried again while it may wait.
const RETRY: Duration = Duration::from_millis(250);

/// How a replica uses the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// The only replica (no Redis): an exclusive claim.
    Alone,
    /// One of a cluster (with Redis): a shared claim.
    Cluster,
}

/// Holds the claim; dropping it closes its connection and releases it.
pub struct Claim {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Takes the claim, trying again for up to `wait` (a replica being replaced
/// may still be draining), then refusing with what to do about it.
pub async fn claim(
    settings: &PoolSettings,
    sharing: Sharing,
    wait: Duration,
) -> Result<Claim, Error> {
    let config = super::connection_config(settings)?;
    let (client, connection) =
        match tokio::time::timeout(settings.connect_timeout, config.connect(NoTls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(super::unreachable(&config, &e)),
            Err(_) => {
                let timed_out = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer within DATABASE_CONNECT_TIMEOUT_SECONDS",
                );
                return Err(super::unreachable(&config, &timed_out));
            }
        };
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let claim = Claim { client, connection };
    let lock = match sharing {
        Sharing::Alone => "pg_try_advisory_lock",
        Sharing::Cluster => "pg_try_advisory_lock_shared",
    };
    // One key per database and schema, as the migrations' lock.
    let sql =
        format!("SELECT {lock}(hashtext('collabd.replicas.' || coalesce(current_schema(), '')))");
    // If this host vanishes without closing the connection, Postgres must
    // notice within seconds, not its default two hours, or the lock would
    // refuse every replacement meanwhile.
    claim
        .client
        .batch_execute(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
             SET tcp_keepalives_count = 3",
        )
        .await?;
    let started = Instant::now();
    loop {
        let asked =
            tokio::time::timeout(settings.connect_timeout, claim.client.query_one(&sql, &[]));
        let taken: bool = asked
            .await
            .map_err(|_| Error::unavailable("postgres: claiming the database timed out"))??
            .try_get(0)?;
        if taken {
            return Ok(claim);
        }
        if started.elapsed() >= wait {
            return Err(Error::unavailable(refusal(sharing)));
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn refusal(sharing: Sharing) -> &'static str {
    match sharing {
        Sharing::Alone => {
            "DATABASE_URL: another collabd replica uses this database; several replicas need REDIS_URL as well (cluster mode), or each would fan out only to its own sockets"
        }
        Sharing::Cluster => {
            "DATABASE_URL: a collabd replica without REDIS_URL uses this database; it would not see this replica's events (give it REDIS_URL, or stop it)"
        }
    }
}
