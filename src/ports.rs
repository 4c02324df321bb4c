//! The seams between the collab service and whatever holds state. Each port is
//! a small async, fallible trait; `adapters::memory` implements all of them
//! for standalone mode, and cluster adapters (Postgres, Redis) implement the
//! same traits without the service noticing.
//!
//! No port hands out a lock: a mutation is one call (`Store::mutate`) that
//! loads, decides and writes atomically inside the adapter, the way a
//! Postgres transaction with a row lock on the draft would.

use async_trait::async_trait;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::collab::model::{Decision, Draft, DraftSnapshot, Event, Outcome, Segment};
use crate::collab::validate::Page;
use crate::error::Error;
use crate::limits::gcra::{RatePolicy, ThrottleReply};

/// The pure rule check the service hands to `Store::mutate`. It runs while the
/// store holds the draft exclusively, so it must not block or do I/O.
pub type Decide<'a> = &'a (dyn Fn(&DraftSnapshot) -> Result<Decision, Error> + Send + Sync);

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new draft (seq 0). Ids are fresh UUIDs, so this never collides.
    async fn create_draft(&self, draft: &Draft) -> Result<(), Error>;
    async fn get_draft(&self, id: Uuid) -> Result<Option<Draft>, Error>;
    /// Drafts `user_id` collaborates on, oldest first.
    async fn drafts_for_user(&self, user_id: &str) -> Result<Vec<Draft>, Error>;
    /// Segments with seq > `page.after`, ascending, at most `page.limit`.
    async fn segments(&self, draft_id: Uuid, page: Page) -> Result<Vec<Segment>, Error>;
    /// Events with seq > `page.after`, ascending, at most `page.limit`.
    async fn events(&self, draft_id: Uuid, page: Page) -> Result<Vec<Event>, Error>;
    /// Atomically: take the draft exclusively, look up the segment appended
    /// with `idempotency_key` (if given), call `decide` on that snapshot, and
    /// for `Decision::Apply` write the change with the draft's next seq and
    /// its event. `NotFound` when the draft does not exist.
    async fn mutate(
        &self,
        draft_id: Uuid,
        idempotency_key: Option<&str>,
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
/// they receive to the `RoomRegistry` they were built with.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Sends a committed event to every subscriber of its draft's room.
    async fn publish(&self, event: &Event) -> Result<(), Error>;
    /// Starts receiving a room's events; called when its first local socket joins.
    async fn subscribe(&self, draft_id: Uuid) -> Result<(), Error>;
    /// Stops receiving a room's events; called when its last local socket leaves.
    async fn unsubscribe(&self, draft_id: Uuid) -> Result<(), Error>;
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
    pub user_id: String,
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

/// Where audit rows go.
#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    async fn record(&self, record: &AuditRecord) -> Result<(), Error>;
    /// Rows held (an estimate where counting exactly would be costly).
    async fn count(&self) -> Result<u64, Error>;
}
