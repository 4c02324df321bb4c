//! The collab rules, as pure functions of a draft snapshot. The store runs
//! them while it holds the draft exclusively, so a rule and the write it
//! allows can never be separated by another request.
//!
//! - Any collaborator reads and watches; others get `forbidden`.
//! - Only the ring holder appends (`ring_required`); viewers never (`forbidden`).
//! - The holder or the owner passes the ring, to an owner or editor.
//! - Only the owner adds collaborators, as editor or viewer, up to the cap.
//! - An append whose idempotency key was seen returns the original segment.

use uuid::Uuid;

use super::input::{IdempotencyKey, SegmentContent, UserId};
use super::model::{Change, Decision, Draft, DraftSnapshot, Role};
use crate::error::Error;

/// The caller's role, or `forbidden` when they are not a collaborator.
pub fn require_member(draft: &Draft, user_id: &UserId) -> Result<Role, Error> {
    draft
        .role_of(user_id)
        .ok_or_else(|| Error::Forbidden("you are not a collaborator on this draft".into()))
}

pub fn decide_append(
    snap: &DraftSnapshot,
    author_id: &UserId,
    content: &SegmentContent,
    idempotency_key: Option<&IdempotencyKey>,
    segment_id: Uuid,
) -> Result<Decision, Error> {
    let role = require_member(&snap.draft, author_id)?;
    if let Some(original) = &snap.replay {
        // A retry returns what the first attempt made, even if the ring has
        // moved on since: the append already happened.
        return Ok(Decision::Replay(original.clone()));
    }
    if !role.may_hold_ring() {
        return Err(Error::Forbidden("viewers cannot append".into()));
    }
    if snap.draft.ring_holder != *author_id {
        return Err(Error::RingRequired);
    }
    Ok(Decision::Apply(Change::AppendSegment {
        segment_id,
        author_id: author_id.clone(),
        content: content.as_str().to_owned(),
        idempotency_key: idempotency_key.cloned(),
    }))
}

pub fn decide_pass_ring(snap: &DraftSnapshot, by: &UserId, to: &UserId) -> Result<Decision, Error> {
    let draft = &snap.draft;
    let role = require_member(draft, by)?;
    if draft.ring_holder != *by && role != Role::Owner {
        return Err(Error::Forbidden(
            "only the ring holder or the owner can pass the ring".into(),
        ));
    }
    match draft.role_of(to) {
        None => Err(Error::Validation(format!(
            "{to} is not a collaborator on this draft"
        ))),
        Some(r) if !r.may_hold_ring() => Err(Error::Validation(format!(
            "{to} is a viewer; the ring goes to an owner or editor"
        ))),
        Some(_) if draft.ring_holder == *to => Ok(Decision::Unchanged),
        Some(_) => Ok(Decision::Apply(Change::PassRing {
            from: draft.ring_holder.clone(),
            to: to.clone(),
        })),
    }
}

pub fn decide_add_collaborator(
    snap: &DraftSnapshot,
    by: &UserId,
    user_id: &UserId,
    role: Role,
    max_collaborators: Option<u32>,
) -> Result<Decision, Error> {
    let draft = &snap.draft;
    if require_member(draft, by)? != Role::Owner {
        return Err(Error::Forbidden(
            "only the owner can add collaborators".into(),
        ));
    }
    if role == Role::Owner {
        return Err(Error::Validation(
            "role must be editor or viewer; a draft has one owner".into(),
        ));
    }
    match draft.role_of(user_id) {
        Some(existing) if existing == role => return Ok(Decision::Unchanged),
        Some(existing) => {
            return Err(Error::Validation(format!(
                "{user_id} is already a collaborator with role {}",
                existing.as_str()
            )))
        }
        None => {}
    }
    if let Some(cap) = max_collaborators {
        if draft.collaborators.len() as u64 >= cap as u64 {
            return Err(Error::LimitExceeded(format!(
                "a draft may have at most {cap} collaborators"
            )));
        }
    }
    Ok(Decision::Apply(Change::AddCollaborator {
        user_id: user_id.clone(),
        role,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::model::{now, Collaborator, Segment};
    use super::*;

    fn u(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn append(
        s: &DraftSnapshot,
        who: &str,
        key: Option<&str>,
        id: Uuid,
    ) -> Result<Decision, Error> {
        let key = key.map(|k| IdempotencyKey::parse(k).unwrap());
        let content = SegmentContent::parse("x".into()).unwrap();
        decide_append(s, &u(who), &content, key.as_ref(), id)
    }

    fn pass(s: &DraftSnapshot, by: &str, to: &str) -> Result<Decision, Error> {
        decide_pass_ring(s, &u(by), &u(to))
    }

    fn add(
        s: &DraftSnapshot,
        by: &str,
        who: &str,
        role: Role,
        cap: Option<u32>,
    ) -> Result<Decision, Error> {
        decide_add_collaborator(s, &u(by), &u(who), role, cap)
    }

    fn snapshot() -> DraftSnapshot {
        let ts = now();
        DraftSnapshot {
            draft: Draft {
                id: Uuid::new_v4(),
                title: "t".into(),
                owner_id: u("olga"),
                ring_holder: u("olga"),
                collaborators: vec![
                    Collaborator {
                        user_id: u("olga"),
                        role: Role::Owner,
                    },
                    Collaborator {
                        user_id: u("ed"),
                        role: Role::Editor,
                    },
                    Collaborator {
                        user_id: u("vi"),
                        role: Role::Viewer,
                    },
                ],
                seq: 0,
                created_at: ts,
                updated_at: ts,
            },
            segment_count: 0,
            replay: None,
        }
    }

    fn code(r: Result<Decision, Error>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.code())
    }

    #[test]
    fn only_the_holder_appends() {
        let s = snapshot();
        let id = Uuid::new_v4();
        assert_eq!(code(append(&s, "olga", None, id)), "ok");
        assert_eq!(code(append(&s, "ed", None, id)), "ring_required");
        assert_eq!(code(append(&s, "vi", None, id)), "forbidden");
        assert_eq!(code(append(&s, "stranger", None, id)), "forbidden");
    }

    #[test]
    fn a_replay_returns_the_original_even_after_the_ring_moved() {
        let mut s = snapshot();
        let original = Segment {
            id: Uuid::new_v4(),
            draft_id: s.draft.id,
            seq: 1,
            author_id: u("ed"),
            content: "x".into(),
            idempotency_key: Some(IdempotencyKey::parse("k").unwrap()),
            created_at: now(),
        };
        s.replay = Some(original.clone());
        let d = append(&s, "ed", Some("k"), Uuid::new_v4()).unwrap();
        assert_eq!(d, Decision::Replay(original));
        // A stranger cannot read someone's segment by guessing a key.
        assert_eq!(
            code(append(&s, "stranger", Some("k"), Uuid::new_v4())),
            "forbidden"
        );
    }

    #[test]
    fn the_ring_goes_from_holder_or_owner_to_an_editor() {
        let mut s = snapshot();
        assert_eq!(code(pass(&s, "olga", "ed")), "ok");
        assert_eq!(code(pass(&s, "ed", "olga")), "forbidden");
        assert_eq!(code(pass(&s, "olga", "vi")), "validation_error");
        assert_eq!(code(pass(&s, "olga", "nobody")), "validation_error");
        assert_eq!(pass(&s, "olga", "olga").unwrap(), Decision::Unchanged);
        s.draft.ring_holder = u("ed");
        assert_eq!(code(pass(&s, "ed", "olga")), "ok");
        // The owner can take the ring back from anyone.
        assert_eq!(code(pass(&s, "olga", "olga")), "ok");
    }

    #[test]
    fn only_the_owner_adds_and_the_cap_is_hard() {
        let s = snapshot();
        assert_eq!(code(add(&s, "olga", "new", Role::Editor, None)), "ok");
        assert_eq!(code(add(&s, "ed", "new", Role::Editor, None)), "forbidden");
        assert_eq!(
            code(add(&s, "olga", "new", Role::Owner, None)),
            "validation_error"
        );
        assert_eq!(
            code(add(&s, "olga", "new", Role::Viewer, Some(3))),
            "limit_exceeded"
        );
        assert_eq!(
            add(&s, "olga", "ed", Role::Editor, Some(3)).unwrap(),
            Decision::Unchanged
        );
        assert_eq!(
            code(add(&s, "olga", "ed", Role::Viewer, None)),
            "validation_error"
        );
    }
}
