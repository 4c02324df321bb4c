//! Audit rows in the `audit_events` table.

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::{db_error, pool_error, timed};
use crate::audit::AuditRecord;
use crate::error::Error;
use crate::ports::AuditSink;

pub struct PostgresAudit {
    pool: Pool,
    timeout: std::time::Duration,
}

impl PostgresAudit {
    pub fn new(pool: Pool, timeout: std::time::Duration) -> Self {
        PostgresAudit { pool, timeout }
    }
}

#[async_trait]
impl AuditSink for PostgresAudit {
    async fn record(&self, r: &AuditRecord) -> Result<(), Error> {
        timed(self.timeout, async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO audit_events
                         (id, ts, request_id, user_id, action, draft_id, metadata, ip, user_agent)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await
                .map_err(db_error)?;
            client
                .execute(
                    &statement,
                    &[
                        &r.id,
                        &r.ts,
                        &r.request_id,
                        &r.user_id,
                        &r.action.as_str(),
                        &r.draft_id,
                        &r.metadata,
                        &r.ip,
                        &r.user_agent,
                    ],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }
}
