//! The collab vocabulary: drafts, collaborators, segments and the events that
//! record every accepted mutation. These are the wire shapes too: the JSON a
//! client sees is exactly what serde makes of these types.

use std::str::FromStr;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use super::input::{IdempotencyKey, UserId};
use crate::error::Error;

/// What a collaborator may do with a draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the draft; may add collaborators and take the ring back.
    Owner,
    /// May hold the ring and append.
    Editor,
    /// Reads and watches only.
    Viewer,
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        [Role::Owner, Role::Editor, Role::Viewer]
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| Error::internal(format!("unknown role {text:?}")))
    }
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Collaborator {
    pub user_id: UserId,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Draft {
    pub id: Uuid,
    pub title: String,
    pub owner_id: UserId,
    pub ring_holder: UserId,
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
    pub fn role_of(&self, user_id: &UserId) -> Option<Role> {
        self.collaborators
            .iter()
            .find(|c| c.user_id == *user_id)
            .map(|c| c.role)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    pub id: Uuid,
    pub draft_id: Uuid,
    /// The seq of the `segment_appended` event that created it.
    pub seq: u64,
    pub author_id: UserId,
    pub content: String,
    pub idempotency_key: Option<IdempotencyKey>,
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

impl FromStr for EventType {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        [
            EventType::SegmentAppended,
            EventType::RingPassed,
            EventType::CollaboratorAdded,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
        .ok_or_else(|| Error::internal(format!("unknown event type {text:?}")))
    }
}

/// What an event says happened: its `type` and `data` on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    SegmentAppended {
        segment: Segment,
    },
    RingPassed {
        from_user_id: UserId,
        to_user_id: UserId,
    },
    CollaboratorAdded {
        user_id: UserId,
        role: Role,
    },
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::SegmentAppended { .. } => EventType::SegmentAppended,
            EventBody::RingPassed { .. } => EventType::RingPassed,
            EventBody::CollaboratorAdded { .. } => EventType::CollaboratorAdded,
        }
    }

    /// The `data` object alone, for a store that keeps type and data apart.
    pub fn data(&self) -> Result<serde_json::Value, Error> {
        let mut tagged = serde_json::to_value(self).map_err(Error::internal)?;
        Ok(tagged
            .get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or_default())
    }

    /// Rebuilds a body from a stored type and data object.
    pub fn from_parts(event_type: EventType, data: serde_json::Value) -> Result<Self, Error> {
        let tagged = serde_json::json!({ "type": event_type.as_str(), "data": data });
        serde_json::from_value(tagged)
            .map_err(|e| Error::internal(format!("stored {} event: {e}", event_type.as_str())))
    }
}

/// One entry of a draft's ordered log, and the WebSocket frame that carries
/// it: `{"type","draft_id","seq","request_id","ts","data"}`, in that order.
#[derive(Clone, Debug, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub draft_id: Uuid,
    pub seq: u64,
    /// The request that caused the event, so a client can match its own writes.
    pub request_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }
}

// Written by hand so that `type` comes first, as clients read it.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The timestamp in RFC 3339, as every other time on the wire.
        struct Rfc3339(OffsetDateTime);
        impl Serialize for Rfc3339 {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                time::serde::rfc3339::serialize(&self.0, serializer)
            }
        }
        let data = self.body.data().map_err(serde::ser::Error::custom)?;
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("type", &self.event_type())?;
        map.serialize_entry("draft_id", &self.draft_id)?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("request_id", &self.request_id)?;
        map.serialize_entry("ts", &Rfc3339(self.ts))?;
        map.serialize_entry("data", &data)?;
        map.end()
    }
}

/// A state change the rules have accepted, before the store gives it a seq.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    AppendSegment {
        segment_id: Uuid,
        author_id: UserId,
        content: String,
        idempotency_key: Option<IdempotencyKey>,
    },
    PassRing {
        from: UserId,
        to: UserId,
    },
    AddCollaborator {
        user_id: UserId,
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
#[derive(Clone, Debug)]
pub struct Actor {
    pub user_id: UserId,
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
        let (body, segment) = match self {
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
                let body = EventBody::SegmentAppended {
                    segment: segment.clone(),
                };
                (body, Some(segment))
            }
            Change::PassRing { from, to } => (
                EventBody::RingPassed {
                    from_user_id: from.clone(),
                    to_user_id: to.clone(),
                },
                None,
            ),
            Change::AddCollaborator { user_id, role } => (
                EventBody::CollaboratorAdded {
                    user_id: user_id.clone(),
                    role: *role,
                },
                None,
            ),
        };
        let event = Event {
            draft_id,
            seq,
            request_id: request_id.to_owned(),
            ts,
            body,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    /// The wire format of every event type, pinned: a client parses these.
    #[test]
    fn events_keep_their_wire_format_and_round_trip() {
        let ts = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let draft_id = Uuid::nil();
        let change = Change::AppendSegment {
            segment_id: Uuid::nil(),
            author_id: user("alice"),
            content: "Hello".into(),
            idempotency_key: Some(IdempotencyKey::parse("k1").unwrap()),
        };
        let (appended, _) = change.materialize(draft_id, 3, "req-1", ts);
        let passed = Change::PassRing {
            from: user("alice"),
            to: user("bob"),
        }
        .materialize(draft_id, 4, "req-2", ts)
        .0;
        let added = Change::AddCollaborator {
            user_id: user("vic"),
            role: Role::Viewer,
        }
        .materialize(draft_id, 5, "req-3", ts)
        .0;
        let common = |kind: &str, seq: u64, request: &str, data: serde_json::Value| {
            serde_json::json!({
                "type": kind,
                "draft_id": "00000000-0000-0000-0000-000000000000",
                "seq": seq,
                "request_id": request,
                "ts": "2023-11-14T22:13:20Z",
                "data": data,
            })
        };
        let expected = [
            common(
                "segment_appended",
                3,
                "req-1",
                serde_json::json!({ "segment": {
                    "id": "00000000-0000-0000-0000-000000000000",
                    "draft_id": "00000000-0000-0000-0000-000000000000",
                    "seq": 3,
                    "author_id": "alice",
                    "content": "Hello",
                    "idempotency_key": "k1",
                    "created_at": "2023-11-14T22:13:20Z",
                }}),
            ),
            common(
                "ring_passed",
                4,
                "req-2",
                serde_json::json!({ "from_user_id": "alice", "to_user_id": "bob" }),
            ),
            common(
                "collaborator_added",
                5,
                "req-3",
                serde_json::json!({ "user_id": "vic", "role": "viewer" }),
            ),
        ];
        for (event, wire) in [appended, passed, added].into_iter().zip(expected) {
            assert_eq!(serde_json::to_value(&event).unwrap(), wire);
            let text = serde_json::to_string(&event).unwrap();
            let prefix = format!(
                r#"{{"type":{},"draft_id":{},"seq":{},"request_id":{},"ts":{},"data":{{"#,
                wire["type"], wire["draft_id"], wire["seq"], wire["request_id"], wire["ts"]
            );
            assert!(text.starts_with(&prefix), "key order changed: {text}");
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), event);
            let data = event.body.data().unwrap();
            assert_eq!(data, wire["data"]);
            let stored = EventBody::from_parts(event.event_type(), data).unwrap();
            assert_eq!(stored, event.body);
        }
    }

    #[test]
    fn roles_and_event_types_parse_from_their_names() {
        for role in [Role::Owner, Role::Editor, Role::Viewer] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("admin".parse::<Role>().is_err());
        assert_eq!(
            "ring_passed".parse::<EventType>().unwrap(),
            EventType::RingPassed
        );
        assert!("renamed".parse::<EventType>().is_err());
    }
}
