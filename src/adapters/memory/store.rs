//! The standalone store: every draft, segment and event in one map. It grows
//! with what is stored, by design (docs/OPERATIONS.md gives the cost per
//! event); durable or long-lived deployments use Postgres.
//!
//! A std `Mutex`, not a Tokio one: nothing awaits while it is held, and each
//! `mutate` does its load, decide and write inside one critical section, which
//! is what makes seq assignment gap-free and idempotent appends exactly-once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use uuid::Uuid;

use crate::collab::input::{IdempotencyKey, UserId};
use crate::collab::model::{now, Decision, Draft, DraftSnapshot, Event, Outcome, Segment};
use crate::error::Error;
use crate::ports::{Decide, Page, Store, StoreCounts};

struct DraftRecord {
    draft: Draft,
    segments: Vec<Segment>,
    events: Vec<Event>,
    /// Idempotency key → index into `segments`.
    by_key: HashMap<IdempotencyKey, usize>,
}

#[derive(Default)]
struct State {
    drafts: HashMap<Uuid, DraftRecord>,
    /// Draft ids in creation order, for listing.
    order: Vec<Uuid>,
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written record:
        // every write below happens after all checks. Keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The page of `items` (ascending by seq) after `page.after`.
fn page_of<T: Clone>(items: &[T], seq: impl Fn(&T) -> u64, page: Page) -> Vec<T> {
    let start = items.partition_point(|item| seq(item) <= page.after);
    items[start..]
        .iter()
        .take(page.limit as usize)
        .cloned()
        .collect()
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_draft(&self, draft: &Draft) -> Result<(), Error> {
        let mut state = self.lock();
        state.order.push(draft.id);
        state.drafts.insert(
            draft.id,
            DraftRecord {
                draft: draft.clone(),
                segments: Vec::new(),
                events: Vec::new(),
                by_key: HashMap::new(),
            },
        );
        Ok(())
    }

    async fn get_draft(&self, id: Uuid) -> Result<Option<Draft>, Error> {
        Ok(self.lock().drafts.get(&id).map(|r| r.draft.clone()))
    }

    async fn drafts_for_user(&self, user_id: &UserId) -> Result<Vec<Draft>, Error> {
        let state = self.lock();
        Ok(state
            .order
            .iter()
            .filter_map(|id| state.drafts.get(id).map(|r| &r.draft))
            .filter(|d| d.role_of(user_id).is_some())
            .cloned()
            .collect())
    }

    async fn segments(&self, draft_id: Uuid, page: Page) -> Result<Vec<Segment>, Error> {
        let state = self.lock();
        Ok(state
            .drafts
            .get(&draft_id)
            .map(|r| page_of(&r.segments, |s| s.seq, page))
            .unwrap_or_default())
    }

    async fn events(&self, draft_id: Uuid, page: Page) -> Result<Vec<Event>, Error> {
        let state = self.lock();
        Ok(state
            .drafts
            .get(&draft_id)
            .map(|r| page_of(&r.events, |e| e.seq, page))
            .unwrap_or_default())
    }

    async fn heads(&self, draft_ids: &[Uuid]) -> Result<Vec<(Uuid, u64)>, Error> {
        let state = self.lock();
        Ok(draft_ids
            .iter()
            .filter_map(|id| state.drafts.get(id).map(|r| (*id, r.draft.seq)))
            .collect())
    }

    async fn mutate(
        &self,
        draft_id: Uuid,
        idempotency_key: Option<&IdempotencyKey>,
        request_id: &str,
        decide: Decide<'_>,
    ) -> Result<Outcome, Error> {
        let mut state = self.lock();
        let record = state
            .drafts
            .get_mut(&draft_id)
            .ok_or_else(Error::draft_not_found)?;
        let draft = &mut record.draft;
        let snapshot = DraftSnapshot {
            draft: draft.clone(),
            segment_count: record.segments.len() as u64,
            replay: idempotency_key
                .and_then(|k| record.by_key.get(k))
                .map(|&i| record.segments[i].clone()),
        };
        let change = match decide(&snapshot)? {
            Decision::Replay(segment) => return Ok(Outcome::Replayed(segment)),
            Decision::Unchanged => return Ok(Outcome::Unchanged(snapshot.draft)),
            Decision::Apply(change) => change,
        };
        let seq = draft.seq + 1;
        let ts = now();
        let (event, segment) = change.materialize(draft_id, seq, request_id, ts);
        change.apply_to(draft);
        draft.seq = seq;
        draft.updated_at = ts;
        let draft = draft.clone();
        if let Some(segment) = &segment {
            if let Some(key) = &segment.idempotency_key {
                record.by_key.insert(key.clone(), record.segments.len());
            }
            record.segments.push(segment.clone());
        }
        record.events.push(event.clone());
        Ok(Outcome::Applied {
            draft: Box::new(draft),
            event,
            segment,
            segment_count: record.segments.len() as u64,
        })
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn counts(&self) -> Result<StoreCounts, Error> {
        let state = self.lock();
        Ok(StoreCounts {
            drafts: state.drafts.len() as u64,
            segments: state.drafts.values().map(|r| r.segments.len() as u64).sum(),
        })
    }
}
