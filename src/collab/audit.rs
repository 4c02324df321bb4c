//! Audit rows for the sensitive actions: create draft, append, pass ring, add
//! collaborator. The policy (enabled, sample rate) and the truncation live
//! here; the row's shape and where rows go are the `AuditSink` port's.
//!
//! Metadata never holds content, tokens or secrets: only ids, lengths and
//! keys, each string cut to `MAX_META_STRING_CHARS`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use uuid::Uuid;

use super::model::{now, Actor};
use crate::ports::{AuditAction, AuditRecord, AuditSink};
use crate::telemetry::Metrics;
use crate::text::truncate_chars;

/// The longest string kept in audit metadata.
pub const MAX_META_STRING_CHARS: usize = 256;

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
    truncate_chars(text, MAX_META_STRING_CHARS).to_owned()
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
