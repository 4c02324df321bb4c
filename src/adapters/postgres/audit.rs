//! Audit rows in the `audit_events` table.

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::Db;
use crate::error::Error;
use crate::ports::{AuditRecord, AuditSink};
use crate::telemetry::Metrics;

pub struct PostgresAudit {
    db: Db,
}

impl PostgresAudit {
    pub fn new(pool: Pool, timeout: std::time::Duration, metrics: Metrics) -> Self {
        PostgresAudit {
            db: Db::new(pool, timeout, metrics),
        }
    }
}

#[async_trait]
impl AuditSink for PostgresAudit {
    async fn record(&self, r: &AuditRecord) -> Result<(), Error> {
        self.db
            .timed("audit_insert", async {
                let client = self.db.conn().await?;
                let statement = client
                    .prepare_cached(
                        "INSERT INTO audit_events
                         (id, ts, request_id, user_id, action, draft_id, metadata, ip, user_agent)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .await?;
                client
                    .execute(
                        &statement,
                        &[
                            &r.id,
                            &r.ts,
                            &r.request_id,
                            &r.user_id.as_str(),
                            &r.action.as_str(),
                            &r.draft_id,
                            &r.metadata,
                            &r.ip,
                            &r.user_agent,
                        ],
                    )
                    .await?;
                Ok(())
            })
            .await
    }

    /// The planner's estimate: counting an append-only log exactly would scan it.
    async fn count(&self) -> Result<u64, Error> {
        self.db
            .timed("audit_count", async {
                let client = self.db.conn().await?;
                let row = client
                    .query_one(
                        "SELECT coalesce((SELECT reltuples::bigint FROM pg_class
                                       WHERE oid = to_regclass('audit_events')), 0)",
                        &[],
                    )
                    .await?;
                let estimate: i64 = row
                    .try_get(0)
                    .map_err(|e| Error::internal(format!("postgres: audit estimate: {e}")))?;
                Ok(estimate.max(0) as u64)
            })
            .await
    }
}
