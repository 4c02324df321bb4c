//! One WebSocket session: admission (collaborator, socket caps), the `ready`
//! frame, replay of `since`, then live events and client pings until the
//! client leaves, is too slow, breaks the rules, or the server drains.
//!
//! Every close carries a reason: an error frame `{"type":"error","code",
//! "message"}` first, then a close frame whose reason is the same code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, Query, State};
use axum::http::{header, Extensions, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use super::hub::{Frame, Hub, Member};
use crate::auth::Authenticator;
use crate::collab::input::UserId;
use crate::collab::model::Draft;
use crate::collab::rules::require_member;
use crate::collab::service::CollabService;
use crate::error::Error;
use crate::http::extract::DraftId;
use crate::http::request::current_request_id;
use crate::ports::{Admission, SocketCaps, SocketClaim, SocketLeases};
use crate::telemetry::Metrics;

/// How long a closing handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial read and write buffer of each socket.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;
/// Close codes of RFC 6455.
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TRY_AGAIN: u16 = 1013;

/// Everything a session needs, built once by `app.rs`. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pub auth: Authenticator,
    pub collab: CollabService,
    pub hub: Hub,
    pub leases: Arc<dyn SocketLeases>,
    pub caps: SocketCaps,
    pub settings: SocketSettings,
    pub metrics: Metrics,
    /// Cancelled when draining starts: new sockets are refused.
    pub draining: CancellationToken,
    /// Cancelled when the drain delay is over: every session says
    /// `shutdown` and closes with 1001.
    pub closing: CancellationToken,
    /// Tracks sessions so shutdown can wait for their goodbyes.
    pub tracker: TaskTracker,
}

/// The per-socket knobs: `WS_MAX_MESSAGE_BYTES`, `WS_OUTBOUND_QUEUE`,
/// `WS_ALLOWED_ORIGINS`, `WS_PING_INTERVAL_SECONDS`,
/// `WS_IDLE_TIMEOUT_SECONDS`, `WS_INBOUND_PER_SECOND`, `WS_INBOUND_BURST`.
#[derive(Clone, Debug)]
pub struct SocketSettings {
    pub max_message_bytes: usize,
    pub outbound_queue: usize,
    pub allowed_origins: Arc<[String]>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub inbound_per_second: u32,
    pub inbound_burst: u32,
}

/// The WebSocket route, for any state that can hand out `Sessions`.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Sessions: FromRef<S>,
{
    Router::new().route("/v1/collab/drafts/{id}/ws", get(upgrade))
}

/// The WebSocket route as OpenAPI; its frames are in docs/asyncapi.yaml.
#[derive(utoipa::OpenApi)]
#[openapi(paths(upgrade))]
pub struct WsApi;

/// Watch a draft over a WebSocket (collaborators only): `ready`, then
/// every event in seq order, exactly once. The frames and close codes are
/// described in docs/asyncapi.yaml.
#[utoipa::path(get, path = "/v1/collab/drafts/{id}/ws", tag = "drafts",
    params(
        ("id" = Uuid, Path, description = "The draft's id"),
        ("since" = Option<u64>, Query, description = "Resume after this seq (at most the head): the missed events come first"),
        ("access_token" = Option<String>, Query, description = "The bearer token, for browsers; the Authorization header wins"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the socket is open"),
        (status = "4XX", description = "Refused before the upgrade: see the code", body = crate::http::response::ErrorEnvelope),
        (status = "5XX", description = "Draining, unavailable or internal", body = crate::http::response::ErrorEnvelope),
    ),
    security(("bearer" = [])))]
async fn upgrade(
    State(sessions): State<Sessions>,
    DraftId(draft_id): DraftId,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    extensions: Extensions,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    if sessions.draining.is_cancelled() {
        return Err(Error::Unavailable(
            "draining: not accepting new sockets".into(),
        ));
    }
    let ws = ws.map_err(|_| Error::Validation("expected a WebSocket upgrade request".into()))?;
    check_origin(&headers, &sessions.settings.allowed_origins)?;
    let user_id = authenticate(&sessions.auth, &params, &headers, &extensions).await?;
    tracing::Span::current().record("user_id", user_id.as_str());
    let since = since_of(&params)?;
    let draft = sessions.collab.draft(draft_id).await?;
    if since.is_some_and(|s| s > draft.seq) {
        return Err(Error::Validation(format!(
            "since is ahead of the draft's head ({})",
            draft.seq
        )));
    }
    let max = sessions.settings.max_message_bytes;
    // tungstenite refuses far larger messages itself, mid-read, and then the
    // close handshake cannot complete (the rest of the message is unread).
    // Up to this bound the session reads the message whole and answers with
    // a clean `payload_too_large` close; past it the close is best effort.
    let hard_max = (max * 16).max(1 << 20);
    let tracker = sessions.tracker.clone();
    let session = Session {
        sessions,
        connection_id: Uuid::new_v4(),
        user_id,
        draft,
        since,
        request_id: current_request_id(),
    };
    // A root span: the socket outlives the upgrade request that opened it,
    // so it gets a trace of its own, linked to the request's.
    let span = tracing::info_span!(
        parent: None,
        "ws",
        connection_id = %session.connection_id,
        draft_id = %draft_id,
        user_id = %session.user_id,
        request_id = %session.request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::link_to_current(&span);
    // tungstenite allocates 128 KiB read and write buffers per socket by
    // default; idle sockets are the common case, so start small (buffers
    // still grow for a large frame). Measured: docs/BENCHMARKS.md.
    Ok(ws
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_message_size(hard_max)
        .max_frame_size(hard_max)
        .on_upgrade(move |socket| tracker.track_future(session.run(socket).instrument(span))))
}

/// The caller: the `Authorization` header (as the rate limit already
/// verified it, when it did), or (for browsers, which cannot set headers on
/// a WebSocket) the `access_token` query parameter. Counted once.
async fn authenticate(
    auth: &Authenticator,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<UserId, Error> {
    match params.get("access_token") {
        Some(token) if !headers.contains_key(header::AUTHORIZATION) => auth.verify(token).await,
        _ => auth.settle_request(extensions, headers).await,
    }
}

fn since_of(params: &HashMap<String, String>) -> Result<Option<u64>, Error> {
    params
        .get("since")
        .map(|text| {
            text.parse::<u64>()
                .map_err(|_| Error::Validation("since must be a non-negative integer".into()))
        })
        .transpose()
}

/// Browsers send `Origin`; when an allow-list is set, it must match. Clients
/// that send none (servers, CLIs) are not cross-site and pass.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), Error> {
    if allowed.iter().any(|o| o == "*") {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(Error::Forbidden("origin not allowed".into()))
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Inbound {
    Ping,
}

/// Why a session ends, and what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The client closed or vanished; nothing to say.
    ClientGone,
    Shutdown,
    SlowConsumer,
    TooLarge,
    BadMessage,
    Forbidden,
    Limit,
    Unavailable,
    /// Nothing heard (no frame, no pong) for `WS_IDLE_TIMEOUT_SECONDS`.
    Idle,
    /// A whole burst of frames over the inbound limit, in a row.
    Flood,
}

impl Ending {
    /// The `reason` label of `ws_disconnects_total` and the `reason` of the
    /// "socket closed" line: what happened, in the words of the error code
    /// the client was sent (`DISCONNECT_REASONS` in telemetry::metrics).
    fn reason(self) -> &'static str {
        match self {
            Ending::ClientGone => "client_closed",
            Ending::Shutdown => "shutdown",
            Ending::SlowConsumer => "slow_consumer",
            Ending::Limit => "ws_limit",
            Ending::TooLarge => "payload_too_large",
            Ending::BadMessage => "bad_message",
            Ending::Forbidden => "forbidden",
            Ending::Flood => "rate_limited",
            Ending::Unavailable => "unavailable",
            Ending::Idle => "idle_timeout",
        }
    }

    /// What the client is told, or `None` when there is no one to tell.
    fn notice(self) -> Option<Notice> {
        let (code, message, close_code) = match self {
            // Most likely gone; the close frame is the whole goodbye.
            Ending::ClientGone | Ending::Idle => return None,
            Ending::Flood => (
                "rate_limited",
                "too many messages; at most WS_INBOUND_PER_SECOND a second",
                CLOSE_POLICY,
            ),
            Ending::Shutdown => (
                "shutdown",
                "server is shutting down; reconnect with since",
                CLOSE_GOING_AWAY,
            ),
            Ending::SlowConsumer => (
                "slow_consumer",
                "client is not reading fast enough; reconnect with since",
                CLOSE_TRY_AGAIN,
            ),
            Ending::TooLarge => (
                "payload_too_large",
                "message exceeds WS_MAX_MESSAGE_BYTES",
                CLOSE_POLICY,
            ),
            Ending::BadMessage => (
                "bad_message",
                "expected a JSON text frame {\"type\":\"ping\"}",
                CLOSE_POLICY,
            ),
            Ending::Forbidden => (
                "forbidden",
                "you are not a collaborator on this draft",
                CLOSE_POLICY,
            ),
            Ending::Limit => ("ws_limit", "too many open sockets", CLOSE_POLICY),
            Ending::Unavailable => (
                "unavailable",
                "service temporarily unavailable, retry later",
                CLOSE_TRY_AGAIN,
            ),
        };
        Some(Notice {
            code,
            message,
            close_code,
        })
    }
}

/// The goodbye of a session that ends for a reason the client should know:
/// an error frame with `code` and `message`, then a close frame.
struct Notice {
    code: &'static str,
    message: &'static str,
    close_code: u16,
}

struct Session {
    sessions: Sessions,
    connection_id: Uuid,
    user_id: UserId,
    draft: Draft,
    since: Option<u64>,
    request_id: String,
}

impl Session {
    async fn run(self, mut socket: WebSocket) {
        let started = Instant::now();
        let metrics = self.sessions.metrics.clone();
        metrics.ws_opened();
        let ending = self.admit_and_serve(&mut socket).await;
        match ending {
            Ending::SlowConsumer => tracing::warn!(reason = ending.reason(), "socket closed"),
            _ => tracing::info!(reason = ending.reason(), "socket closed"),
        }
        tracing::debug!(
            duration_ms = started.elapsed().as_millis() as u64,
            "session ended"
        );
        if close(&mut socket, ending).await {
            metrics.ws_sent("error");
        }
        metrics.ws_closed(ending.reason(), started.elapsed().as_secs_f64());
    }

    /// Membership, then a socket lease against the caps, then the stream;
    /// the lease is released however the stream ends.
    async fn admit_and_serve(&self, socket: &mut WebSocket) -> Ending {
        if require_member(&self.draft, &self.user_id).is_err() {
            return Ending::Forbidden;
        }
        let claim = SocketClaim {
            connection_id: self.connection_id,
            user_id: self.user_id.clone(),
            draft_id: self.draft.id,
        };
        let leases = &self.sessions.leases;
        match leases.acquire(&claim, &self.sessions.caps).await {
            Ok(Admission::Admitted) => {}
            Ok(Admission::Refused(scope)) => {
                tracing::info!(scope = scope.as_str(), "socket refused by cap");
                self.sessions.metrics.ws_limit_rejected(scope.as_str());
                return Ending::Limit;
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "socket lease unavailable");
                return Ending::Unavailable;
            }
        }
        let ending = self.serve(socket).await;
        if let Err(e) = leases.release(self.connection_id).await {
            tracing::warn!(error.message = %e, "socket lease release failed");
        }
        ending
    }

    /// Joins the draft's room, streams, and leaves the room.
    async fn serve(&self, socket: &mut WebSocket) -> Ending {
        let (tx, mut rx) = mpsc::channel(self.sessions.settings.outbound_queue);
        let kick = CancellationToken::new();
        let member = Member {
            connection_id: self.connection_id,
            tx,
            kick: kick.clone(),
        };
        let hub = &self.sessions.hub;
        let head = match hub.join(self.draft.id, member).await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(error.message = %e, "joining the room failed");
                return Ending::Unavailable;
            }
        };
        let signals = Signals {
            kick,
            closing: self.sessions.closing.clone(),
        };
        let ending = self.stream(socket, &mut rx, head, &signals).await;
        hub.leave(self.draft.id, self.connection_id).await;
        ending
    }

    /// `ready`, the replay of `since`, then live events and the client's
    /// frames until something ends the session.
    async fn stream(
        &self,
        socket: &mut WebSocket,
        rx: &mut mpsc::Receiver<Arc<Frame>>,
        head: u64,
        signals: &Signals,
    ) -> Ending {
        let mut last_sent = self.since.unwrap_or(head);
        let greeted = async {
            self.send_ready(socket, head, signals).await?;
            self.replay(socket, &mut last_sent, head, signals).await
        };
        if let Err(ending) = greeted.await {
            return ending;
        }
        let settings = &self.sessions.settings;
        let every = settings.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client = ClientSide::new(settings);
        loop {
            let silent_until = client.last_heard + settings.idle_timeout;
            // The client's frames come before the idle check, so a pong that
            // waited while the loop was busy still counts; the idle check and
            // the ping come before events, so a busy room cannot starve them.
            let step = tokio::select! {
                biased;
                _ = signals.closing.cancelled() => Err(Ending::Shutdown),
                _ = signals.kick.cancelled() => Err(Ending::SlowConsumer),
                inbound = socket.recv() => self.on_inbound(socket, inbound, &mut client, signals).await,
                _ = tokio::time::sleep_until(silent_until) => Err(Ending::Idle),
                _ = ping.tick() => signals.send(socket, Message::Ping(Default::default())).await,
                frame = rx.recv() => self.on_frame(socket, frame, &mut last_sent, signals).await,
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    async fn send_ready(
        &self,
        socket: &mut WebSocket,
        head: u64,
        signals: &Signals,
    ) -> Result<(), Ending> {
        let ready = json!({
            "type": "ready",
            "connection_id": self.connection_id,
            "draft_id": self.draft.id,
            "seq": head,
        });
        signals
            .send(socket, Message::Text(ready.to_string().into()))
            .await?;
        self.sessions.metrics.ws_sent("ready");
        tracing::info!(seq = head, since = self.since, "socket joined");
        Ok(())
    }

    /// A frame from the room: sent unless the client has it already; a gap
    /// before it (not expected: rooms deliver in order) is filled first.
    async fn on_frame(
        &self,
        socket: &mut WebSocket,
        frame: Option<Arc<Frame>>,
        last_sent: &mut u64,
        signals: &Signals,
    ) -> Result<(), Ending> {
        let Some(frame) = frame else {
            // The room let go of us: it kicked us, or it stopped.
            return Err(if signals.kick.is_cancelled() {
                Ending::SlowConsumer
            } else {
                Ending::Unavailable
            });
        };
        if frame.seq <= *last_sent {
            return Ok(());
        }
        if frame.seq > *last_sent + 1 {
            self.replay(socket, last_sent, frame.seq - 1, signals)
                .await?;
        }
        signals
            .send(socket, Message::Text(frame.text.clone()))
            .await?;
        tracing::debug!(
            event_type = frame.event_type.as_str(),
            seq = frame.seq,
            "event sent"
        );
        self.sessions.metrics.ws_sent(frame.event_type.as_str());
        *last_sent = frame.seq;
        Ok(())
    }

    /// A frame from the client: it proves the client alive; past the inbound
    /// limit it is dropped (told once, closed after a whole burst); a ping is
    /// answered; anything else ends the session with the reason.
    async fn on_inbound(
        &self,
        socket: &mut WebSocket,
        inbound: Option<Result<Message, axum::Error>>,
        client: &mut ClientSide,
        signals: &Signals,
    ) -> Result<(), Ending> {
        let max = self.sessions.settings.max_message_bytes;
        let metrics = &self.sessions.metrics;
        client.last_heard = tokio::time::Instant::now();
        if matches!(
            inbound,
            Some(Ok(Message::Text(_)
                | Message::Binary(_)
                | Message::Ping(_)
                | Message::Pong(_)))
        ) {
            match client.admit() {
                Admit::Yes => {}
                Admit::Drop => {
                    metrics.ws_inbound_refused();
                    return Ok(());
                }
                Admit::Warn => {
                    metrics.ws_inbound_refused();
                    return self.warn_rate_limited(socket, signals).await;
                }
                Admit::Close => {
                    metrics.ws_inbound_refused();
                    return Err(Ending::Flood);
                }
            }
        }
        match inbound {
            None | Some(Ok(Message::Close(_))) => Err(Ending::ClientGone),
            Some(Err(e)) => Err(classify(e)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Binary(bytes))) => {
                metrics.ws_received();
                Err(if bytes.len() > max {
                    Ending::TooLarge
                } else {
                    Ending::BadMessage
                })
            }
            Some(Ok(Message::Text(text))) => {
                metrics.ws_received();
                if text.len() > max {
                    return Err(Ending::TooLarge);
                }
                match serde_json::from_str::<Inbound>(text.as_str()) {
                    Ok(Inbound::Ping) => {
                        let pong = Message::Text(Utf8Bytes::from_static(r#"{"type":"pong"}"#));
                        signals.send(socket, pong).await?;
                        metrics.ws_sent("pong");
                        Ok(())
                    }
                    Err(_) => Err(Ending::BadMessage),
                }
            }
        }
    }

    /// The first frame over the inbound limit is answered, once, so a client
    /// can tell why its frames go unanswered.
    async fn warn_rate_limited(
        &self,
        socket: &mut WebSocket,
        signals: &Signals,
    ) -> Result<(), Ending> {
        let frame = json!({
            "type": "error",
            "code": "rate_limited",
            "message": "too many messages; frames over WS_INBOUND_PER_SECOND are dropped",
        });
        signals
            .send(socket, Message::Text(frame.to_string().into()))
            .await?;
        self.sessions.metrics.ws_sent("error");
        tracing::info!("socket over its inbound rate");
        Ok(())
    }

    /// Sends the stored events after `last_sent` up to `until`, in order.
    async fn replay(
        &self,
        socket: &mut WebSocket,
        last_sent: &mut u64,
        until: u64,
        signals: &Signals,
    ) -> Result<(), Ending> {
        while *last_sent < until {
            let events = self
                .sessions
                .collab
                .events_after(self.draft.id, *last_sent)
                .await
                .map_err(|e| {
                    tracing::warn!(error.message = %e, "replay from store failed");
                    Ending::Unavailable
                })?;
            if events.is_empty() {
                tracing::error!(
                    after = *last_sent,
                    until,
                    "store has fewer events than its head"
                );
                return Err(Ending::Unavailable);
            }
            for event in events.iter().take_while(|e| e.seq <= until) {
                let frame = Frame::new(event).map_err(|_| Ending::Unavailable)?;
                signals.send(socket, Message::Text(frame.text)).await?;
                self.sessions.metrics.ws_sent(frame.event_type.as_str());
                *last_sent = event.seq;
            }
        }
        Ok(())
    }
}

/// What the session knows of its client: when it was last heard from, and
/// its inbound token bucket (`WS_INBOUND_PER_SECOND` sustained,
/// `WS_INBOUND_BURST` at once).
struct ClientSide {
    last_heard: tokio::time::Instant,
    tokens: f64,
    refilled: tokio::time::Instant,
    per_second: f64,
    burst: f64,
    /// Frames refused since the last one admitted.
    refused_in_a_row: u32,
}

/// What to do with one inbound frame.
enum Admit {
    Yes,
    /// Over the limit: drop it, and say so (the first time in a row).
    Warn,
    Drop,
    /// A whole burst refused in a row: the client does not slow down.
    Close,
}

impl ClientSide {
    fn new(settings: &SocketSettings) -> Self {
        let now = tokio::time::Instant::now();
        ClientSide {
            last_heard: now,
            tokens: settings.inbound_burst as f64,
            refilled: now,
            per_second: settings.inbound_per_second as f64,
            burst: settings.inbound_burst as f64,
            refused_in_a_row: 0,
        }
    }

    fn admit(&mut self) -> Admit {
        let now = tokio::time::Instant::now();
        let earned = (now - self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Admit::Yes;
        }
        self.refused_in_a_row += 1;
        match self.refused_in_a_row {
            1 => Admit::Warn,
            n if n as f64 >= self.burst => Admit::Close,
            _ => Admit::Drop,
        }
    }
}

/// Names a read error: a message over tungstenite's own bound, a protocol
/// violation, or a connection that is simply gone (a client that hangs up
/// without a close frame is gone, not misbehaving).
fn classify(error: axum::Error) -> Ending {
    use tungstenite::error::ProtocolError;
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => match *e {
            tungstenite::Error::Capacity(_) => Ending::TooLarge,
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Ending::ClientGone
            }
            tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => Ending::BadMessage,
            _ => Ending::ClientGone,
        },
        Err(_) => Ending::ClientGone,
    }
}

/// The two things that can interrupt a send that the client is not reading.
struct Signals {
    kick: CancellationToken,
    closing: CancellationToken,
}

impl Signals {
    async fn send(&self, socket: &mut WebSocket, message: Message) -> Result<(), Ending> {
        tokio::select! {
            biased;
            sent = socket.send(message) => sent.map_err(|_| Ending::ClientGone),
            _ = self.kick.cancelled() => Err(Ending::SlowConsumer),
            _ = self.closing.cancelled() => Err(Ending::Shutdown),
        }
    }
}

/// Tells the client why (error frame, then close frame) and completes the
/// closing handshake, all within `CLOSE_TIMEOUT`. True when an error frame
/// was sent.
async fn close(socket: &mut WebSocket, ending: Ending) -> bool {
    let Some(Notice {
        code,
        message,
        close_code,
    }) = ending.notice()
    else {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close()).await;
        return false;
    };
    let goodbye = async {
        let frame = json!({ "type": "error", "code": code, "message": message });
        socket.send(Message::Text(frame.to_string().into())).await?;
        socket
            .send(Message::Close(Some(CloseFrame {
                code: close_code,
                reason: Utf8Bytes::from_static(code),
            })))
            .await?;
        // Read until the client's close reply, so the connection ends with a
        // clean handshake rather than a reset that could eat the frames.
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    };
    matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await,
        Ok(Ok(()))
    )
}
