//! Audit rows for the sensitive actions: create draft, append, pass ring, add
//! collaborator. The policy (enabled, sample rate) and the truncation live
//! here; where rows go is the `AuditSink` port's business.
//!
//! Metadata never holds content, tokens or secrets: only ids, lengths and
//! keys, each string cut to `MAX_META_STRING_CHARS`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::collab::model::{now, Actor};
use crate::ports::AuditSink;
use crate::telemetry::Metrics;

/// The longest string kept in audit metadata.
pub const MAX_META_STRING_CHARS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    CreateDraft,
    AppendSegment,
    PassRing,
    AddCollaborator,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::CreateDraft => "create_draft",
            AuditAction::AppendSegment => "append_segment",
            AuditAction::PassRing => "pass_ring",
            AuditAction::AddCollaborator => "add_collaborator",
        }
    }
}

/// One row of the audit log (the seeds' `audit_events` table).
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub request_id: String,
    pub user_id: String,
    pub action: AuditAction,
    pub draft_id: Option<Uuid>,
    pub metadata: serde_json::Value,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Decides whether an action is recorded and hands the row to the sink.
#[derive(Clone)]
pub struct Auditor {
    sink: Arc<dyn AuditSink>,
    enabled: bool,
    sample_rate: f64,
    /// Rows that could not be written, so a failure is never silent.
    failures: Arc<AtomicU64>,
    metrics: Metrics,
}

impl Auditor {
    pub fn new(
        sink: Arc<dyn AuditSink>,
        enabled: bool,
        sample_rate: f64,
        metrics: Metrics,
    ) -> Self {
        Auditor {
            sink,
            enabled,
            sample_rate,
            failures: Arc::new(AtomicU64::new(0)),
            metrics,
        }
    }

    /// How many audit rows failed to be written since start.
    pub fn failed_writes(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn sampled(&self) -> bool {
        self.enabled && self.sample_rate > 0.0 && fastrand::f64() < self.sample_rate
    }

    /// Records the action if the policy says so. A failed write does not fail
    /// the request (the mutation is already committed and its event is in the
    /// log); it is counted and logged here, once, with the request id, so it
    /// never vanishes silently.
    pub async fn record(
        &self,
        actor: &Actor,
        action: AuditAction,
        draft_id: Option<Uuid>,
        metadata: serde_json::Value,
    ) {
        if !self.sampled() {
            return;
        }
        let record = AuditRecord {
            id: Uuid::new_v4(),
            ts: now(),
            request_id: actor.request_id.clone(),
            user_id: actor.user_id.clone(),
            action,
            draft_id,
            metadata: truncate(metadata),
            ip: actor.ip.clone(),
            user_agent: actor.user_agent.as_deref().map(cut),
        };
        if let Err(e) = self.sink.record(&record).await {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.metrics.audit_failed();
            tracing::error!(
                error_code = e.code(),
                error.message = %e,
                audit.action = action.as_str(),
                "audit write failed"
            );
        }
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_META_STRING_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// Cuts every string in the metadata to `MAX_META_STRING_CHARS`.
pub fn truncate(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(cut(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(truncate).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, truncate(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_at_any_depth() {
        let long = "é".repeat(MAX_META_STRING_CHARS + 10);
        let value = truncate(serde_json::json!({"a": long, "b": [long], "n": 3}));
        assert_eq!(
            value["a"].as_str().unwrap().chars().count(),
            MAX_META_STRING_CHARS
        );
        assert_eq!(
            value["b"][0].as_str().unwrap().chars().count(),
            MAX_META_STRING_CHARS
        );
        assert_eq!(value["n"], 3);
    }
}
