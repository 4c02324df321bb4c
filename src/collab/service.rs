//! The collab service: runs the rules through the store's atomic `mutate`,
//! then emits what was committed (fanout, audit, logs). Its input arrives
//! parsed (`collab::input`); it knows only the ports, never which adapters
//! are behind them.

use std::sync::Arc;

use serde_json::json;
use tracing::instrument;
use uuid::Uuid;

use super::audit::Auditor;
use super::input::{DraftTitle, IdempotencyKey, SegmentContent, UserId};
use super::model::{now, Actor, Collaborator, Draft, Event, EventBody, Outcome, Role, Segment};
use super::rules;
use crate::error::Error;
use crate::ports::{AuditAction, Fanout, Page, Store};
use crate::telemetry::Metrics;

/// Hard and soft caps from configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct CollabCaps {
    /// Hard: adding one more collaborator fails with `limit_exceeded`.
    pub max_collaborators: Option<u32>,
    /// Soft: appends past it succeed and log a WARN.
    pub max_segments: Option<u64>,
}

/// An append's result: the segment, and whether it was made by this call or
/// by an earlier one with the same idempotency key.
#[derive(Clone, Debug)]
pub struct Appended {
    pub segment: Segment,
    pub replayed: bool,
}

#[derive(Clone)]
pub struct CollabService {
    store: Arc<dyn Store>,
    fanout: Arc<dyn Fanout>,
    auditor: Auditor,
    caps: CollabCaps,
    metrics: Metrics,
}

impl CollabService {
    pub fn new(
        store: Arc<dyn Store>,
        fanout: Arc<dyn Fanout>,
        auditor: Auditor,
        caps: CollabCaps,
        metrics: Metrics,
    ) -> Self {
        CollabService {
            store,
            fanout,
            auditor,
            caps,
            metrics,
        }
    }

    /// Audit rows that could not be written since start.
    pub fn audit_failures(&self) -> u64 {
        self.auditor.failed_writes()
    }

    #[instrument(skip_all)]
    pub async fn create_draft(&self, actor: &Actor, title: DraftTitle) -> Result<Draft, Error> {
        let ts = now();
        let draft = Draft {
            id: Uuid::new_v4(),
            title: title.into_string(),
            owner_id: actor.user_id.clone(),
            ring_holder: actor.user_id.clone(),
            collaborators: vec![Collaborator {
                user_id: actor.user_id.clone(),
                role: Role::Owner,
            }],
            seq: 0,
            created_at: ts,
            updated_at: ts,
        };
        self.store.create_draft(&draft).await?;
        self.metrics.mutation("create_draft");
        tracing::info!(draft_id = %draft.id, "draft created");
        self.auditor
            .record(
                actor,
                AuditAction::CreateDraft,
                Some(draft.id),
                json!({ "title_length": draft.title.chars().count() }),
            )
            .await;
        Ok(draft)
    }

    pub async fn list_drafts(&self, user_id: &UserId) -> Result<Vec<Draft>, Error> {
        self.store.drafts_for_user(user_id).await
    }

    /// The draft as stored now, whoever asks (`not_found` when there is none).
    pub async fn draft(&self, draft_id: Uuid) -> Result<Draft, Error> {
        self.store
            .get_draft(draft_id)
            .await?
            .ok_or_else(Error::draft_not_found)
    }

    /// The draft, for any of its collaborators.
    pub async fn draft_for(&self, user_id: &UserId, draft_id: Uuid) -> Result<Draft, Error> {
        let draft = self.draft(draft_id).await?;
        rules::require_member(&draft, user_id)?;
        Ok(draft)
    }

    /// The draft's events after `after`, for a socket whose membership was
    /// checked when it joined.
    pub async fn events_after(&self, draft_id: Uuid, after: u64) -> Result<Vec<Event>, Error> {
        self.store
            .events(draft_id, Page::largest_after(after))
            .await
    }

    pub async fn segments(
        &self,
        user_id: &UserId,
        draft_id: Uuid,
        page: Page,
    ) -> Result<Vec<Segment>, Error> {
        self.draft_for(user_id, draft_id).await?;
        self.store.segments(draft_id, page).await
    }

    pub async fn events(
        &self,
        user_id: &UserId,
        draft_id: Uuid,
        page: Page,
    ) -> Result<Vec<Event>, Error> {
        self.draft_for(user_id, draft_id).await?;
        self.store.events(draft_id, page).await
    }

    #[instrument(skip_all)]
    pub async fn append(
        &self,
        actor: &Actor,
        draft_id: Uuid,
        content: SegmentContent,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Appended, Error> {
        let segment_id = Uuid::new_v4();
        let key = idempotency_key.as_ref();
        let outcome = self
            .store
            .mutate(draft_id, key, &actor.request_id, &|snap| {
                rules::decide_append(snap, &actor.user_id, &content, key, segment_id)
            })
            .await?;
        match outcome {
            Outcome::Replayed(segment) => {
                tracing::info!(seq = segment.seq, "idempotent append replayed");
                self.republish(draft_id, segment.seq).await;
                Ok(Appended {
                    segment,
                    replayed: true,
                })
            }
            Outcome::Applied {
                event,
                segment: Some(segment),
                segment_count,
                ..
            } => {
                self.metrics.mutation("append_segment");
                if let Some(cap) = self.caps.max_segments.filter(|cap| segment_count > *cap) {
                    self.metrics.soft_cap_exceeded("max_segments_per_draft");
                    tracing::warn!(
                        cap = "max_segments_per_draft",
                        limit = cap,
                        segments = segment_count,
                        "soft cap exceeded: draft has more segments than MAX_SEGMENTS_PER_DRAFT"
                    );
                }
                self.emit(&event).await;
                self.auditor
                    .record(
                        actor,
                        AuditAction::AppendSegment,
                        Some(draft_id),
                        json!({
                            "segment_id": segment.id,
                            "seq": segment.seq,
                            "content_length": segment.content.chars().count(),
                            "idempotency_key": segment.idempotency_key,
                        }),
                    )
                    .await;
                Ok(Appended {
                    segment,
                    replayed: false,
                })
            }
            other => Err(Error::internal(format!(
                "store answered an append with {other:?}"
            ))),
        }
    }

    #[instrument(skip_all)]
    pub async fn pass_ring(
        &self,
        actor: &Actor,
        draft_id: Uuid,
        to: &UserId,
    ) -> Result<Draft, Error> {
        let outcome = self
            .store
            .mutate(draft_id, None, &actor.request_id, &|snap| {
                rules::decide_pass_ring(snap, &actor.user_id, to)
            })
            .await?;
        let from = match &outcome {
            Outcome::Applied { event, .. } => match &event.body {
                EventBody::RingPassed { from_user_id, .. } => Some(from_user_id.clone()),
                _ => None,
            },
            _ => None,
        };
        let draft = self.settle(outcome).await?;
        if let Some(from) = from {
            self.metrics.mutation("pass_ring");
            self.auditor
                .record(
                    actor,
                    AuditAction::PassRing,
                    Some(draft_id),
                    json!({ "from_user_id": from, "to_user_id": to }),
                )
                .await;
        }
        Ok(draft)
    }

    /// Adds a collaborator; the flag says whether anything changed.
    #[instrument(skip_all)]
    pub async fn add_collaborator(
        &self,
        actor: &Actor,
        draft_id: Uuid,
        user_id: &UserId,
        role: Role,
    ) -> Result<(Draft, bool), Error> {
        let max = self.caps.max_collaborators;
        let outcome = self
            .store
            .mutate(draft_id, None, &actor.request_id, &|snap| {
                rules::decide_add_collaborator(snap, &actor.user_id, user_id, role, max)
            })
            .await?;
        let changed = matches!(outcome, Outcome::Applied { .. });
        let draft = self.settle(outcome).await?;
        if changed {
            self.metrics.mutation("add_collaborator");
            self.auditor
                .record(
                    actor,
                    AuditAction::AddCollaborator,
                    Some(draft_id),
                    json!({ "collaborator_id": user_id, "role": role }),
                )
                .await;
        }
        Ok((draft, changed))
    }

    /// Emits an applied change and returns the draft as it now stands.
    async fn settle(&self, outcome: Outcome) -> Result<Draft, Error> {
        match outcome {
            Outcome::Applied { draft, event, .. } => {
                self.emit(&event).await;
                Ok(*draft)
            }
            Outcome::Unchanged(draft) => Ok(draft),
            Outcome::Replayed(_) => Err(Error::internal("store replayed a non-append")),
        }
    }

    /// Publishes again the event a replayed append made: the first attempt
    /// may have committed and lost its reply before it published. Watchers
    /// drop a seq they have; rooms that missed it deliver it now.
    async fn republish(&self, draft_id: Uuid, seq: u64) {
        let page = Page {
            after: seq.saturating_sub(1),
            limit: 1,
        };
        match self.store.events(draft_id, page).await {
            Ok(events) => {
                if let Some(event) = events.iter().find(|e| e.seq == seq) {
                    if let Err(e) = self.fanout.publish_again(event).await {
                        tracing::warn!(
                            error.message = %e,
                            seq,
                            "replayed event not republished; the rooms' head check will bring it"
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(
                error.message = %e,
                seq,
                "replayed event not republished; the rooms' head check will bring it"
            ),
        }
    }

    /// Publishes a committed event. A failed publish does not fail the
    /// request: the event is in the store, and every room fills gaps from it.
    async fn emit(&self, event: &Event) {
        tracing::info!(
            event_type = event.event_type().as_str(),
            seq = event.seq,
            "event committed"
        );
        if let Err(e) = self.fanout.publish(event).await {
            tracing::warn!(
                error_code = e.code(),
                error.message = %e,
                event_type = event.event_type().as_str(),
                seq = event.seq,
                "fanout publish failed; watchers will catch up from the store"
            );
        }
    }
}
