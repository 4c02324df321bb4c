//! The collab vocabulary: drafts, collaborators, segments and the events that
//! record every accepted mutation. These are the wire shapes too: the JSON a
//! client sees is exactly what serde makes of these types.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a collaborator may do with a draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the draft; may add collaborators and take the ring back.
    Owner,
    /// May hold the ring and append.
    Editor,
    /// Reads and watches only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }

    /// Owners and editors may hold the ring; viewers never.
    pub fn may_hold_ring(self) -> bool {
        matches!(self, Role::Owner | Role::Editor)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collaborator {
    pub user_id: String,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub id: Uuid,
    pub title: String,
    pub owner_id: String,
    pub ring_holder: String,
    /// In the order they joined; the owner first.
    pub collaborators: Vec<Collaborator>,
    /// The head of the draft's event log: the seq of its latest event, 0 when new.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Draft {
    pub fn role_of(&self, user_id: &str) -> Option<Role> {
        self.collaborators
            .iter()
            .find(|c| c.user_id == user_id)
            .map(|c| c.role)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub id: Uuid,
    pub draft_id: Uuid,
    /// The seq of the `segment_appended` event that created it.
    pub seq: u64,
    pub author_id: String,
    pub content: String,
    pub idempotency_key: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The kinds of event a draft's log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    SegmentAppended,
    RingPassed,
    CollaboratorAdded,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SegmentAppended => "segment_appended",
            EventType::RingPassed => "ring_passed",
            EventType::CollaboratorAdded => "collaborator_added",
        }
    }
}

/// One entry of a draft's ordered log, and the WebSocket frame that carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub draft_id: Uuid,
    pub seq: u64,
    /// The request that caused the event, so a client can match its own writes.
    pub request_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub data: serde_json::Value,
}

/// A state change the rules have accepted, before the store gives it a seq.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    AppendSegment {
        segment_id: Uuid,
        author_id: String,
        content: String,
        idempotency_key: Option<String>,
    },
    PassRing {
        from: String,
        to: String,
    },
    AddCollaborator {
        user_id: String,
        role: Role,
    },
}

/// What `decide` tells the store to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Record the change as the draft's next event.
    Apply(Change),
    /// Nothing to write: the request repeats an append that already happened.
    Replay(Segment),
    /// Nothing to write: the request asks for the state that already holds.
    Unchanged,
}

/// What the store knows about a draft at the moment it decides, under its lock.
#[derive(Clone, Debug)]
pub struct DraftSnapshot {
    pub draft: Draft,
    pub segment_count: u64,
    /// The segment already appended with the request's idempotency key, if any.
    pub replay: Option<Segment>,
}

/// The result of a committed mutation.
#[derive(Clone, Debug)]
pub enum Outcome {
    Applied {
        draft: Box<Draft>,
        event: Event,
        /// Set for appends.
        segment: Option<Segment>,
        /// Segments in the draft after this change.
        segment_count: u64,
    },
    Replayed(Segment),
    Unchanged(Draft),
}

/// Who asked, for events, audit rows and logs.
#[derive(Clone, Debug, Default)]
pub struct Actor {
    pub user_id: String,
    pub request_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The current time at the precision every store keeps (microseconds), so a
/// value read back equals the value written whichever adapter holds it.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

impl Change {
    /// Builds the state a store writes for this change at `seq`: the event
    /// (identical in every adapter) and, for an append, the segment.
    pub fn materialize(
        &self,
        draft_id: Uuid,
        seq: u64,
        request_id: &str,
        ts: OffsetDateTime,
    ) -> (Event, Option<Segment>) {
        let (event_type, data, segment) = match self {
            Change::AppendSegment {
                segment_id,
                author_id,
                content,
                idempotency_key,
            } => {
                let segment = Segment {
                    id: *segment_id,
                    draft_id,
                    seq,
                    author_id: author_id.clone(),
                    content: content.clone(),
                    idempotency_key: idempotency_key.clone(),
                    created_at: ts,
                };
                let data = serde_json::json!({ "segment": segment });
                (EventType::SegmentAppended, data, Some(segment))
            }
            Change::PassRing { from, to } => (
                EventType::RingPassed,
                serde_json::json!({ "from_user_id": from, "to_user_id": to }),
                None,
            ),
            Change::AddCollaborator { user_id, role } => (
                EventType::CollaboratorAdded,
                serde_json::json!({ "user_id": user_id, "role": role }),
                None,
            ),
        };
        let event = Event {
            event_type,
            draft_id,
            seq,
            request_id: request_id.to_owned(),
            ts,
            data,
        };
        (event, segment)
    }

    /// Applies the change to the draft's own row (ring holder, collaborators).
    pub fn apply_to(&self, draft: &mut Draft) {
        match self {
            Change::AppendSegment { .. } => {}
            Change::PassRing { to, .. } => draft.ring_holder = to.clone(),
            Change::AddCollaborator { user_id, role } => draft.collaborators.push(Collaborator {
                user_id: user_id.clone(),
                role: *role,
            }),
        }
    }
}
