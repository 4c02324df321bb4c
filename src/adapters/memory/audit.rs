//! Audit rows kept in memory, so tests (and a curious developer) can read
//! them. They grow with what is recorded, by design: standalone mode only.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Error;
use crate::ports::{AuditRecord, AuditSink};

#[derive(Default)]
pub struct MemoryAudit {
    rows: Mutex<Vec<AuditRecord>>,
}

impl MemoryAudit {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every row recorded so far, oldest first.
    pub fn rows(&self) -> Vec<AuditRecord> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl AuditSink for MemoryAudit {
    async fn record(&self, record: &AuditRecord) -> Result<(), Error> {
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record.clone());
        Ok(())
    }

    async fn count(&self) -> Result<u64, Error> {
        Ok(self.rows.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
    }
}
