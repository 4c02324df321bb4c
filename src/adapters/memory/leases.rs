//! In-process socket counts, per user, per draft and in total, keyed by
//! connection id so acquire and release are idempotent. The active-room count
//! is derived from the same table, so it can never disagree with it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use crate::collab::input::UserId;
use crate::error::Error;
use crate::ports::{Admission, LimitScope, Rooms, SocketCaps, SocketClaim, SocketLeases};

/// Every map holds only what open sockets hold: an entry per socket, and a
/// count per user and per draft that is removed when it reaches zero.
#[derive(Default)]
struct Counts {
    sockets: HashMap<Uuid, SocketClaim>,
    per_user: HashMap<UserId, u32>,
    per_draft: HashMap<Uuid, u32>,
}

#[derive(Default)]
pub struct MemoryLeases {
    counts: Mutex<Counts>,
}

impl MemoryLeases {
    pub fn new() -> Self {
        Self::default()
    }
}

fn over(count: u32, cap: Option<u32>) -> bool {
    cap.is_some_and(|cap| count >= cap)
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[async_trait]
impl SocketLeases for MemoryLeases {
    async fn acquire(&self, claim: &SocketClaim, caps: &SocketCaps) -> Result<Admission, Error> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.sockets.contains_key(&claim.connection_id) {
            return Ok(Admission::Admitted);
        }
        let user = c.per_user.get(&claim.user_id).copied().unwrap_or(0);
        let draft = c.per_draft.get(&claim.draft_id).copied().unwrap_or(0);
        let refused = if over(c.sockets.len() as u32, caps.global) {
            Some(LimitScope::Global)
        } else if over(user, caps.per_user) {
            Some(LimitScope::User)
        } else if over(draft, caps.per_draft) {
            Some(LimitScope::Draft)
        } else {
            None
        };
        if let Some(scope) = refused {
            return Ok(Admission::Refused(scope));
        }
        *c.per_user.entry(claim.user_id.clone()).or_default() += 1;
        *c.per_draft.entry(claim.draft_id).or_default() += 1;
        c.sockets.insert(claim.connection_id, claim.clone());
        Ok(Admission::Admitted)
    }

    async fn release(&self, connection_id: Uuid) -> Result<(), Error> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(claim) = c.sockets.remove(&connection_id) {
            decrement(&mut c.per_user, &claim.user_id);
            decrement(&mut c.per_draft, &claim.draft_id);
        }
        Ok(())
    }
}

#[async_trait]
impl Rooms for MemoryLeases {
    async fn active_rooms(&self) -> Result<u64, Error> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Ok(c.per_draft.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(user: &str, draft: Uuid) -> SocketClaim {
        SocketClaim {
            connection_id: Uuid::new_v4(),
            user_id: UserId::parse(user).unwrap(),
            draft_id: draft,
        }
    }

    #[tokio::test]
    async fn caps_refuse_the_next_socket_and_release_frees_it() {
        let leases = MemoryLeases::new();
        let caps = SocketCaps {
            per_user: Some(2),
            ..SocketCaps::default()
        };
        let draft = Uuid::new_v4();
        let a = claim("alice", draft);
        let b = claim("alice", draft);
        assert_eq!(
            leases.acquire(&a, &caps).await.unwrap(),
            Admission::Admitted
        );
        // Acquiring the same connection again does not count twice.
        assert_eq!(
            leases.acquire(&a, &caps).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(
            leases.acquire(&b, &caps).await.unwrap(),
            Admission::Admitted
        );
        let c = claim("alice", draft);
        assert_eq!(
            leases.acquire(&c, &caps).await.unwrap(),
            Admission::Refused(LimitScope::User)
        );
        assert_eq!(leases.active_rooms().await.unwrap(), 1);
        leases.release(a.connection_id).await.unwrap();
        leases.release(a.connection_id).await.unwrap();
        assert_eq!(
            leases.acquire(&c, &caps).await.unwrap(),
            Admission::Admitted
        );
        leases.release(b.connection_id).await.unwrap();
        leases.release(c.connection_id).await.unwrap();
        assert_eq!(leases.active_rooms().await.unwrap(), 0);
    }
}
