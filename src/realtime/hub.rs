//! Rooms: one task per draft with local sockets, delivering that draft's
//! events to its members strictly in seq order, each exactly once.
//!
//! Events reach a room through the `RoomRegistry`, which never blocks: it
//! hands each event to the room's bounded queue, and if that queue is full it
//! marks the room lagged instead, and the room refills from the store. Events
//! may arrive out of order (two writers publish concurrently) or not at all
//! (a publish failed, a queue overflowed): the room holds early arrivals and
//! fills any gap from the store, which commits seq n before n+1.
//!
//! Each member has a bounded queue too; a member whose queue is full is a
//! slow consumer, removed and told so through its kick token.
//!
//! A room never trusts the fanout alone to reveal what it missed: a gap is
//! seen only when a later event arrives, and a draft that goes quiet right
//! after a fault has none. So a joining socket always gets the store's head
//! (the room catches up first; joins that queue meanwhile share the next
//! read, so a reconnect storm costs a room a query or two), and every
//! `ROOM_HEAD_CHECK_SECONDS` the hub asks the store for the heads of all
//! its rooms in one query and wakes any room that is behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::collab::model::{Event, EventType};
use crate::error::Error;
use crate::ports::{Fanout, Page, RoomSink, Store, MAX_PAGE_LIMIT};
use crate::telemetry::Metrics;

/// Room queue length. Past it, events are dropped and refetched from the store.
const ROOM_QUEUE: usize = 1024;
/// Most events a room holds ahead of a gap it cannot fill yet (the store is
/// unreachable from this replica while others keep publishing). Past it the
/// room lets them go and refetches them from the store, which has them all:
/// memory per room stays bounded however long the outage.
const MAX_PENDING: usize = 1024;
/// How soon a room retries a store read that failed while filling a gap.
const GAP_RETRY: Duration = Duration::from_millis(500);

/// An event serialized once per room, shared by every member's queue.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    pub event_type: EventType,
    pub text: Utf8Bytes,
}

impl Frame {
    pub fn new(event: &Event) -> Result<Self, Error> {
        let text = serde_json::to_string(event).map_err(Error::internal)?;
        Ok(Frame {
            seq: event.seq,
            event_type: event.event_type(),
            text: text.into(),
        })
    }
}

/// A socket in a room.
pub struct Member {
    pub connection_id: Uuid,
    /// Bounded by `WS_OUTBOUND_QUEUE`; holds pointers to frames the room
    /// serialized once for every member.
    pub tx: mpsc::Sender<Arc<Frame>>,
    /// Cancelled by the room when the member's queue overflows.
    pub kick: CancellationToken,
}

enum RoomMsg {
    Deliver(Event),
    Join {
        member: Member,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Leave(Uuid),
    /// Compare the head with the store and fill anything missed.
    Resync,
    /// The store's head, from the periodic check: catch up if behind it.
    StoreHead(u64),
    Stop,
}

struct RoomHandle {
    tx: mpsc::Sender<RoomMsg>,
    /// Sockets joined or joining; the room stops when this reaches zero.
    members: usize,
    lagged: Arc<AtomicBool>,
}

/// Routes events to this process's rooms. Cheap to clone; `app.rs` hands it
/// to the fanout adapter as its `RoomSink`.
#[derive(Clone)]
pub struct RoomRegistry {
    /// A std `Mutex`: held only to look up or update a handle, never across `.await`.
    rooms: Arc<Mutex<HashMap<Uuid, RoomHandle>>>,
    /// Counts what a full room queue turns away.
    metrics: Metrics,
}

impl RoomRegistry {
    pub fn new(metrics: Metrics) -> Self {
        RoomRegistry {
            rooms: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RoomHandle>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fanout delivers here. Neither call ever blocks: a full room queue
/// marks the room lagged instead, and the room refills from the store.
impl RoomSink for RoomRegistry {
    fn deliver(&self, event: Event) {
        let rooms = self.lock();
        if let Some(room) = rooms.get(&event.draft_id) {
            if room.tx.try_send(RoomMsg::Deliver(event)).is_err() {
                self.metrics.channel_dropped("room_queue", 1);
                room.lagged.store(true, Ordering::Release);
            }
        }
    }

    fn resync_all(&self) {
        for room in self.lock().values() {
            if room.tx.try_send(RoomMsg::Resync).is_err() {
                room.lagged.store(true, Ordering::Release);
            }
        }
    }
}

/// Joins sockets to rooms and starts and stops room tasks.
#[derive(Clone)]
pub struct Hub {
    registry: RoomRegistry,
    store: Arc<dyn Store>,
    fanout: Arc<dyn Fanout>,
    metrics: Metrics,
}

impl Hub {
    pub fn new(
        registry: RoomRegistry,
        store: Arc<dyn Store>,
        fanout: Arc<dyn Fanout>,
        metrics: Metrics,
    ) -> Self {
        Hub {
            registry,
            store,
            fanout,
            metrics,
        }
    }

    pub fn registry(&self) -> &RoomRegistry {
        &self.registry
    }

    /// Adds a member to the draft's room and returns the room's head: the
    /// member will receive every event after it, and only those.
    pub async fn join(&self, draft_id: Uuid, member: Member) -> Result<u64, Error> {
        let tx = {
            let mut rooms = self.registry.lock();
            let room = rooms
                .entry(draft_id)
                .or_insert_with(|| self.spawn_room(draft_id));
            room.members += 1;
            room.tx.clone()
        };
        let (reply, answer) = oneshot::channel();
        let sent = tx.send(RoomMsg::Join { member, reply }).await.is_ok();
        let head = match sent {
            true => answer
                .await
                .unwrap_or_else(|_| Err(Error::internal("room stopped during join"))),
            false => Err(Error::internal("room stopped during join")),
        };
        if head.is_err() {
            self.count_out(draft_id);
        }
        head
    }

    /// The heads of all this replica's rooms from the store, one query per
    /// 1,000 rooms, and a nudge to each room (which catches up when it is
    /// behind). Run every `ROOM_HEAD_CHECK_SECONDS`, it bounds how long a
    /// missed event can stay unseen when no later event reveals the gap.
    pub async fn check_heads(&self) {
        let drafts: Vec<Uuid> = self.registry.lock().keys().copied().collect();
        for chunk in drafts.chunks(MAX_PAGE_LIMIT as usize) {
            let heads = match self.store.heads(chunk).await {
                Ok(heads) => heads,
                Err(e) => {
                    tracing::warn!(error.message = %e, "room head check failed");
                    return;
                }
            };
            let rooms = self.registry.lock();
            for (draft_id, seq) in heads {
                if let Some(room) = rooms.get(&draft_id) {
                    if room.tx.try_send(RoomMsg::StoreHead(seq)).is_err() {
                        room.lagged.store(true, Ordering::Release);
                    }
                }
            }
        }
    }

    /// Removes a member; the room stops when its last member leaves.
    pub async fn leave(&self, draft_id: Uuid, connection_id: Uuid) {
        let tx = self.registry.lock().get(&draft_id).map(|r| r.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(RoomMsg::Leave(connection_id)).await;
        }
        self.count_out(draft_id);
    }

    /// Counts one member out, stopping the room when none remain.
    fn count_out(&self, draft_id: Uuid) {
        let mut rooms = self.registry.lock();
        if let Some(room) = rooms.get_mut(&draft_id) {
            room.members = room.members.saturating_sub(1);
            if room.members == 0 {
                let room = rooms.remove(&draft_id).expect("present above");
                // The room may be busy; Stop waits its turn without blocking us.
                tokio::spawn(async move {
                    let _ = room.tx.send(RoomMsg::Stop).await;
                });
            }
        }
    }

    fn spawn_room(&self, draft_id: Uuid) -> RoomHandle {
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let room = Room {
            draft_id,
            head: None,
            pending: BTreeMap::new(),
            members: HashMap::new(),
            store: self.store.clone(),
            fanout: self.fanout.clone(),
            lagged: lagged.clone(),
            renewing: Arc::default(),
            retry_gap: false,
            metrics: self.metrics.clone(),
        };
        let span = tracing::info_span!("room", draft_id = %draft_id);
        tokio::spawn(room.run(rx).instrument(span));
        RoomHandle {
            tx,
            members: 0,
            lagged,
        }
    }
}

struct Room {
    draft_id: Uuid,
    /// The seq of the last event delivered; `None` until read from the store.
    head: Option<u64>,
    /// Events that arrived ahead of a gap, by seq.
    pending: BTreeMap<u64, Event>,
    members: HashMap<Uuid, Member>,
    store: Arc<dyn Store>,
    fanout: Arc<dyn Fanout>,
    lagged: Arc<AtomicBool>,
    /// A subscription renewal is under way.
    renewing: Arc<AtomicBool>,
    /// A store read failed while filling a gap; try again after `GAP_RETRY`.
    retry_gap: bool,
    metrics: Metrics,
}

impl Room {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomMsg>) {
        if let Err(e) = self.fanout.subscribe(self.draft_id).await {
            // Local events still arrive; a resync after reconnect fills the rest.
            tracing::warn!(error.message = %e, "room subscribe failed");
        }
        let _ = self.load_head().await;
        // A message taken off the queue while batching joins, handled next.
        let mut carried = None;
        loop {
            let msg = match carried.take() {
                Some(msg) => Some(msg),
                None => tokio::select! {
                    msg = rx.recv() => msg,
                    _ = tokio::time::sleep(GAP_RETRY), if self.retry_gap => Some(RoomMsg::Resync),
                },
            };
            match msg {
                None | Some(RoomMsg::Stop) => break,
                Some(msg) => carried = self.handle(msg, &mut rx).await,
            }
            if self.lagged.swap(false, Ordering::AcqRel) {
                self.catch_up().await;
            }
        }
        if let Err(e) = self.fanout.unsubscribe(self.draft_id).await {
            tracing::warn!(error.message = %e, "room unsubscribe failed");
        }
    }

    /// One message; a join may take the joins queued behind it, and then
    /// returns the next other message it took off the queue.
    async fn handle(&mut self, msg: RoomMsg, rx: &mut mpsc::Receiver<RoomMsg>) -> Option<RoomMsg> {
        match msg {
            RoomMsg::Deliver(event) => {
                self.hold(event);
                self.advance().await;
            }
            RoomMsg::Join { member, reply } => {
                return self.admit_queued_joins(member, reply, rx).await;
            }
            RoomMsg::Leave(id) => {
                self.members.remove(&id);
            }
            RoomMsg::Resync => {
                self.retry_gap = false;
                self.catch_up().await;
            }
            RoomMsg::StoreHead(seq) => {
                if self.head.is_some_and(|head| head < seq) {
                    self.metrics.fanout_catchup("head_check");
                    self.catch_up().await;
                    self.renew_subscription();
                }
            }
            RoomMsg::Stop => {}
        }
        None
    }

    /// The fanout missed events of this room: makes sure it still receives
    /// them, off the room's task (the store fill never waits on Redis), one
    /// renewal at a time per room however many head checks find it behind.
    fn renew_subscription(&self) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (fanout, draft_id, renewing) =
            (self.fanout.clone(), self.draft_id, self.renewing.clone());
        tokio::spawn(
            async move {
                if let Err(e) = fanout.renew(draft_id).await {
                    tracing::warn!(error.message = %e, "room subscription renewal failed");
                }
                renewing.store(false, Ordering::Release);
            }
            .in_current_span(),
        );
    }

    /// Admits this join and every other one already queued behind it on
    /// one read of the store (a reconnect storm costs one query, not one
    /// per socket). Returns the first other message taken off the queue,
    /// for the room to handle next.
    async fn admit_queued_joins(
        &mut self,
        member: Member,
        reply: oneshot::Sender<Result<u64, Error>>,
        rx: &mut mpsc::Receiver<RoomMsg>,
    ) -> Option<RoomMsg> {
        let mut joins = vec![(member, reply)];
        let mut after = None;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                RoomMsg::Join { member, reply } => joins.push((member, reply)),
                other => {
                    after = Some(other);
                    break;
                }
            }
        }
        self.admit(joins).await;
        after
    }

    /// Members in at the store's head, or each told why not.
    async fn admit(&mut self, joins: Vec<(Member, oneshot::Sender<Result<u64, Error>>)>) {
        let head = self.head_for_join().await;
        for (member, reply) in joins {
            let answer = match &head {
                Ok(head) => {
                    self.members.insert(member.connection_id, member);
                    Ok(*head)
                }
                Err(e) => Err(Error::unavailable(e)),
            };
            let _ = reply.send(answer);
        }
    }

    /// Delivers everything the store holds after the head.
    async fn catch_up(&mut self) {
        self.fill_from_store(None).await;
        self.advance().await;
    }

    /// The head a joining socket starts from: the store's, never a cached
    /// one, so a client that resumes with `since` after a fault gets what the
    /// fanout did not bring. Members already here get those events first.
    async fn head_for_join(&mut self) -> Result<u64, Error> {
        let before = self.load_head().await?;
        if !self.fill_from_store(None).await {
            return Err(Error::unavailable("store unreachable while joining"));
        }
        self.advance().await;
        let head = self.head.unwrap_or(before);
        if head != before {
            self.metrics.fanout_catchup("join");
        }
        Ok(head)
    }

    /// Keeps an event that continues or runs ahead of the head, up to
    /// `MAX_PENDING` of them; past that, the store fills them in later.
    fn hold(&mut self, event: Event) {
        let Some(head) = self.head else {
            self.pending.insert(event.seq, event);
            return self.bound_pending();
        };
        if event.seq <= head {
            return;
        }
        // The next event is always kept: it needs no store to go out.
        if event.seq != head + 1 && self.pending.len() >= MAX_PENDING {
            self.pending.clear();
            self.retry_gap = true;
            return;
        }
        self.pending.insert(event.seq, event);
    }

    /// Before the head is known (the store failed at start), events wait
    /// unfiltered; the same bound applies.
    fn bound_pending(&mut self) {
        if self.pending.len() > MAX_PENDING {
            self.pending.clear();
            self.retry_gap = true;
        }
    }

    async fn load_head(&mut self) -> Result<u64, Error> {
        if let Some(head) = self.head {
            return Ok(head);
        }
        let draft = self
            .store
            .get_draft(self.draft_id)
            .await?
            .ok_or_else(Error::draft_not_found)?;
        self.head = Some(draft.seq);
        self.pending = self.pending.split_off(&(draft.seq + 1));
        Ok(draft.seq)
    }

    /// Delivers pending events while they continue the head; at a gap, fills
    /// from the store.
    async fn advance(&mut self) {
        if self.load_head().await.is_err() {
            self.retry_gap = true;
            return;
        }
        while let Some((&seq, _)) = self.pending.first_key_value() {
            let head = self.head.expect("loaded above");
            if seq <= head {
                self.pending.pop_first();
            } else if seq == head + 1 {
                let (_, event) = self.pending.pop_first().expect("peeked");
                self.broadcast(&event);
            } else if !self.fill_from_store(Some(seq)).await {
                return;
            }
        }
    }

    /// Delivers events after the head from the store: all of them (`until`
    /// is `None`) or those before `until`, keeping later ones pending. False
    /// when the store failed or does not (yet) hold the missing events; the
    /// room then retries after `GAP_RETRY`.
    async fn fill_from_store(&mut self, until: Option<u64>) -> bool {
        loop {
            let Some(head) = self.head else { return false };
            if until.is_some_and(|u| head + 1 >= u) {
                return true;
            }
            let events = match self
                .store
                .events(self.draft_id, Page::largest_after(head))
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error.message = %e, after = head, "gap fill from store failed");
                    self.retry_gap = true;
                    return false;
                }
            };
            let fetched = events.len();
            for event in events {
                let next = self.head.is_some_and(|h| event.seq == h + 1);
                if next && until.is_none_or(|u| event.seq < u) {
                    self.broadcast(&event);
                } else {
                    self.hold(event);
                }
            }
            if self.head == Some(head) {
                // No progress: with a gap to close, the store lacks events it
                // should have; without one, we are simply up to date.
                if until.is_some() {
                    self.retry_gap = true;
                    return false;
                }
                return true;
            }
            if until.is_none() && fetched < MAX_PAGE_LIMIT as usize {
                return true;
            }
        }
    }

    /// Sends one event to every member and advances the head.
    fn broadcast(&mut self, event: &Event) {
        self.head = Some(event.seq);
        let frame = match Frame::new(event) {
            Ok(frame) => Arc::new(frame),
            Err(e) => {
                tracing::error!(error.message = %e, seq = event.seq, "event not serializable");
                return;
            }
        };
        let metrics = &self.metrics;
        self.members.retain(|_, member| {
            metrics.ws_queue_depth(member.tx.max_capacity() - member.tx.capacity());
            match member.tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics.ws_dropped();
                    member.kick.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}
