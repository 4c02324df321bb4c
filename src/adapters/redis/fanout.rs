//! Room fanout over Redis pub/sub: one channel per draft room, subscribed
//! while this replica has a socket in the room. The reader never blocks: it
//! hands each message to the room registry (a `try_send`). After a reconnect
//! every channel is resubscribed and every room re-reads the store from its
//! head, so events published meanwhile are filled in, never skipped.
//!
//! On a Redis Cluster the channels are shard channels (`SPUBLISH`,
//! `SSUBSCRIBE`, Redis 7): each room's channel lives on the master that owns
//! its slot, so pub/sub capacity grows with the shards (a classic `PUBLISH`
//! would be broadcast to every node). A failover shows as a reconnect. A
//! slot that moves unsubscribes its subscribers (fred discards the notice);
//! a room that the head check finds behind renews its subscription.
//!
//! A publish is also delivered to this replica's own rooms directly, so local
//! watchers keep receiving while Redis is down; rooms drop the echo that
//! comes back through Redis by seq.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use fred::clients::{Client, Pool, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Mutex;
use tracing::Instrument;
use uuid::Uuid;

use super::{builder, redis_error, RedisSettings};
use crate::collab::model::Event;
use crate::error::Error;
use crate::ports::{Fanout, RoomSink};
use crate::telemetry::Metrics;

/// What travels on a room channel: the event, and the W3C trace context of
/// the request that caused it, so its delivery on another replica joins the
/// same trace.
#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    event: Event,
    #[serde(default)]
    trace: HashMap<String, String>,
    /// Published again long after its commit: its lag says nothing.
    #[serde(default)]
    again: bool,
}

/// Hands one received message to its room, inside a span linked to the
/// publisher's trace.
fn receive(envelope: Envelope, rooms: &dyn RoomSink, metrics: &Metrics) {
    let event = envelope.event;
    let span = tracing::info_span!(
        parent: None,
        "fanout deliver",
        otel.kind = "consumer",
        messaging.system = "redis",
        "messaging.operation.type" = "process",
        messaging.destination.name = "room",
        draft_id = %event.draft_id,
        seq = event.seq,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::link(&span, &envelope.trace);
    let _entered = span.enter();
    if !envelope.again {
        let lag = crate::collab::model::now() - event.ts;
        metrics.fanout_lag(lag.as_seconds_f64());
    }
    tracing::debug!(
        event_type = event.event_type().as_str(),
        "event received from fanout"
    );
    rooms.deliver(event);
}

/// The pub/sub channel of a draft's room. No hash tag: on a cluster, rooms
/// spread over every slot.
pub fn channel(prefix: &str, draft_id: Uuid) -> String {
    format!("{prefix}room:{draft_id}")
}

/// Which pub/sub the room channels use: classic on one server, sharded on a
/// Redis Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PubSub {
    Classic,
    Sharded,
}

impl PubSub {
    fn of(settings: &RedisSettings) -> PubSub {
        let clustered =
            fred::prelude::Config::from_url(&settings.url).is_ok_and(|c| c.server.is_clustered());
        if clustered {
            PubSub::Sharded
        } else {
            PubSub::Classic
        }
    }

    async fn publish(self, client: &Client, channel: String, payload: String) -> FredResult<i64> {
        match self {
            PubSub::Classic => client.publish(channel, payload).await,
            PubSub::Sharded => client.spublish(channel, payload).await,
        }
    }

    /// A shard channel whose slot moved answers MOVED; fred then learns
    /// the new owner but fails this SSUBSCRIBE all the same, saying its
    /// write attempts ran out (its redirect does not go through for a
    /// subscriber), so that one failure is sent once more. A timeout or a
    /// lost connection is not retried: it would only double the wait.
    async fn subscribe(self, subscriber: &SubscriberClient, channel: String) -> FredResult<()> {
        match self {
            PubSub::Classic => subscriber.subscribe(channel).await,
            PubSub::Sharded => match subscriber.ssubscribe(channel.clone()).await {
                Err(e) if redirected(&e) => subscriber.ssubscribe(channel).await,
                other => other,
            },
        }
    }

    async fn unsubscribe(self, subscriber: &SubscriberClient, channel: String) -> FredResult<()> {
        match self {
            PubSub::Classic => subscriber.unsubscribe(channel).await,
            PubSub::Sharded => subscriber.sunsubscribe(channel).await,
        }
    }

    /// Many channels: one command for classic ones; one per channel for
    /// shard channels, which one command may name only within one slot,
    /// until one finds its node unreachable. Returns how many were not
    /// subscribed (a room left out is renewed when the head check finds it
    /// behind, or at the next reconnect) and the last error.
    async fn subscribe_all(
        self,
        subscriber: &SubscriberClient,
        channels: Vec<String>,
    ) -> (usize, Option<fred::error::Error>) {
        match self {
            PubSub::Classic if channels.is_empty() => (0, None),
            PubSub::Classic => {
                let count = channels.len();
                match subscriber.subscribe(channels).await {
                    Ok(()) => (0, None),
                    Err(e) => (count, Some(e)),
                }
            }
            PubSub::Sharded => {
                // A node that does not answer ends the pass: the rest would
                // each wait a timeout more, and its reconnect starts another.
                let (total, mut done, mut failed, mut last) = (channels.len(), 0, 0, None);
                for channel in channels {
                    done += 1;
                    if let Err(e) = self.subscribe(subscriber, channel).await {
                        failed += 1;
                        let stop = unreachable(&e);
                        last = Some(e);
                        if stop {
                            break;
                        }
                    }
                }
                (failed + total - done, last)
            }
        }
    }
}

type FredResult<T> = Result<T, fred::error::Error>;

/// How fred 10 fails a command whose redirect (MOVED, ASK) it followed but
/// could not complete.
fn redirected(e: &fred::error::Error) -> bool {
    *e.kind() == fred::error::ErrorKind::Unknown && e.details().contains("write attempts")
}

/// A failure that says the node is down or unreachable, not that one
/// command was refused.
fn unreachable(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled
    )
}

pub struct RedisFanout {
    publisher: Pool,
    subscriber: SubscriberClient,
    pubsub: PubSub,
    prefix: String,
    rooms: Arc<dyn RoomSink>,
    /// Rooms per channel: one entry per room with local sockets. A Tokio mutex, held across the SUBSCRIBE or
    /// UNSUBSCRIBE it guards, so a room that stops and one that starts for the
    /// same draft cannot reorder the two commands.
    /// fred tracks a channel only once SUBSCRIBE succeeded; this map is the
    /// truth that is resubscribed after a reconnect.
    subscriptions: Subscriptions,
    metrics: Metrics,
}

/// Rooms per channel, shared by the fanout and its resubscriber.
type Subscriptions = Arc<Mutex<HashMap<Uuid, usize>>>;

impl RedisFanout {
    /// Connects the subscriber and starts the reader and resubscriber tasks.
    pub async fn start(
        settings: &RedisSettings,
        publisher: Pool,
        rooms: Arc<dyn RoomSink>,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let subscriber = builder(settings)?
            .build_subscriber_client()
            .map_err(redis_error)?;
        // Take the message receiver before connecting, so nothing is missed;
        // the reconnect one after (a cluster client connects once per node:
        // from here on, each notice is a reconnect).
        let messages = subscriber.message_rx();
        subscriber.init().await.map_err(redis_error)?;
        let reconnects = subscriber.reconnect_rx();
        let pubsub = PubSub::of(settings);
        let prefix = settings.prefix.clone();
        let subscriptions = Subscriptions::default();
        spawn_reader(messages, &prefix, rooms.clone(), metrics.clone());
        spawn_resubscriber(
            reconnects,
            Resubscribe {
                subscriber: subscriber.clone(),
                pubsub,
                subscriptions: subscriptions.clone(),
                prefix: prefix.clone(),
            },
            rooms.clone(),
            metrics.clone(),
        );
        Ok(RedisFanout {
            publisher,
            subscriber,
            pubsub,
            prefix,
            rooms,
            subscriptions,
            metrics,
        })
    }

    fn channel(&self, draft_id: Uuid) -> String {
        channel(&self.prefix, draft_id)
    }

    /// This replica's rooms at once, then every other replica's through the
    /// draft's channel, with the trace context.
    async fn send(&self, event: &Event, again: bool) -> Result<(), Error> {
        // Built by hand: `#[instrument]` cannot name a field `...type`.
        let span = tracing::info_span!(
            "fanout publish",
            otel.kind = "producer",
            messaging.system = "redis",
            "messaging.operation.type" = "send",
            messaging.destination.name = "room",
            draft_id = %event.draft_id,
            seq = event.seq,
        );
        self.publish_in_span(event, again).instrument(span).await
    }

    async fn publish_in_span(&self, event: &Event, again: bool) -> Result<(), Error> {
        self.rooms.deliver(event.clone());
        let mut envelope = Envelope {
            event: event.clone(),
            trace: HashMap::new(),
            again,
        };
        crate::telemetry::inject(&mut envelope.trace);
        let payload = serde_json::to_string(&envelope).map_err(Error::internal)?;
        let started = std::time::Instant::now();
        let sent = self
            .pubsub
            .publish(self.publisher.next(), self.channel(event.draft_id), payload)
            .await;
        self.metrics
            .redis_command("publish", started.elapsed().as_secs_f64());
        self.metrics.fanout_published(sent.is_ok());
        sent.map_err(redis_error)?;
        Ok(())
    }
}

#[async_trait]
impl Fanout for RedisFanout {
    async fn publish(&self, event: &Event) -> Result<(), Error> {
        self.send(event, false).await
    }

    async fn publish_again(&self, event: &Event) -> Result<(), Error> {
        self.send(event, true).await
    }

    async fn subscribe(&self, draft_id: Uuid) -> Result<(), Error> {
        let mut subscriptions = self.subscriptions.lock().await;
        let rooms = subscriptions.entry(draft_id).or_insert(0);
        *rooms += 1;
        if *rooms == 1 {
            // Even if this fails the channel stays tracked, and the reconnect
            // task subscribes it once Redis is back.
            self.pubsub
                .subscribe(&self.subscriber, self.channel(draft_id))
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn unsubscribe(&self, draft_id: Uuid) -> Result<(), Error> {
        let mut subscriptions = self.subscriptions.lock().await;
        let Some(rooms) = subscriptions.get_mut(&draft_id) else {
            return Ok(());
        };
        *rooms -= 1;
        if *rooms == 0 {
            subscriptions.remove(&draft_id);
            self.pubsub
                .unsubscribe(&self.subscriber, self.channel(draft_id))
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    /// Shard channels only: a moved slot drops them (a classic channel
    /// is never dropped while the connection lives).
    async fn renew(&self, draft_id: Uuid) -> Result<(), Error> {
        if self.pubsub == PubSub::Classic {
            return Ok(());
        }
        let subscriptions = self.subscriptions.lock().await;
        if subscriptions.contains_key(&draft_id) {
            self.pubsub
                .subscribe(&self.subscriber, self.channel(draft_id))
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }
}

/// Hands every room message to its room; never blocks on a room. A reader
/// that fell behind fred's buffer asks every room to resync from the store.
fn spawn_reader(
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    prefix: &str,
    rooms: Arc<dyn RoomSink>,
    metrics: Metrics,
) {
    let channel_prefix = format!("{prefix}room:");
    tokio::spawn(async move {
        loop {
            match messages.recv().await {
                Ok(message) => {
                    if !message.channel.starts_with(&channel_prefix) {
                        continue;
                    }
                    let Some(text) = message.value.as_str() else {
                        continue;
                    };
                    match serde_json::from_str::<Envelope>(&text) {
                        Ok(envelope) => receive(envelope, &*rooms, &metrics),
                        Err(e) => {
                            tracing::warn!(error.message = %e, "undecodable fanout message")
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics.channel_dropped("pubsub_reader", missed);
                    tracing::warn!(missed, "fanout reader lagged; rooms resync from the store");
                    rooms.resync_all();
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
}

/// What the resubscriber needs: the subscriber, and the truth of what it
/// should be subscribed to.
struct Resubscribe {
    subscriber: SubscriberClient,
    pubsub: PubSub,
    subscriptions: Subscriptions,
    prefix: String,
}

/// After each reconnect: subscribes every tracked channel again, then asks
/// every room to fill what it missed meanwhile. Notices that arrive together
/// (a cluster client reconnects node by node) are handled as one; notices
/// lost to a full channel count as one too.
fn spawn_resubscriber(
    mut reconnects: tokio::sync::broadcast::Receiver<fred::prelude::Server>,
    resubscribe: Resubscribe,
    rooms: Arc<dyn RoomSink>,
    metrics: Metrics,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    tokio::spawn(async move {
        loop {
            match reconnects.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            while !matches!(
                reconnects.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
            metrics.fanout_reconnected();
            resubscribe.all().await;
            rooms.resync_all();
        }
    });
}

impl Resubscribe {
    async fn all(&self) {
        let held = self.subscriptions.lock().await;
        let channels: Vec<String> = held.keys().map(|id| channel(&self.prefix, *id)).collect();
        let rooms = channels.len();
        tracing::info!(rooms, "redis subscriber reconnected; resubscribing rooms");
        let (failed, error) = self.pubsub.subscribe_all(&self.subscriber, channels).await;
        if let Some(e) = error {
            tracing::warn!(
                error.message = %e,
                rooms,
                failed,
                "resubscribe failed for some rooms; they are tried again at the next reconnect, or when the head check finds them behind"
            );
        }
    }
}
