//! Socket caps and the active-room count, cluster-wide, from leases in Redis
//! (`lua/sockets.lua`). This replica registers an incarnation and renews its
//! lease every third of `WS_LEASE_TTL_SECONDS`; its sockets count only while
//! the lease is live, so a replica killed with SIGKILL stops counting within
//! the TTL. A replica whose lease lapsed (paused, partitioned) registers a
//! new incarnation with the sockets it really holds: old counts never come
//! back.
//!
//! While Redis is unreachable, new sockets are admitted against this
//! replica's share of each cap (the cap divided by the replicas alive at the
//! last renewal), and the first successful renewal afterwards re-registers
//! every local socket, so Redis agrees with reality again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Pool;
use fred::types::scripts::Script;
use fred::types::Value;
use tracing::Instrument;
use uuid::Uuid;

use super::{int_of, redis_error};
use crate::error::Error;
use crate::ports::{Admission, LimitScope, Rooms, SocketCaps, SocketClaim, SocketLeases};
use crate::telemetry::Metrics;

pub const SOCKETS_LUA: &str = include_str!("../../../lua/sockets.lua");

pub struct RedisLeases {
    pool: Pool,
    script: Script,
    /// A hash tag shared by every lease key: `{<prefix>ws}`.
    namespace: String,
    ttl: Duration,
    /// std mutexes: held for a clone or an insert, never across `.await`.
    incarnation: Mutex<String>,
    /// This replica's open sockets: what a (re-)registration records.
    local: Mutex<HashMap<Uuid, SocketClaim>>,
    /// Live replicas at the last renewal; sizes the local share of caps.
    replicas: AtomicU64,
    /// A Redis call failed since the last registration: register again.
    stale: AtomicBool,
    metrics: Metrics,
}

impl RedisLeases {
    /// Registers this replica and starts its heartbeat.
    pub async fn start(
        pool: Pool,
        prefix: &str,
        ttl: Duration,
        metrics: Metrics,
    ) -> Result<Arc<Self>, Error> {
        let leases = Arc::new(RedisLeases {
            pool,
            script: Script::from_lua(SOCKETS_LUA),
            namespace: namespace(prefix),
            ttl,
            incarnation: Mutex::new(Uuid::new_v4().to_string()),
            local: Mutex::new(HashMap::new()),
            replicas: AtomicU64::new(1),
            stale: AtomicBool::new(false),
            metrics,
        });
        leases.register().await?;
        tokio::spawn(heartbeat(Arc::downgrade(&leases), ttl / 3));
        Ok(leases)
    }

    /// Live replicas as of the last renewal (at least 1).
    pub fn replicas(&self) -> u64 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    pub fn incarnation(&self) -> String {
        self.incarnation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    #[tracing::instrument(name = "redis sockets", skip_all, fields(otel.kind = "client", op = %args[0]))]
    async fn eval(&self, args: Vec<String>) -> Result<Value, Error> {
        let started = std::time::Instant::now();
        let reply = self
            .script
            .evalsha_with_reload(self.pool.next(), self.namespace.clone(), args)
            .await;
        self.metrics
            .redis_command("sockets", started.elapsed().as_secs_f64());
        reply.map_err(redis_error)
    }

    /// Records this incarnation's lease and every local socket, replacing
    /// whatever it recorded before.
    async fn register(&self) -> Result<(), Error> {
        let mut args = vec![
            "register".to_owned(),
            self.incarnation(),
            self.ttl.as_millis().to_string(),
        ];
        {
            let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            for claim in local.values() {
                args.push(claim.connection_id.to_string());
                args.push(claim.user_id.to_string());
                args.push(claim.draft_id.to_string());
            }
        }
        let live = int_of(&self.eval(args).await?)?;
        self.replicas.store(live.max(1) as u64, Ordering::Relaxed);
        self.stale.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Renews the lease, or registers a new incarnation when it lapsed.
    async fn renew(&self) -> Result<(), Error> {
        if self.stale.load(Ordering::Relaxed) {
            return self.register().await;
        }
        let args = vec![
            "renew".to_owned(),
            self.incarnation(),
            self.ttl.as_millis().to_string(),
        ];
        match int_of(&self.eval(args).await?)? {
            0 => {
                let fresh = Uuid::new_v4().to_string();
                tracing::warn!(incarnation = %fresh, "socket lease had lapsed; registering a new incarnation");
                *self.incarnation.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                self.register().await
            }
            live => {
                self.replicas.store(live as u64, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn remember(&self, claim: &SocketClaim) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(claim.connection_id, claim.clone());
    }

    /// Admission while Redis is unreachable: this replica's share of each cap.
    fn local_share(&self, claim: &SocketClaim, caps: &SocketCaps) -> Admission {
        let replicas = self.replicas.load(Ordering::Relaxed).max(1) as u32;
        let share = |cap: Option<u32>| cap.map(|c| c.div_ceil(replicas).max(1));
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let over = |count: usize, cap: Option<u32>| cap.is_some_and(|c| count as u32 >= c);
        let users = local
            .values()
            .filter(|c| c.user_id == claim.user_id)
            .count();
        let drafts = local
            .values()
            .filter(|c| c.draft_id == claim.draft_id)
            .count();
        if over(local.len(), share(caps.global)) {
            Admission::Refused(LimitScope::Global)
        } else if over(users, share(caps.per_user)) {
            Admission::Refused(LimitScope::User)
        } else if over(drafts, share(caps.per_draft)) {
            Admission::Refused(LimitScope::Draft)
        } else {
            Admission::Admitted
        }
    }

    async fn try_acquire(&self, claim: &SocketClaim, caps: &SocketCaps) -> Result<Answer, Error> {
        let args = vec![
            "acquire".to_owned(),
            self.incarnation(),
            claim.connection_id.to_string(),
            claim.user_id.to_string(),
            claim.draft_id.to_string(),
            caps.per_user.unwrap_or(0).to_string(),
            caps.per_draft.unwrap_or(0).to_string(),
            caps.global.unwrap_or(0).to_string(),
        ];
        let reply = self.eval(args).await?;
        let parts = match &reply {
            Value::Array(parts) if parts.len() == 2 => parts,
            _ => {
                return Err(Error::internal(format!(
                    "sockets.lua acquire replied {reply:?}"
                )))
            }
        };
        Ok(match (int_of(&parts[0])?, parts[1].as_str().as_deref()) {
            (1, _) => Answer::Admitted,
            (-1, _) => Answer::Lapsed,
            (0, Some("user")) => Answer::Refused(LimitScope::User),
            (0, Some("draft")) => Answer::Refused(LimitScope::Draft),
            (0, Some("global")) => Answer::Refused(LimitScope::Global),
            _ => {
                return Err(Error::internal(format!(
                    "sockets.lua acquire replied {reply:?}"
                )))
            }
        })
    }
}

/// What `sockets.lua acquire` said.
enum Answer {
    Admitted,
    Refused(LimitScope),
    /// This incarnation's lease lapsed; register anew before counting.
    Lapsed,
}

async fn heartbeat(leases: Weak<RedisLeases>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let renewal = leases
            .renew()
            .instrument(crate::telemetry::untraced("socket lease renewal"));
        if let Err(e) = renewal.await {
            if !leases.stale.swap(true, Ordering::Relaxed) {
                tracing::warn!(error.message = %e, "socket lease renewal failed; caps fall back to a local share");
            }
        }
    }
}

#[async_trait]
impl SocketLeases for RedisLeases {
    async fn acquire(&self, claim: &SocketClaim, caps: &SocketCaps) -> Result<Admission, Error> {
        let mut outcome = self.try_acquire(claim, caps).await;
        if matches!(outcome, Ok(Answer::Lapsed)) {
            // Our lease lapsed: come back as a new incarnation, then retry.
            *self.incarnation.lock().unwrap_or_else(|p| p.into_inner()) =
                Uuid::new_v4().to_string();
            outcome = match self.register().await {
                Ok(()) => self.try_acquire(claim, caps).await,
                Err(e) => Err(e),
            };
        }
        let admission = match outcome {
            Ok(Answer::Admitted) => Admission::Admitted,
            Ok(Answer::Refused(scope)) => Admission::Refused(scope),
            Ok(Answer::Lapsed) => return Err(Error::internal("socket lease lapsed again at once")),
            Err(e) => {
                if !self.stale.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error.message = %e, "socket caps fall back to this replica's share");
                }
                self.local_share(claim, caps)
            }
        };
        if admission == Admission::Admitted {
            self.remember(claim);
        }
        Ok(admission)
    }

    async fn release(&self, connection_id: Uuid) -> Result<(), Error> {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&connection_id);
        let args = vec![
            "release".to_owned(),
            self.incarnation(),
            connection_id.to_string(),
        ];
        if let Err(e) = self.eval(args).await {
            // The next registration writes the truth without this socket.
            self.stale.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }
}

/// Drafts with at least one socket on any live replica under `prefix`.
pub async fn active_rooms(pool: &Pool, prefix: &str) -> Result<u64, Error> {
    let reply: Value = Script::from_lua(SOCKETS_LUA)
        .evalsha_with_reload(pool.next(), namespace(prefix), vec!["rooms".to_owned()])
        .await
        .map_err(redis_error)?;
    Ok(int_of(&reply)?.max(0) as u64)
}

pub const LEADER_LUA: &str = include_str!("../../../lua/leader.lua");

/// Whether `candidate` holds (now renewed for `ttl`) the lease of `job`.
async fn lead(
    pool: &Pool,
    prefix: &str,
    job: &str,
    candidate: &str,
    ttl: Duration,
) -> Result<bool, Error> {
    let reply: Value = Script::from_lua(LEADER_LUA)
        .evalsha_with_reload(
            pool.next(),
            format!("{prefix}leader:{job}"),
            vec![candidate.to_owned(), ttl.as_millis().to_string()],
        )
        .await
        .map_err(redis_error)?;
    Ok(int_of(&reply)? == 1)
}

/// Leader leases in Redis (`lua/leader.lua`): one replica at a time holds
/// each job's lease, renewing it while it keeps asking.
pub struct RedisLeadership {
    pool: Pool,
    prefix: String,
    /// Names this replica in the lease.
    candidate: String,
}

impl RedisLeadership {
    pub fn new(pool: Pool, prefix: &str) -> Self {
        RedisLeadership {
            pool,
            prefix: prefix.to_owned(),
            candidate: Uuid::new_v4().to_string(),
        }
    }
}

#[async_trait]
impl crate::ports::Leadership for RedisLeadership {
    async fn lead(&self, job: &'static str, ttl: Duration) -> bool {
        lead(&self.pool, &self.prefix, job, &self.candidate, ttl)
            .await
            .unwrap_or(false)
    }
}

/// The hash tag every lease key of a deployment shares.
fn namespace(prefix: &str) -> String {
    format!("{{{prefix}ws}}")
}

#[async_trait]
impl Rooms for RedisLeases {
    async fn active_rooms(&self) -> Result<u64, Error> {
        // Through `eval`: the loaded script, with its span and timing.
        let rooms = int_of(&self.eval(vec!["rooms".to_owned()]).await?)?;
        Ok(rooms.max(0) as u64)
    }
}
