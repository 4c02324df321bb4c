//! The cluster under test and what can go wrong with it: three replica
//! slots, each reaching Postgres and a private Redis through proxies of its
//! own; a load balancer's view of which replicas take traffic; and the
//! faults, each injected and then healed.

use std::fmt;
use std::sync::{Arc, RwLock};

use crate::common::cluster::{Cluster, Replica};
use crate::common::pg::server_addr as postgres_addr;
use crate::common::proxy::Proxy;
use crate::common::redis::{client as redis_client, PrivateRedis};
use crate::common::{eventually, Api};
use fred::interfaces::LuaInterface;

pub const REPLICAS: usize = 3;
const REDIS_HEALTH: &str = "health_status{component=\"redis\"}";
/// How long the load balancer keeps sending clients to a replica that died
/// or froze.
const HEALTH_CHECK_LAG: std::time::Duration = std::time::Duration::from_millis(500);

/// One fault and where it strikes. Each is injected, left in place while
/// the writers go on, then healed; silence follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a replica; healed by starting a new one in its place.
    Kill(usize),
    /// SIGSTOP a replica (its sockets stay open, its lease lapses); SIGCONT.
    Pause(usize),
    /// Redis dies with every key and script; it comes back empty.
    RedisRestart,
    /// One replica loses Redis; the others keep it.
    RedisCut(usize),
    /// Every loaded Lua script is forgotten mid-load.
    ScriptFlush,
    /// No replica reaches Postgres.
    PostgresCut,
    /// One replica loses Postgres.
    PostgresCutOne(usize),
    /// A COMMIT through one replica succeeds and its reply is lost.
    LostReply(usize),
}

impl Fault {
    /// Every kind once, on replicas the seed picks, in an order it picks:
    /// the short schedule CI runs.
    pub fn each_once(rng: &mut fastrand::Rng) -> Vec<Fault> {
        let mut all: Vec<Fault> = (0..KINDS).map(|k| Fault::of_kind(k, rng)).collect();
        rng.shuffle(&mut all);
        all
    }

    /// Any fault, on any replica.
    pub fn any(rng: &mut fastrand::Rng) -> Fault {
        let kind = rng.usize(0..KINDS);
        Fault::of_kind(kind, rng)
    }

    fn of_kind(kind: usize, rng: &mut fastrand::Rng) -> Fault {
        let replica = rng.usize(0..REPLICAS);
        match kind {
            0 => Fault::Kill(replica),
            1 => Fault::Pause(replica),
            2 => Fault::RedisRestart,
            3 => Fault::RedisCut(replica),
            4 => Fault::ScriptFlush,
            5 => Fault::PostgresCut,
            6 => Fault::PostgresCutOne(replica),
            _ => Fault::LostReply(replica),
        }
    }

    /// The fault's name without its replica, for tallies.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::RedisRestart => "redis_restart",
            Fault::RedisCut(_) => "redis_cut",
            Fault::ScriptFlush => "script_flush",
            Fault::PostgresCut => "postgres_cut",
            Fault::PostgresCutOne(_) => "postgres_cut_one",
            Fault::LostReply(_) => "lost_reply",
        }
    }

    /// Whether the fault may make replica `slot` refuse a request or a join
    /// with `unavailable`: it is cut from Postgres, lost a reply, or froze.
    /// With only Redis in trouble, nothing excuses a refusal.
    pub fn excuses(self, slot: usize) -> bool {
        match self {
            Fault::PostgresCut => true,
            Fault::Kill(i) | Fault::Pause(i) | Fault::PostgresCutOne(i) | Fault::LostReply(i) => {
                slot == i
            }
            Fault::RedisRestart | Fault::RedisCut(_) | Fault::ScriptFlush => false,
        }
    }

    /// Whether the fault stops replica `slot` itself, so that its clients
    /// may get no answer and lose their sockets.
    pub fn stops(self, slot: usize) -> bool {
        matches!(self, Fault::Kill(i) | Fault::Pause(i) if i == slot)
    }
}

const KINDS: usize = 8;

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(i)
            | Fault::Pause(i)
            | Fault::RedisCut(i)
            | Fault::PostgresCutOne(i)
            | Fault::LostReply(i) => write!(f, "{}({i})", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

/// The load balancer's view: the replicas that take new requests and
/// sockets. A killed or frozen replica leaves it, as a failed health check
/// would take it out; what is already in flight to it stays stuck there.
#[derive(Clone, Default)]
pub struct Routes(Arc<RwLock<Vec<Option<Api>>>>);

impl Routes {
    /// A replica for the next request: its slot and its address.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Option<(usize, Api)> {
        let routes = self.0.read().unwrap();
        let live: Vec<(usize, &Api)> = routes
            .iter()
            .enumerate()
            .filter_map(|(slot, api)| Some((slot, api.as_ref()?)))
            .collect();
        (!live.is_empty()).then(|| {
            let (slot, api) = live[rng.usize(0..live.len())];
            (slot, api.clone())
        })
    }

    fn set(&self, slot: usize, api: Option<Api>) {
        let mut routes = self.0.write().unwrap();
        if routes.len() <= slot {
            routes.resize(slot + 1, None);
        }
        routes[slot] = api;
    }
}

struct Slot {
    replica: Option<Replica>,
    postgres: Proxy,
    redis: Proxy,
    /// The load balancer's pending removal of this replica.
    unroute: Option<tokio::task::JoinHandle<()>>,
}

/// Fields drop in order: the replicas (in their slots) go before the
/// cluster's schema and prefix are cleaned up.
pub struct Topology {
    slots: Vec<Slot>,
    pub cluster: Cluster,
    pub routes: Routes,
    redis: PrivateRedis,
}

impl Topology {
    /// Three replicas with this run's settings.
    pub async fn start(settings: &[(&str, &str)]) -> Topology {
        let redis = PrivateRedis::start().await;
        let cluster = Cluster::start(0, redis.url(), settings).await;
        let mut topology = Topology {
            cluster,
            routes: Routes::default(),
            redis,
            slots: Vec::new(),
        };
        for slot in 0..REPLICAS {
            let postgres = Proxy::start(postgres_addr()).await;
            let redis = Proxy::start(topology.redis.addr).await;
            topology.slots.push(Slot {
                replica: None,
                postgres,
                redis,
                unroute: None,
            });
            topology.spawn(slot).await;
        }
        topology
    }

    async fn spawn(&mut self, slot: usize) {
        if let Some(pending) = self.slots[slot].unroute.take() {
            pending.abort();
        }
        let (postgres, redis) = (self.slots[slot].postgres.addr, self.slots[slot].redis.addr);
        let replica = self
            .cluster
            .spawn_replica_with(&[
                ("DATABASE_URL", self.cluster.db.url_via(Some(postgres))),
                ("REDIS_URL", format!("redis://{redis}/0")),
            ])
            .await;
        self.routes.set(slot, Some(replica.api.clone()));
        self.slots[slot].replica = Some(replica);
    }

    /// The replicas running now (frozen ones too).
    pub fn replicas(&self) -> impl Iterator<Item = &Replica> {
        self.slots.iter().filter_map(|s| s.replica.as_ref())
    }

    /// Sum of one series over every running replica that answers.
    pub async fn metric_sum(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for replica in self.replicas() {
            sum += replica.metric(series).await;
        }
        sum
    }

    pub async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(i) => {
                if let Some(mut replica) = self.slots[i].replica.take() {
                    replica.kill().await;
                }
                self.unroute_later(i);
            }
            Fault::Pause(i) => {
                self.replica(i).pause();
                self.unroute_later(i);
            }
            Fault::RedisRestart => self.redis.stop().await,
            Fault::RedisCut(i) => self.slots[i].redis.cut(),
            Fault::ScriptFlush => {
                let admin = redis_client(&self.redis.url()).await;
                admin.script_flush(false).await.unwrap();
            }
            Fault::PostgresCut => self.slots.iter().for_each(|s| s.postgres.cut()),
            Fault::PostgresCutOne(i) => self.slots[i].postgres.cut(),
            Fault::LostReply(i) => self.slots[i].postgres.lose_next_commit_reply(),
        }
    }

    /// Undoes the fault. A lost reply heals once it has happened (the
    /// writers are still writing then).
    pub async fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(i) => self.spawn(i).await,
            Fault::Pause(i) => {
                self.replica(i).resume();
                if let Some(pending) = self.slots[i].unroute.take() {
                    pending.abort();
                }
                self.routes.set(i, Some(self.replica(i).api.clone()));
            }
            Fault::RedisRestart => self.redis.start_again().await,
            Fault::RedisCut(i) => self.slots[i].redis.restore(),
            Fault::ScriptFlush => {}
            Fault::PostgresCut => self.slots.iter().for_each(|s| s.postgres.restore()),
            Fault::PostgresCutOne(i) => self.slots[i].postgres.restore(),
            Fault::LostReply(i) => {
                let proxy = &self.slots[i].postgres;
                eventually(|| async { proxy.armed_commit_met() }).await;
            }
        }
    }

    /// The load balancer notices a replica is gone one health check
    /// later; until then, clients are still sent to it.
    fn unroute_later(&mut self, slot: usize) {
        let routes = self.routes.clone();
        self.slots[slot].unroute = Some(tokio::spawn(async move {
            tokio::time::sleep(HEALTH_CHECK_LAG).await;
            routes.set(slot, None);
        }));
    }

    /// Waits until every replica reaches Redis again (its reconnect backs
    /// off up to 5 s), so that one round's fault is not charged to the next.
    pub async fn settle(&self) {
        for replica in self.replicas() {
            eventually(|| async { replica.metric(REDIS_HEALTH).await == 1.0 }).await;
        }
    }

    fn replica(&self, slot: usize) -> &Replica {
        self.slots[slot]
            .replica
            .as_ref()
            .expect("the slot has a running replica")
    }
}
