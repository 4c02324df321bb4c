//! The seams between the collab service and whatever holds state. Each port is
//! a small async, fallible trait; `adapters::memory` implements all of them
//! for standalone mode, and cluster adapters (Postgres, Redis) implement the
//! same traits without the service noticing.
//!
//! No port hands out a lock: a mutation is one call (`Store::mutate`) that
//! loads, decides and writes atomically inside the adapter, the way a
//! Postgres transaction with a row lock on the draft would.

//!
//! Each port is named for what its consumer needs. `RoomSink` runs the other
//! way: the realtime rooms declare what a fanout delivers into, and the
//! fanout adapters are handed one, so no adapter knows the rooms.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::collab::input::{IdempotencyKey, UserId};
use crate::collab::model::{Decision, Draft, DraftSnapshot, Event, Outcome, Segment};
use crate::error::Error;
use crate::limits::gcra::{RatePolicy, ThrottleReply};

pub const DEFAULT_PAGE_LIMIT: u32 = 100;
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The largest seq a log can hold (Postgres `bigint`).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// A page request: `after` an exclusive seq, `limit` 1-1000 (default 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub after: u64,
    pub limit: u32,
}

impl Page {
    pub fn new(after: Option<u64>, limit: Option<u32>) -> Result<Self, Error> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if limit == 0 || limit > MAX_PAGE_LIMIT {
            return Err(Error::Validation(format!(
                "limit must be between 1 and {MAX_PAGE_LIMIT}"
            )));
        }
        let after = after.unwrap_or(0);
        if after > MAX_SEQ {
            return Err(Error::Validation(format!(
                "after must be at most {MAX_SEQ}"
            )));
        }
        Ok(Page { after, limit })
    }

    /// The largest page after `after`, for readers that catch up.
    pub fn largest_after(after: u64) -> Self {
        Page {
            after,
            limit: MAX_PAGE_LIMIT,
        }
    }
}

/// The pure rule check the service hands to `Store::mutate`. It runs while the
/// store holds the draft exclusively, so it must not block or do I/O.
pub type Decide<'a> = &'a (dyn Fn(&DraftSnapshot) -> Result<Decision, Error> + Send + Sync);

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new draft (seq 0). Ids are fresh UUIDs, so this never collides.
    async fn create_draft(&self, draft: &Draft) -> Result<(), Error>;
    async fn get_draft(&self, id: Uuid) -> Result<Option<Draft>, Error>;
    /// Drafts `user_id` collaborates on, oldest first.
    async fn drafts_for_user(&self, user_id: &UserId) -> Result<Vec<Draft>, Error>;
    /// Segments with seq > `page.after`, ascending, at most `page.limit`.
    async fn segments(&self, draft_id: Uuid, page: Page) -> Result<Vec<Segment>, Error>;
    /// Events with seq > `page.after`, ascending, at most `page.limit`.
    async fn events(&self, draft_id: Uuid, page: Page) -> Result<Vec<Event>, Error>;
    /// The head (latest seq) of each of these drafts that exists, in one
    /// round trip: the rooms' periodic check that nothing was missed.
    async fn heads(&self, draft_ids: &[Uuid]) -> Result<Vec<(Uuid, u64)>, Error>;
    /// Atomically: take the draft exclusively, look up the segment appended
    /// with `idempotency_key` (if given), call `decide` on that snapshot, and
    /// for `Decision::Apply` write the change with the draft's next seq and
    /// its event. `NotFound` when the draft does not exist.
    async fn mutate(
        &self,
        draft_id: Uuid,
        idempotency_key: Option<&IdempotencyKey>,
        request_id: &str,
        decide: Decide<'_>,
    ) -> Result<Outcome, Error>;
    /// Readiness: is the backend reachable?
    async fn ping(&self) -> Result<(), Error>;
    /// Totals for the state gauges.
    async fn counts(&self) -> Result<StoreCounts, Error>;
}

/// What the store holds, for the state gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub drafts: u64,
    pub segments: u64,
}

/// Carries committed events to every replica's rooms. Adapters deliver what
/// they receive into the `RoomSink` they were built with.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Sends a committed event to every subscriber of its draft's room.
    async fn publish(&self, event: &Event) -> Result<(), Error>;
    /// Sends an event again, long after its commit (a replayed append):
    /// the same delivery, but no fanout-lag sample, which it would distort.
    async fn publish_again(&self, event: &Event) -> Result<(), Error> {
        self.publish(event).await
    }
    /// Starts receiving a room's events; called when its first local socket joins.
    async fn subscribe(&self, draft_id: Uuid) -> Result<(), Error>;
    /// Stops receiving a room's events; called when its last local socket leaves.
    async fn unsubscribe(&self, draft_id: Uuid) -> Result<(), Error>;
    /// The room found events in the store that this fanout never brought
    /// it: makes sure it still receives them (a Redis Cluster drops a shard
    /// channel's subscribers when its slot moves, and the client library
    /// does not say so).
    async fn renew(&self, _draft_id: Uuid) -> Result<(), Error> {
        Ok(())
    }
}

/// What a fanout delivers into: this replica's rooms (`realtime::hub`
/// implements it). Both calls return at once, whatever the rooms are doing.
pub trait RoomSink: Send + Sync + 'static {
    /// Hands a committed event to its draft's room, if this replica has one.
    fn deliver(&self, event: Event);
    /// Asks every room to compare its head with the store: the fanout may
    /// have missed events (a reconnect, a lagging reader).
    fn resync_all(&self);
}

/// GCRA limits with redis-cell `CL.THROTTLE` semantics, one key per call.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn throttle(
        &self,
        key: &str,
        policy: &RatePolicy,
        quantity: u32,
    ) -> Result<ThrottleReply, Error>;
}

/// One WebSocket wanting to count against the caps.
#[derive(Clone, Debug)]
pub struct SocketClaim {
    pub connection_id: Uuid,
    pub user_id: UserId,
    pub draft_id: Uuid,
}

/// Caps in force for a claim; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketCaps {
    pub per_user: Option<u32>,
    pub per_draft: Option<u32>,
    pub global: Option<u32>,
}

/// Which cap refused a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    User,
    Draft,
    Global,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::User => "user",
            LimitScope::Draft => "draft",
            LimitScope::Global => "global",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    Refused(LimitScope),
}

/// Counts open sockets against caps. Acquire and release are idempotent by
/// connection id, so a retried call never counts a socket twice.
#[async_trait]
pub trait SocketLeases: Send + Sync + 'static {
    async fn acquire(&self, claim: &SocketClaim, caps: &SocketCaps) -> Result<Admission, Error>;
    async fn release(&self, connection_id: Uuid) -> Result<(), Error>;
}

/// The number of draft rooms with at least one open socket (cluster-wide in
/// cluster mode, derived from the socket leases so it cannot drift).
#[async_trait]
pub trait Rooms: Send + Sync + 'static {
    async fn active_rooms(&self) -> Result<u64, Error>;
}

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
    pub user_id: UserId,
    pub action: AuditAction,
    pub draft_id: Option<Uuid>,
    pub metadata: serde_json::Value,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Where audit rows go.
#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    async fn record(&self, record: &AuditRecord) -> Result<(), Error>;
    /// Rows held (an estimate where counting exactly would be costly).
    async fn count(&self) -> Result<u64, Error>;
}

/// One replica at a time does a cluster-wide job (the state gauges).
#[async_trait]
pub trait Leadership: Send + Sync + 'static {
    /// Whether this replica holds (and has now renewed for `ttl`) the lease
    /// of `job`. False when the backend cannot say.
    async fn lead(&self, job: &'static str, ttl: Duration) -> bool;
}

/// A backend the scrape reports on, as `health_status{component}`.
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// The `component` label.
    fn component(&self) -> &'static str;
    /// Whether it answers now; also refreshes the backend's own gauges.
    async fn check(&self) -> Result<(), Error>;
}

/// Where an identity provider publishes its signing keys: a JWKS document
/// (RFC 7517), fetched again whenever the keys may have rotated.
#[async_trait]
pub trait KeySetSource: Send + Sync + 'static {
    /// The document as published now.
    async fn fetch(&self) -> Result<String, Error>;
    /// Where it comes from, for messages (a URL or a path; no secret).
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_starts_within_what_a_log_can_hold() {
        assert_eq!(Page::new(Some(MAX_SEQ), None).unwrap().after, MAX_SEQ);
        assert!(Page::new(Some(MAX_SEQ + 1), None).is_err());
        assert!(Page::new(None, Some(0)).is_err());
        assert!(Page::new(None, Some(MAX_PAGE_LIMIT + 1)).is_err());
    }
}
