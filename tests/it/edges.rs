//! Bad input at the edges of HTTP and JWT, in both modes: text no store
//! could hold, tokens with unusual claims, bodies that lie about their
//! length or never finish, heads that trickle and connections that idle.
//! Each is refused at once with the envelope, or served, the same way with
//! memory and Postgres, and writes nothing. Raw sockets where a client
//! library would hide what the server does.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The head (status line and headers, lowercased names) and JSON body of a
/// raw HTTP/1.1 response, read until the server closes or the body is
/// complete.
struct RawReply {
    status: u16,
    head: String,
    body: Value,
}

async fn raw_reply(stream: &mut TcpStream) -> RawReply {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let text = within(async {
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            bytes.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if n == 0 || complete(&text) {
                return text;
            }
        }
    })
    .await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    RawReply {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// Whether a response with a Content-Length has all of its body.
fn complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length: ")?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .is_some_and(|n| body.len() >= n)
}

/// Sends a request head (and the start of a body) as given.
async fn send_raw(app: &TestApp, text: &str) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    stream
}

fn post_head(app: &TestApp, path: &str, content_length: u64) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: collabd\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n",
        app.token("alice")
    )
}

async fn drafts_of(app: &TestApp, user: &str) -> Value {
    app.get(user, "/v1/collab/drafts").await.body["items"].clone()
}

async fn nul_is_refused_in_every_text_field(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Plain").await;
    let segments = format!("/v1/collab/drafts/{id}/segments");
    let refused = [
        (
            "/v1/collab/drafts".to_owned(),
            json!({ "title": "a\u{0}b" }),
        ),
        (segments.clone(), json!({ "content": "a\u{0}b" })),
        (
            segments.clone(),
            json!({ "content": "ok", "idempotency_key": "k\u{0}" }),
        ),
        (
            format!("/v1/collab/drafts/{id}/collaborators"),
            json!({ "user_id": "bob\u{0}", "role": "editor" }),
        ),
        (
            format!("/v1/collab/drafts/{id}/ring/pass"),
            json!({ "to_user_id": "bob\u{0}" }),
        ),
    ];
    for (path, body) in refused {
        let reply = app.post("alice", &path, body.clone()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "validation_error"),
            "{path} {body}"
        );
    }
    // Nothing was written: the draft is as created, with no event.
    assert_eq!(app.head("alice", &id).await, 0);
    assert_eq!(drafts_of(&app, "alice").await.as_array().unwrap().len(), 1);
    // Every other character is kept exactly, in both modes.
    let text = "tab\there\nnew line \u{1}\u{7f} \u{1F600} \u{10FFFF}";
    let reply = app
        .post("alice", &segments, json!({ "content": text }))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let stored = app.get("alice", &segments).await;
    assert_eq!(stored.body["items"][0]["content"], text);
}

fn token_with(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(b"test-secret");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn tokens_need_only_sub_and_exp_and_honour_their_times(kind: Kind) {
    let app = spawn_app(kind).await;
    let call = |claims: Value| {
        let app = &app;
        async move {
            let response = app
                .http
                .get(app.url("/v1/collab/drafts"))
                .bearer_auth(token_with(claims))
                .send()
                .await
                .unwrap();
            read_reply(response).await
        }
    };
    let minimal = call(json!({ "sub": "alice", "exp": now() + 60 })).await;
    assert_eq!(minimal.status, 200, "{}", minimal.body);
    let valid_from_now = call(json!({ "sub": "alice", "exp": now() + 60, "nbf": now() })).await;
    assert_eq!(valid_from_now.status, 200, "{}", valid_from_now.body);
    let early = call(json!({ "sub": "alice", "exp": now() + 7200, "nbf": now() + 3600 })).await;
    assert_eq!((early.status, early.code()), (401, "unauthorized"));
    assert!(
        early.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid yet"),
        "{}",
        early.body
    );
    let no_exp = call(json!({ "sub": "alice" })).await;
    assert_eq!((no_exp.status, no_exp.code()), (401, "unauthorized"));
    // Expired beyond the leeway: refused, and told why.
    let expired = call(json!({ "sub": "alice", "exp": now() - 60 })).await;
    assert_eq!((expired.status, expired.code()), (401, "unauthorized"));
    assert!(
        expired.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{}",
        expired.body
    );
}

async fn a_declared_length_over_the_limit_is_refused_at_once(kind: Kind) {
    let app = spawn_with(kind, |c| c.max_body_bytes = 1024).await;
    // Declares a gigabyte, sends two bytes, and waits.
    let mut liar = send_raw(
        &app,
        &(post_head(&app, "/v1/collab/drafts", 1_000_000_000) + "{}"),
    )
    .await;
    let reply = raw_reply(&mut liar).await;
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert_eq!(reply.body["error"]["code"], "payload_too_large");
    assert!(reply.head.contains("x-request-id: "), "{}", reply.head);
    assert_eq!(drafts_of(&app, "alice").await, json!([]));
}

async fn a_body_that_trickles_is_refused_after_the_body_timeout(kind: Kind) {
    let app = spawn_with(kind, |c| c.http_body_timeout_seconds = 1).await;
    // Declares 40 bytes, sends 10, and never the rest.
    let mut slow = send_raw(
        &app,
        &(post_head(&app, "/v1/collab/drafts", 40) + "{\"title\":"),
    )
    .await;
    let reply = raw_reply(&mut slow).await;
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert_eq!(reply.body["error"]["code"], "request_timeout");
    assert!(reply.head.contains("x-request-id: "), "{}", reply.head);
    assert_eq!(drafts_of(&app, "alice").await, json!([]));
}

/// The head timeout does not reach into the body: a body slower than it,
/// within the body timeout, is served.
async fn a_body_slower_than_the_head_timeout_is_still_served(kind: Kind) {
    let app = spawn_with(kind, |c| {
        c.http_header_timeout_seconds = 1;
        c.http_body_timeout_seconds = 10;
    })
    .await;
    let body = r#"{"title":"Late"}"#;
    let mut slow = send_raw(
        &app,
        &post_head(&app, "/v1/collab/drafts", body.len() as u64),
    )
    .await;
    // Longer than the head timeout, as the scenario: not a synchronisation.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    slow.write_all(body.as_bytes()).await.unwrap();
    let reply = raw_reply(&mut slow).await;
    assert_eq!(reply.status, 201, "{}", reply.head);
    assert_eq!(drafts_of(&app, "alice").await.as_array().unwrap().len(), 1);
}

async fn slow_heads_are_cut_off_while_others_are_served(kind: Kind) {
    use futures_util::future::join_all;
    let app = spawn_with(kind, |c| c.http_header_timeout_seconds = 1).await;
    // Many clients each start a head and never finish it.
    let mut slow = join_all(
        (0..50).map(|_| send_raw(&app, "GET /healthz HTTP/1.1\r\nHost: collabd\r\nX-Slow: ")),
    )
    .await;
    // Meanwhile others are served as ever.
    let id = app.create_draft("alice", "Served").await;
    assert_eq!(app.append("alice", &id, "still").await.status, 201);
    // And each slow one is closed (`within` fails the test if it stays
    // open), never answered; so is one that connected and said nothing.
    slow.push(TcpStream::connect(app.addr).await.unwrap());
    for stream in &mut slow {
        let mut rest = Vec::new();
        let _closed_or_reset = within(stream.read_to_end(&mut rest)).await;
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    }
}

/// The connection clock stops at an upgrade: a socket outlives both the
/// head and the keep-alive timeouts and still gets its events.
async fn websockets_outlive_the_http_timeouts(kind: Kind) {
    let app = spawn_with(kind, |c| {
        c.http_header_timeout_seconds = 1;
        c.http_keepalive_timeout_seconds = 1;
    })
    .await;
    let id = app.create_draft("alice", "Long lived").await;
    let (mut ws, _) = app.ws("alice", &id, None).await;
    // Past both timeouts, as the scenario.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.append("alice", &id, "later").await.status, 201);
    assert_eq!(ws.next_seqs(1).await, [1]);
}

/// An idle keep-alive connection outlives the header timeout (which counts
/// only from a head's first byte) and is closed after the keep-alive one.
async fn idle_connections_are_kept_for_the_keep_alive_timeout_only(kind: Kind) {
    let header = Duration::from_secs(1);
    let app = spawn_with(kind, |c| {
        c.http_header_timeout_seconds = 1;
        c.http_keepalive_timeout_seconds = 6;
    })
    .await;
    let request = "GET /healthz HTTP/1.1\r\nHost: collabd\r\n\r\n";
    let mut conn = send_raw(&app, request).await;
    assert_eq!(raw_reply(&mut conn).await.status, 200);
    // Idle for longer than the header timeout: the connection is still
    // there and serves the next request.
    tokio::time::sleep(header * 2).await;
    conn.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(raw_reply(&mut conn).await.status, 200);
    // Left idle, it is closed by the server.
    let mut rest = Vec::new();
    let closed = within(conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok_and(|n| n == 0), "{rest:?}");
}

conformance!(
    nul_is_refused_in_every_text_field,
    tokens_need_only_sub_and_exp_and_honour_their_times,
    a_declared_length_over_the_limit_is_refused_at_once,
    a_body_that_trickles_is_refused_after_the_body_timeout,
    a_body_slower_than_the_head_timeout_is_still_served,
    websockets_outlive_the_http_timeouts,
    slow_heads_are_cut_off_while_others_are_served,
    idle_connections_are_kept_for_the_keep_alive_timeout_only,
);
