//! The WebSocket protocol over real sockets: ready, ordered exactly-once
//! delivery, `since` replay, ping, caps, size and message rules, origins,
//! slow consumers and shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use crate::common::*;
use async_trait::async_trait;
use collabd::adapters::memory::{MemoryAudit, MemoryStore};
use collabd::app::Backends;
use collabd::collab::input::{IdempotencyKey, UserId};
use collabd::collab::model::{Draft, Event, Outcome, Segment};
use collabd::error::Result;
use collabd::ports::{Decide, Page, Store, StoreCounts};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

async fn the_ready_frame_names_the_connection_and_head(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Live").await;
    app.append("alice", &id, "one").await;
    let (ws, ready) = app.ws("alice", &id, None).await;
    assert_eq!(ready["draft_id"], id.as_str());
    assert_eq!(ready["seq"], 1);
    assert!(uuid::Uuid::parse_str(ready["connection_id"].as_str().unwrap()).is_ok());
    ws.close().await;
}

async fn two_watchers_see_every_event_once_in_order_while_a_writer_appends(kind: Kind) {
    let app = Arc::new(spawn_app(kind).await);
    let id = app.create_draft("alice", "Busy").await;
    app.add("alice", &id, "bob", "viewer").await;
    let (mut w1, r1) = app.ws("alice", &id, None).await;
    let (mut w2, _) = app.ws("bob", &id, None).await;
    let start = r1["seq"].as_u64().unwrap();

    // Eight concurrent appenders: publishes race, the rooms must reorder.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move {
                for n in 0..13 {
                    let reply = app.append("alice", &id, &format!("w{w}-{n}")).await;
                    assert_eq!(reply.status, 201);
                }
            })
        })
        .collect();
    let expected: Vec<u64> = (start + 1..=start + 104).collect();
    let (seen1, seen2) = tokio::join!(w1.next_seqs(104), w2.next_seqs(104));
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(seen1, expected);
    assert_eq!(seen2, expected);

    // Events carry their payload and the request that caused them.
    app.pass("alice", &id, "alice").await; // no-op, no event
    let reply = app
        .post_with(
            "alice",
            &format!("/v1/collab/drafts/{id}/collaborators"),
            &[("x-request-id", "add-carol")],
            json!({ "user_id": "carol", "role": "editor" }),
        )
        .await;
    assert_eq!(reply.status, 201);
    let event = w1.next_json().await;
    assert_eq!(event["type"], "collaborator_added");
    assert_eq!(event["seq"], start + 105);
    assert_eq!(event["request_id"], "add-carol");
    assert_eq!(
        event["data"],
        json!({ "user_id": "carol", "role": "editor" })
    );
    assert!(event["ts"].is_string());
    assert_eq!(w2.next_json().await, event);
}

async fn a_writer_appending_a_hundred_segments_reaches_both_watchers(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Hundred").await;
    app.add("alice", &id, "bob", "editor").await;
    let (mut w1, _) = app.ws("bob", &id, None).await;
    let (mut w2, _) = app.ws("alice", &id, None).await;
    for n in 0..100 {
        assert_eq!(app.append("alice", &id, &format!("s{n}")).await.status, 201);
    }
    let mut contents = Vec::new();
    for _ in 0..100 {
        let e = w1.next_json().await;
        assert_eq!(e["type"], "segment_appended");
        contents.push(e["data"]["segment"]["content"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        contents,
        (0..100).map(|n| format!("s{n}")).collect::<Vec<_>>()
    );
    assert_eq!(w2.next_seqs(100).await, (2..=101).collect::<Vec<_>>());
}

async fn reconnecting_with_since_gets_exactly_the_missed_events(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Resume").await;
    for n in 0..3 {
        app.append("alice", &id, &format!("a{n}")).await;
    }
    let (mut ws, _) = app.ws("alice", &id, None).await;
    app.append("alice", &id, "a3").await;
    let seen = ws.next_seqs(1).await;
    assert_eq!(seen, [4]);
    ws.close().await;

    // Missed while away.
    for n in 4..9 {
        app.append("alice", &id, &format!("a{n}")).await;
    }
    let (mut ws, ready) = app.ws("alice", &id, Some(4)).await;
    assert_eq!(ready["seq"], 9);
    assert_eq!(ws.next_seqs(5).await, [5, 6, 7, 8, 9]);
    // Then live, no gap, no repeat.
    app.append("alice", &id, "a9").await;
    assert_eq!(ws.next_seqs(1).await, [10]);

    // since=0 replays everything.
    let (mut all, _) = app.ws("alice", &id, Some(0)).await;
    assert_eq!(all.next_seqs(10).await, (1..=10).collect::<Vec<_>>());
    ws.close().await;
    all.close().await;
}

async fn bad_upgrades_are_refused_with_the_envelope_before_the_socket_opens(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Gate").await;
    let status_of = |result: Result<WsClient, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade unexpectedly accepted"),
    };
    // No token.
    let request = app.ws_url(&id, "").into_client_request().unwrap();
    assert_eq!(status_of(WsClient::try_connect(request).await), 401);
    // Bad since, since ahead of head, unknown draft.
    for (draft, query, status) in [
        (id.clone(), "?since=abc", 400),
        (id.clone(), "?since=5", 400),
        (uuid::Uuid::new_v4().to_string(), "", 404),
    ] {
        let mut request = app.ws_url(&draft, query).into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", app.token("alice")).parse().unwrap(),
        );
        assert_eq!(
            status_of(WsClient::try_connect(request).await),
            status,
            "{query}"
        );
    }
    // A plain GET (no upgrade) gets a JSON envelope.
    let plain = app
        .get("alice", &format!("/v1/collab/drafts/{id}/ws"))
        .await;
    assert_eq!((plain.status, plain.code()), (400, "validation_error"));
}

async fn browsers_authenticate_with_access_token(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Browser").await;
    let query = format!("?access_token={}", app.token("alice"));
    let request = app.ws_url(&id, &query).into_client_request().unwrap();
    let mut ws = WsClient::connect(request).await;
    assert_eq!(ws.next_json().await["type"], "ready");
}

/// docs/API.md: the `Authorization` header wins when both are present.
async fn the_authorization_header_wins_over_access_token(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Both").await;
    let with_both = |header: String, query: String| {
        let mut request = app
            .ws_url(&id, &format!("?access_token={query}"))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {header}").parse().unwrap());
        WsClient::try_connect(request)
    };
    // A good header and a bad query token: served.
    let mut served = with_both(app.token("alice"), "not.a.jwt".into())
        .await
        .unwrap();
    assert_eq!(served.next_json().await["type"], "ready");
    // A bad header and a good query token: refused before the upgrade.
    match with_both("not.a.jwt".into(), app.token("alice")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        Err(other) => panic!("refused with something other than a 401: {other}"),
        Ok(_) => panic!("the query token won over a bad header"),
    }
}

async fn a_non_collaborator_is_told_forbidden_and_closed_1008(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Private").await;
    let mut ws = app.ws_raw("mallory", &id, "").await;
    ws.expect_closed("forbidden", 1008).await;
}

async fn ping_gets_pong_and_bad_messages_close_1008(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Chatty").await;
    let (mut ws, _) = app.ws("alice", &id, None).await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_json().await, json!({ "type": "pong" }));
    ws.send_text("not json").await;
    ws.expect_closed("bad_message", 1008).await;

    let (mut ws, _) = app.ws("alice", &id, None).await;
    ws.send_binary(vec![1, 2, 3]).await;
    ws.expect_closed("bad_message", 1008).await;
}

async fn an_oversized_frame_closes_1008_payload_too_large(kind: Kind) {
    let app = spawn_with(kind, |c| c.ws_max_message_bytes = 1024).await;
    let id = app.create_draft("alice", "Big").await;
    let (mut ws, _) = app.ws("alice", &id, None).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
    ws.send_text(&big).await;
    ws.expect_closed("payload_too_large", 1008).await;

    // Far beyond the bound, the socket is still closed with the same code.
    let (mut ws, _) = app.ws("alice", &id, None).await;
    ws.send_text(&"y".repeat(200_000)).await;
    ws.expect_closed("payload_too_large", 1008).await;

    // Past tungstenite's own bound the server stops reading mid-message: the
    // client is still told why, and the socket ends.
    let (mut ws, _) = app.ws("alice", &id, None).await;
    ws.send_text_unchecked(&"y".repeat(3 << 20)).await;
    let (closed, events) = ws.until_closed().await;
    assert_eq!(closed.error_code.as_deref(), Some("payload_too_large"));
    assert!(events.is_empty());
}

async fn the_socket_after_the_cap_is_refused_with_ws_limit(kind: Kind) {
    let app = spawn_with(kind, |c| {
        c.ws_limits_enabled = true;
        c.ws_max_sockets_per_user = 2;
    })
    .await;
    let id = app.create_draft("alice", "Capped").await;
    app.add("alice", &id, "bob", "viewer").await;
    let (first, _) = app.ws("alice", &id, None).await;
    let (_second, _) = app.ws("alice", &id, None).await;
    let mut third = app.ws_raw("alice", &id, "").await;
    third.expect_closed("ws_limit", 1008).await;
    // Another user is not affected.
    let (_bob, _) = app.ws("bob", &id, None).await;
    // Closing one frees a place.
    first.close().await;
    eventually(|| async {
        let mut ws = app.ws_raw("alice", &id, "").await;
        ws.next_json().await["type"] == "ready"
    })
    .await;
}

async fn the_per_draft_cost_cap_holds_without_ws_limits_enabled(kind: Kind) {
    let app = spawn_with(kind, |c| c.max_ws_connections_per_draft = Some(1)).await;
    let id = app.create_draft("alice", "One seat").await;
    let (_first, _) = app.ws("alice", &id, None).await;
    let mut second = app.ws_raw("alice", &id, "").await;
    second.expect_closed("ws_limit", 1008).await;
}

async fn origins_outside_the_allow_list_are_refused(kind: Kind) {
    let app = spawn_with(kind, |c| {
        c.ws_allowed_origins = vec!["https://app.example".into()]
    })
    .await;
    let id = app.create_draft("alice", "Origins").await;
    let connect = |origin: &'static str| {
        let mut request = app.ws_url(&id, "").into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "authorization",
            format!("Bearer {}", app.token("alice")).parse().unwrap(),
        );
        headers.insert("origin", origin.parse().unwrap());
        WsClient::try_connect(request)
    };
    match connect("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {:?}", other.is_ok()),
    }
    let mut ok = connect("https://app.example").await.unwrap();
    assert_eq!(ok.next_json().await["type"], "ready");
    // Non-browsers send no Origin, and are not checked.
    let (_, ready) = app.ws("alice", &id, None).await;
    assert_eq!(ready["type"], "ready");
}

async fn a_client_that_never_reads_is_closed_as_slow_consumer_while_others_keep_receiving(
    kind: Kind,
) {
    let app = spawn_with(kind, |c| c.ws_outbound_queue = 8).await;
    let id = app.create_draft("alice", "Firehose").await;
    let (mut slow, _) = app.ws("alice", &id, None).await;
    let (mut reader, _) = app.ws("alice", &id, None).await;
    let content = "z".repeat(10_000);
    // The reader keeps reading throughout, handing on the seqs it gets.
    let (seqs_tx, mut seqs_rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        loop {
            if let Some(seq) = reader.next_json().await["seq"].as_u64() {
                let _ = seqs_tx.send(seq);
            }
        }
    });
    // Write until the room drops the slow client (its queue full behind the
    // kernel buffers it never drains), then stop: from then on it has
    // CLOSE_TIMEOUT to read its goodbye, and no write of this test competes
    // with that read for the two cores.
    let dropped = || {
        app.state
            .metrics
            .render()
            .contains("ws_outbound_dropped_total 1")
    };
    let mut total = 0u64;
    while !dropped() {
        assert!(total < 5_000, "the slow client was never dropped");
        assert_eq!(app.append("alice", &id, &content).await.status, 201);
        total += 1;
    }
    let (closed, got) = slow.until_closed().await;
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < total {
        seqs.push(within(seqs_rx.recv()).await.unwrap());
    }
    reading.abort();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());

    // The slow client found a strict prefix of the events, then the reason.
    assert!(
        (got.len() as u64) < total,
        "slow client received everything"
    );
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    assert_eq!(closed.error_code.as_deref(), Some("slow_consumer"));
    assert_eq!(closed.close_code, Some(1013));

    // As the close tells it to, it reconnects with `since` and gets exactly
    // what it missed.
    let last = got.len() as u64;
    let (mut resumed, ready) = app.ws("alice", &id, Some(last)).await;
    assert_eq!(ready["seq"], total);
    assert_eq!(
        resumed.next_seqs((total - last) as usize).await,
        (last + 1..=total).collect::<Vec<_>>()
    );
}

async fn shutdown_closes_sockets_with_1001_and_refuses_new_ones(kind: Kind) {
    let mut app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Bye").await;
    let (mut a, _) = app.ws("alice", &id, None).await;
    let (mut b, _) = app.ws("alice", &id, None).await;
    app.begin_shutdown();
    a.expect_closed("shutdown", 1001).await;
    b.expect_closed("shutdown", 1001).await;
    assert!(app.state.shutdown.is_cancelled());
    let addr = app.addr;
    app.shutdown().await.unwrap();
    // The listener is gone: nothing new is accepted.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

async fn draining_turns_readiness_false_and_refuses_upgrades(kind: Kind) {
    let mut app = spawn_with(kind, |c| c.shutdown_drain_delay_seconds = 30).await;
    let id = app.create_draft("alice", "Drain").await;
    // Hold a connection open so the in-flight server keeps answering on it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.begin_shutdown();
    eventually(|| async { app.state.shutdown.is_cancelled() }).await;
    let ready = read_reply(client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((ready.status, ready.code()), (503, "unavailable"));
    let mut request = app.ws_url(&id, "").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token("alice")).parse().unwrap(),
    );
    // The listener stays open through the drain delay: the refusal is an
    // answer, not a closed port.
    match WsClient::try_connect(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        Err(other) => panic!("refused with something other than a 503: {other}"),
        Ok(_) => panic!("a new socket was accepted while draining"),
    }
}

conformance!(
    the_ready_frame_names_the_connection_and_head,
    two_watchers_see_every_event_once_in_order_while_a_writer_appends,
    a_writer_appending_a_hundred_segments_reaches_both_watchers,
    reconnecting_with_since_gets_exactly_the_missed_events,
    bad_upgrades_are_refused_with_the_envelope_before_the_socket_opens,
    browsers_authenticate_with_access_token,
    the_authorization_header_wins_over_access_token,
    a_non_collaborator_is_told_forbidden_and_closed_1008,
    ping_gets_pong_and_bad_messages_close_1008,
    an_oversized_frame_closes_1008_payload_too_large,
    the_socket_after_the_cap_is_refused_with_ws_limit,
    the_per_draft_cost_cap_holds_without_ws_limits_enabled,
    origins_outside_the_allow_list_are_refused,
    a_client_that_never_reads_is_closed_as_slow_consumer_while_others_keep_receiving,
    shutdown_closes_sockets_with_1001_and_refuses_new_ones,
    draining_turns_readiness_false_and_refuses_upgrades,
);

/// Completes the upgrade over a bare TCP connection and returns it unread:
/// a client whose network vanished (it will never answer a ping).
async fn silent_socket(app: &TestApp, user: &str, draft: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /v1/collab/drafts/{draft}/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
        app.addr,
        app.token(user)
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within(tcp.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // The `ready` frame: from here on the socket holds its lease.
    let mut frames = Vec::new();
    while !frames.windows(7).any(|w| w == b"\"ready\"") {
        within(tcp.read_exact(&mut byte)).await.unwrap();
        frames.push(byte[0]);
    }
    tcp
}

#[tokio::test]
async fn a_silent_socket_is_closed_and_frees_its_slot_while_a_live_one_stays() {
    let app = spawn_with(Kind::Memory, |c| {
        c.ws_ping_interval_seconds = 1;
        c.ws_idle_timeout_seconds = 3;
        c.ws_limits_enabled = true;
        c.ws_max_sockets_per_user = 1;
    })
    .await;
    let id = app.create_draft("alice", "Half-open").await;
    assert_eq!(app.add("alice", &id, "bob", "viewer").await.status, 201);
    // Bob reads (and so answers the server's pings) all along.
    let (mut live, _) = app.ws("bob", &id, None).await;
    let (frames, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        loop {
            let frame = live.next_json().await;
            if frames.send(frame).is_err() {
                return;
            }
        }
    });

    let _silent = silent_socket(&app, "alice", &id).await;
    // Alice's slot is taken by a client that will never speak again...
    let mut refused = app.ws_raw("alice", &id, "").await;
    refused.expect_closed("ws_limit", 1008).await;
    // ...until the idle timeout frees it.
    eventually(|| async {
        app.scrape()
            .await
            .contains("ws_disconnects_total{reason=\"idle_timeout\"} 1")
    })
    .await;
    let (_again, ready) = app.ws("alice", &id, None).await;
    assert_eq!(ready["type"], "ready");

    // Bob, who answered every ping, is still there and still served.
    assert_eq!(app.append("alice", &id, "still here?").await.status, 201);
    let event = within(received.recv()).await.unwrap();
    assert_eq!(event["seq"], 2);
    assert!(!reading.is_finished());
    reading.abort();
}

#[tokio::test]
async fn a_flooding_socket_is_refused_while_others_keep_being_served() {
    let app = spawn_with(Kind::Memory, |c| {
        c.ws_inbound_per_second = 10;
        c.ws_inbound_burst = 20;
    })
    .await;
    let id = app.create_draft("alice", "Flood").await;
    let (mut calm, _) = app.ws("alice", &id, None).await;
    let (mut flood, _) = app.ws("alice", &id, None).await;
    for _ in 0..10_000 {
        flood.send_text_unchecked(r#"{"type":"ping"}"#).await;
    }
    let mut pongs = 0;
    let mut errors = 0;
    let closed = loop {
        let frame = match within(flood.stream.next()).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                serde_json::from_str::<serde_json::Value>(text.as_str()).unwrap()
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("the flooder was not closed cleanly: {other:?}"),
        };
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                errors += 1;
            }
            _ => {}
        }
    };
    let closed = closed.expect("a close frame");
    assert_eq!(u16::from(closed.code), 1008);
    assert_eq!(closed.reason.as_str(), "rate_limited");
    // Told while it could still slow down, and again on the way out.
    assert!(errors >= 2, "{errors} rate_limited frames");
    // The burst, and what the rate refilled meanwhile; never the 10,000.
    assert!((20..200).contains(&pongs), "{pongs} pongs");
    let text = app.scrape().await;
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ws_inbound_rate_limited_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(refused >= 20.0, "{refused} frames counted as refused");

    // The calm socket and the server carry on.
    assert_eq!(app.append("alice", &id, "calm").await.status, 201);
    assert_eq!(calm.next_seqs(1).await, [1]);
    calm.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(calm.next_json().await["type"], "pong");
}

/// A memory store whose event reads can be held at a gate, counting them.
struct GatedStore {
    inner: MemoryStore,
    closed: AtomicBool,
    opened: tokio::sync::Notify,
    /// Every event read so far.
    reads: AtomicUsize,
    /// Event reads waiting at the gate now.
    held: AtomicUsize,
    /// Event reads fail, as when the database is unreachable.
    failing: AtomicBool,
}

impl GatedStore {
    fn new() -> GatedStore {
        GatedStore {
            inner: MemoryStore::new(),
            closed: Default::default(),
            opened: Default::default(),
            reads: Default::default(),
            held: Default::default(),
            failing: Default::default(),
        }
    }

    /// An app served from this store.
    async fn serve(self: &Arc<Self>) -> TestApp {
        self.serve_with(|_| {}).await
    }

    async fn serve_with(
        self: &Arc<Self>,
        adjust: impl FnOnce(&mut collabd::config::Config),
    ) -> TestApp {
        let audit = Arc::new(MemoryAudit::new());
        let mut backends = Backends::memory(audit.clone());
        backends.store = self.clone();
        spawn_with_backends(adjust, backends, audit).await
    }

    fn close(&self) {
        self.closed.store(true, SeqCst);
    }

    fn open(&self) {
        self.closed.store(false, SeqCst);
        self.opened.notify_waiters();
    }

    fn reads(&self) -> usize {
        self.reads.load(SeqCst)
    }

    fn held(&self) -> usize {
        self.held.load(SeqCst)
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn create_draft(&self, d: &Draft) -> Result<()> {
        self.inner.create_draft(d).await
    }
    async fn get_draft(&self, id: Uuid) -> Result<Option<Draft>> {
        self.inner.get_draft(id).await
    }
    async fn drafts_for_user(&self, user: &UserId) -> Result<Vec<Draft>> {
        self.inner.drafts_for_user(user).await
    }
    async fn segments(&self, id: Uuid, page: Page) -> Result<Vec<Segment>> {
        self.inner.segments(id, page).await
    }
    async fn events(&self, id: Uuid, page: Page) -> Result<Vec<Event>> {
        self.reads.fetch_add(1, SeqCst);
        if self.failing.load(SeqCst) {
            return Err(collabd::error::Error::unavailable("the store is down"));
        }
        if self.closed.load(SeqCst) {
            let opened = self.opened.notified();
            self.held.fetch_add(1, SeqCst);
            if self.closed.load(SeqCst) {
                opened.await;
            }
            self.held.fetch_sub(1, SeqCst);
        }
        self.inner.events(id, page).await
    }
    async fn heads(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
        self.inner.heads(ids).await
    }
    async fn mutate(
        &self,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        request_id: &str,
        decide: Decide<'_>,
    ) -> Result<Outcome> {
        self.inner.mutate(id, key, request_id, decide).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn counts(&self) -> Result<StoreCounts> {
        self.inner.counts().await
    }
}

/// Sockets that join a room while it is busy reading the store join
/// together, on one more read: a reconnect storm costs a query or two per
/// room, not one per socket.
#[tokio::test]
async fn joins_queued_behind_a_store_read_are_admitted_on_one_read() {
    let store = Arc::new(GatedStore::new());
    let app = store.serve().await;
    let id = app.create_draft("alice", "Storm").await;
    assert_eq!(app.append("alice", &id, "one").await.status, 201);
    let (_first, _) = app.ws("alice", &id, None).await;

    store.close();
    let before = store.reads();
    let joining: Vec<_> = (0..10)
        .map(|_| {
            let (api, id) = (app.api.clone(), id.clone());
            tokio::spawn(async move { api.ws("alice", &id, None).await })
        })
        .collect();
    // Every socket has opened, and a join is held in its read: any join not
    // taken with it waits in the room's queue.
    eventually(|| async {
        store.held() == 1 && app.scrape().await.contains("\nws_connections_total 11\n")
    })
    .await;
    store.open();
    for socket in joining {
        let (_ws, ready) = socket.await.unwrap();
        assert_eq!(ready["seq"], 1);
    }
    // The held read, and at most one for the joins queued behind it (one
    // read per join would be ten).
    let reads = store.reads() - before;
    assert!(reads <= 2, "{reads} reads for 10 joins");
}

/// A room whose queue overflows (here: held in a store read while 1,100
/// events arrive, past its 1,024 slots) counts what it dropped in
/// `channel_dropped_messages_total{channel="room_queue"}`, and its watcher
/// still gets every event once, in order, refilled from the store.
#[tokio::test]
async fn a_room_queue_overflow_is_counted_and_refilled_from_the_store() {
    const EVENTS: u64 = 1100;
    let store = Arc::new(GatedStore::new());
    // A socket queue that holds the whole refill: this test is about the
    // room's queue, not a slow consumer.
    let app = store.serve_with(|c| c.ws_outbound_queue = 4096).await;
    let id = app.create_draft("alice", "Flooded").await;
    let (mut watcher, _) = app.ws("alice", &id, None).await;
    store.close();
    let joining = {
        let (api, id) = (app.api.clone(), id.clone());
        tokio::spawn(async move { api.ws("alice", &id, None).await })
    };
    eventually(|| async { store.held() == 1 }).await;
    for n in 0..EVENTS {
        assert_eq!(app.append("alice", &id, &format!("e{n}")).await.status, 201);
    }
    let dropped_series = "channel_dropped_messages_total{channel=\"room_queue\"}";
    let dropped = series_value(&app.scrape().await, dropped_series);
    assert!(
        (EVENTS - 1024) as f64 <= dropped && dropped < EVENTS as f64,
        "{dropped} counted as dropped"
    );
    store.open();
    let expected: Vec<u64> = (1..=EVENTS).collect();
    assert_eq!(watcher.next_seqs(EVENTS as usize).await, expected);
    let (_late, ready) = joining.await.unwrap();
    assert_eq!(ready["type"], "ready");
}

/// docs/API.md: `unavailable` (1013) when a backend fails while joining;
/// the room is not left broken for the next client.
#[tokio::test]
async fn a_join_whose_store_read_fails_is_closed_1013_and_the_next_is_served() {
    let store = Arc::new(GatedStore::new());
    let app = store.serve().await;
    let id = app.create_draft("alice", "Down").await;
    assert_eq!(app.append("alice", &id, "one").await.status, 201);
    store.failing.store(true, SeqCst);
    let mut refused = app.ws_raw("alice", &id, "").await;
    refused.expect_closed("unavailable", 1013).await;
    store.failing.store(false, SeqCst);
    let (mut ws, ready) = app.ws("alice", &id, None).await;
    assert_eq!(ready["seq"], 1);
    assert_eq!(app.append("alice", &id, "two").await.status, 201);
    assert_eq!(ws.next_seqs(1).await, [2]);
}

/// A client that hangs up without a close frame is counted as gone, not as
/// a client that broke the rules.
#[tokio::test]
async fn a_hang_up_is_counted_as_client_closed() {
    let app = spawn_app(Kind::Memory).await;
    let id = app.create_draft("alice", "Hung up").await;
    // One hangs up (FIN), one is reset (RST: a crashed client, a dropped
    // network path); neither sent a close frame.
    let fin = silent_socket(&app, "alice", &id).await;
    drop(fin);
    let rst = silent_socket(&app, "alice", &id).await;
    rst.set_zero_linger().unwrap();
    drop(rst);
    eventually(|| async {
        app.scrape()
            .await
            .contains("ws_disconnects_total{reason=\"client_closed\"} 2")
    })
    .await;
    assert!(app
        .scrape()
        .await
        .contains("ws_disconnects_total{reason=\"bad_message\"} 0"));
}

/// A browser's socket (token in the query string) is counted once, as the
/// success it is, though the rate limit found no header.
#[tokio::test]
async fn a_browser_socket_counts_one_verified_token() {
    let app = spawn_with(Kind::Memory, |c| c.rate_limit_enabled = true).await;
    let id = app.create_draft("alice", "Counted").await;
    let query = format!("?access_token={}", app.token("alice"));
    let mut ws = WsClient::connect(app.ws_url(&id, &query).into_client_request().unwrap()).await;
    assert_eq!(ws.next_json().await["type"], "ready");
    let text = app.scrape().await;
    // The create, then the socket.
    assert!(text.contains("\nauth_success_total 2\n"), "{text}");
    assert!(
        text.contains("auth_failures_total{reason=\"missing\"} 0"),
        "{text}"
    );
}
