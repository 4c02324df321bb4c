//! The REST contract, end to end over real sockets: the happy path, every
//! error code in its envelope, request ids, idempotent appends, caps, audit
//! rows and rate limits.

use std::sync::Arc;

use crate::common::*;
use async_trait::async_trait;
use collabd::adapters::memory::MemoryAudit;
use collabd::app::Backends;
use collabd::collab::input::{IdempotencyKey, UserId};
use collabd::collab::model::{Draft, Event, Outcome, Segment};
use collabd::error::Error;
use collabd::ports::Page;
use collabd::ports::{Decide, Store};
use serde_json::json;
use uuid::Uuid;

async fn the_happy_path_from_draft_to_ring_pass(kind: Kind) {
    let app = spawn_app(kind).await;

    let created = app
        .post(
            "alice",
            "/v1/collab/drafts",
            json!({ "title": "  Launch plan " }),
        )
        .await;
    assert_eq!(created.status, 201);
    let draft = &created.body;
    let id = draft["id"].as_str().unwrap();
    assert_eq!(draft["title"], "Launch plan");
    assert_eq!(draft["owner_id"], "alice");
    assert_eq!(draft["ring_holder"], "alice");
    assert_eq!(draft["seq"], 0);
    assert_eq!(
        draft["collaborators"],
        json!([{ "user_id": "alice", "role": "owner" }])
    );
    assert!(draft["created_at"].as_str().unwrap().ends_with('Z'));

    assert_eq!(app.add("alice", id, "bob", "editor").await.status, 201);
    assert_eq!(app.add("alice", id, "vic", "viewer").await.status, 201);
    // Adding again with the same role changes nothing.
    let again = app.add("alice", id, "bob", "editor").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["seq"], 2);

    let first = app.append("alice", id, "Hello").await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body["seq"], 3);
    assert_eq!(first.body["author_id"], "alice");
    assert_eq!(first.body["content"], "Hello");
    assert_eq!(first.body["draft_id"], id);

    let passed = app.pass("alice", id, "bob").await;
    assert_eq!(passed.status, 200);
    assert_eq!(passed.body["ring_holder"], "bob");
    assert_eq!(passed.body["seq"], 4);
    assert_eq!(app.append("bob", id, " world").await.status, 201);

    let fetched = app.get("vic", &format!("/v1/collab/drafts/{id}")).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body["seq"], 5);
    assert_eq!(fetched.body["collaborators"].as_array().unwrap().len(), 3);

    let listed = app.get("bob", "/v1/collab/drafts").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("zed", "/v1/collab/drafts").await.body["items"],
        json!([])
    );

    let segments = app
        .get("vic", &format!("/v1/collab/drafts/{id}/segments"))
        .await;
    let contents: Vec<_> = segments.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["Hello", " world"]);

    let events = app
        .get("vic", &format!("/v1/collab/drafts/{id}/events"))
        .await;
    let kinds: Vec<_> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "collaborator_added".to_owned()),
            (2, "collaborator_added".to_owned()),
            (3, "segment_appended".to_owned()),
            (4, "ring_passed".to_owned()),
            (5, "segment_appended".to_owned()),
        ]
    );
    let ring = &events.body["items"][3]["data"];
    assert_eq!(ring["from_user_id"], "alice");
    assert_eq!(ring["to_user_id"], "bob");
}

async fn lists_page_by_seq(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Paged").await;
    for i in 0..7 {
        assert_eq!(app.append("alice", &id, &format!("s{i}")).await.status, 201);
    }
    let page = app
        .get(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments?after=2&limit=3"),
        )
        .await;
    let seqs: Vec<_> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    let events = app
        .get("alice", &format!("/v1/collab/drafts/{id}/events?after=6"))
        .await;
    assert_eq!(events.body["items"].as_array().unwrap().len(), 1);
    for bad in ["limit=0", "limit=1001", "after=-1", "limit=abc", "bogus=1"] {
        let reply = app
            .get("alice", &format!("/v1/collab/drafts/{id}/segments?{bad}"))
            .await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(reply.code(), "validation_error", "{bad}");
    }
}

async fn every_validation_failure_is_a_400_envelope_and_changes_nothing(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Strict").await;
    let url = app.url(&format!("/v1/collab/drafts/{id}/segments"));
    let token = app.token("alice");
    let bodies = [
        ("{\"content\":", "application/json"),
        ("{}", "application/json"),
        ("{\"content\":\"\"}", "application/json"),
        ("{\"content\":5}", "application/json"),
        ("{\"content\":\"x\",\"extra\":1}", "application/json"),
        (
            "{\"content\":\"x\",\"idempotency_key\":\"has space\"}",
            "application/json",
        ),
        ("{\"content\":\"x\"}", "text/plain"),
        ("[1,2]", "application/json"),
    ];
    for (body, content_type) in bodies {
        let response = app
            .http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let reply = read_reply(response).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.code(), "validation_error", "{body}");
    }
    let too_long = "x".repeat(10_001);
    assert_eq!(
        app.append("alice", &id, &too_long).await.code(),
        "validation_error"
    );
    for title in [json!(""), json!("   "), json!("t".repeat(201)), json!(null)] {
        let reply = app
            .post("alice", "/v1/collab/drafts", json!({ "title": title }))
            .await;
        assert_eq!(reply.code(), "validation_error", "{title}");
    }
    let bad_user = app.add("alice", &id, "no spaces please", "editor").await;
    assert_eq!(bad_user.code(), "validation_error");
    let bad_role = app.add("alice", &id, "bob", "emperor").await;
    assert_eq!(bad_role.code(), "validation_error");
    let owner_role = app.add("alice", &id, "bob", "owner").await;
    assert_eq!(owner_role.code(), "validation_error");
    let not_uuid = app.get("alice", "/v1/collab/drafts/not-a-uuid").await;
    assert_eq!(not_uuid.status, 400);
    assert_eq!(not_uuid.code(), "validation_error");
    let key_mismatch = app
        .post_with(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments"),
            &[("idempotency-key", "a")],
            json!({ "content": "x", "idempotency_key": "b" }),
        )
        .await;
    assert_eq!(key_mismatch.code(), "validation_error");

    // Nothing above changed the draft.
    assert_eq!(app.head("alice", &id).await, 0);
    assert_eq!(
        app.get("alice", "/v1/collab/drafts").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn bad_tokens_are_401_envelopes(kind: Kind) {
    let app = spawn_app(kind).await;
    let url = app.url("/v1/collab/drafts");
    let other = collabd::auth::Authenticator::new("another-secret")
        .mint("alice", std::time::Duration::from_secs(60))
        .unwrap();
    let cases: [(&str, Option<String>); 5] = [
        ("missing", None),
        ("not bearer", Some("Basic YWxpY2U6cHc=".into())),
        ("garbage", Some("Bearer not.a.jwt".into())),
        ("wrong secret", Some(format!("Bearer {other}"))),
        ("empty", Some("Bearer ".into())),
    ];
    for (name, header) in cases {
        let mut request = app.http.get(&url);
        if let Some(h) = header {
            request = request.header("authorization", h);
        }
        let reply = read_reply(request.send().await.unwrap()).await;
        assert_eq!(reply.status, 401, "{name}");
        assert_eq!(reply.code(), "unauthorized", "{name}");
    }
}

async fn roles_and_the_ring_are_enforced(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Rules").await;
    app.add("alice", &id, "bob", "editor").await;
    app.add("alice", &id, "vic", "viewer").await;

    let stranger = app.get("mallory", &format!("/v1/collab/drafts/{id}")).await;
    assert_eq!((stranger.status, stranger.code()), (403, "forbidden"));
    let stranger_events = app
        .get("mallory", &format!("/v1/collab/drafts/{id}/events"))
        .await;
    assert_eq!(stranger_events.code(), "forbidden");
    let not_holder = app.append("bob", &id, "sneaky").await;
    assert_eq!(
        (not_holder.status, not_holder.code()),
        (409, "ring_required")
    );
    let viewer = app.append("vic", &id, "nope").await;
    assert_eq!((viewer.status, viewer.code()), (403, "forbidden"));
    let editor_adds = app.add("bob", &id, "carol", "viewer").await;
    assert_eq!(editor_adds.code(), "forbidden");
    let editor_passes = app.pass("bob", &id, "bob").await;
    assert_eq!(editor_passes.code(), "forbidden");
    let to_viewer = app.pass("alice", &id, "vic").await;
    assert_eq!(to_viewer.code(), "validation_error");
    let to_stranger = app.pass("alice", &id, "mallory").await;
    assert_eq!(to_stranger.code(), "validation_error");
    let unknown = app
        .get("alice", &format!("/v1/collab/drafts/{}", Uuid::new_v4()))
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
    let unknown_append = app.append("alice", &Uuid::new_v4().to_string(), "x").await;
    assert_eq!(unknown_append.code(), "not_found");
    assert_eq!(app.head("alice", &id).await, 2);
}

async fn unknown_routes_and_methods_get_the_envelope(kind: Kind) {
    let app = spawn_app(kind).await;
    let missing = read_reply(app.http.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    let wrong = read_reply(
        app.http
            .delete(app.url("/v1/collab/drafts"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((wrong.status, wrong.code()), (405, "method_not_allowed"));
}

async fn oversized_bodies_are_413(kind: Kind) {
    let app = spawn_with(kind, |c| c.max_body_bytes = 1024).await;
    let body = json!({ "title": "x".repeat(4000) });
    let reply = app.post("alice", "/v1/collab/drafts", body).await;
    assert_eq!((reply.status, reply.code()), (413, "payload_too_large"));
    assert_eq!(
        app.get("alice", "/v1/collab/drafts").await.body["items"],
        json!([])
    );
}

async fn the_collaborator_cap_is_hard_and_the_segment_cap_soft(kind: Kind) {
    let app = spawn_with(kind, |c| {
        c.max_collaborators_per_draft = Some(2);
        c.max_segments_per_draft = Some(1);
    })
    .await;
    let id = app.create_draft("alice", "Capped").await;
    assert_eq!(app.add("alice", &id, "bob", "editor").await.status, 201);
    let third = app.add("alice", &id, "carol", "viewer").await;
    assert_eq!((third.status, third.code()), (409, "limit_exceeded"));
    // Past the soft cap, appends still succeed.
    for n in 0..3 {
        assert_eq!(app.append("alice", &id, &format!("{n}")).await.status, 201);
    }
}

async fn request_ids_are_echoed_when_sane_and_replaced_when_not(kind: Kind) {
    let app = spawn_app(kind).await;
    let sane = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "req-123.abc:9")
        .send()
        .await
        .unwrap();
    assert_eq!(sane.headers()["x-request-id"], "req-123.abc:9");
    for unsafe_id in ["has space", "<script>", &"x".repeat(129)] {
        let response = app
            .http
            .get(app.url("/nope"))
            .header("x-request-id", unsafe_id)
            .send()
            .await
            .unwrap();
        let reply = read_reply(response).await;
        let echoed = reply.header("x-request-id").unwrap().to_owned();
        assert_ne!(echoed, unsafe_id);
        assert!(Uuid::parse_str(&echoed).is_ok());
        assert_eq!(reply.body["error"]["request_id"], echoed.as_str());
    }

    // The id travels into the event the request caused.
    let id = app.create_draft("alice", "Traced").await;
    let reply = app
        .post_with(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments"),
            &[("x-request-id", "append-42")],
            json!({ "content": "x" }),
        )
        .await;
    assert_eq!(reply.status, 201);
    let events = app
        .get("alice", &format!("/v1/collab/drafts/{id}/events"))
        .await;
    assert_eq!(events.body["items"][0]["request_id"], "append-42");
}

async fn a_retried_append_returns_the_original(kind: Kind) {
    let app = spawn_app(kind).await;
    let id = app.create_draft("alice", "Once").await;
    let path = format!("/v1/collab/drafts/{id}/segments");
    let first = app
        .post(
            "alice",
            &path,
            json!({ "content": "hi", "idempotency_key": "k-1" }),
        )
        .await;
    assert_eq!(first.status, 201);
    let retry = app
        .post(
            "alice",
            &path,
            json!({ "content": "hi", "idempotency_key": "k-1" }),
        )
        .await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body, first.body);

    // The header works too, and matches the body key.
    let by_header = app
        .post_with(
            "alice",
            &path,
            &[("idempotency-key", "k-1")],
            json!({ "content": "hi" }),
        )
        .await;
    assert_eq!(by_header.status, 200);
    assert_eq!(by_header.body["id"], first.body["id"]);
    assert_eq!(app.head("alice", &id).await, 1);
}

async fn concurrent_retries_create_one_segment_and_concurrent_appends_leave_no_gap(kind: Kind) {
    let app = Arc::new(spawn_app(kind).await);
    let id = app.create_draft("alice", "Race").await;
    let path = format!("/v1/collab/drafts/{id}/segments");
    let retries = (0..32).map(|_| {
        let (app, path) = (app.clone(), path.clone());
        tokio::spawn(async move {
            app.post(
                "alice",
                &path,
                json!({ "content": "once", "idempotency_key": "same" }),
            )
            .await
        })
    });
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for reply in futures_util::future::join_all(retries).await {
        let reply = reply.unwrap();
        assert!(reply.status == 201 || reply.status == 200, "{}", reply.body);
        created += usize::from(reply.status == 201);
        ids.insert(reply.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);

    let appends = (0..32).map(|n| {
        let (app, id) = (app.clone(), id.clone());
        tokio::spawn(async move { app.append("alice", &id, &format!("c{n}")).await.status })
    });
    for status in futures_util::future::join_all(appends).await {
        assert_eq!(status.unwrap(), 201);
    }
    let events = app
        .get(
            "alice",
            &format!("/v1/collab/drafts/{id}/events?limit=1000"),
        )
        .await;
    let seqs: Vec<u64> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=33).collect::<Vec<_>>());
}

async fn audit_rows_follow_the_policy(kind: Kind) {
    let app = spawn_with(kind, |c| c.audit_enabled = true).await;
    let id = app.create_draft("alice", "Audited").await;
    app.add("alice", &id, "bob", "editor").await;
    let appended = app
        .post(
            "alice",
            &format!("/v1/collab/drafts/{id}/segments"),
            json!({ "content": "secret words", "idempotency_key": "ik" }),
        )
        .await;
    app.pass("alice", &id, "bob").await;
    // Failed and no-op requests are not audited.
    app.append("alice", &id, "not holder").await;
    app.add("alice", &id, "bob", "editor").await;

    let rows = app.audit_rows().await;
    let actions: Vec<_> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "create_draft",
            "add_collaborator",
            "append_segment",
            "pass_ring"
        ]
    );
    for row in &rows {
        assert_eq!(row.user_id, "alice");
        assert_eq!(row.draft_id.map(|d| d.to_string()), Some(id.clone()));
        assert!(!row.request_id.is_empty());
        assert_eq!(row.ip.as_deref(), Some("127.0.0.1"));
        assert!(!row.metadata.to_string().contains("secret words"));
    }
    let append = &rows[2].metadata;
    assert_eq!(append["segment_id"], appended.body["id"]);
    assert_eq!(append["content_length"], 12);
    assert_eq!(append["idempotency_key"], "ik");
    assert_eq!(
        rows[1].metadata,
        json!({ "collaborator_id": "bob", "role": "editor" })
    );
    assert_eq!(
        rows[3].metadata,
        json!({ "from_user_id": "alice", "to_user_id": "bob" })
    );

    let events = app
        .get("alice", &format!("/v1/collab/drafts/{id}/events"))
        .await;
    assert_eq!(
        rows[2].request_id,
        events.body["items"][1]["request_id"].as_str().unwrap()
    );
}

async fn audit_off_or_sampled_to_zero_records_nothing(kind: Kind) {
    for adjust in [
        (|_: &mut collabd::config::Config| {}) as fn(&mut collabd::config::Config),
        |c| {
            c.audit_enabled = true;
            c.audit_sample_rate = 0.0;
        },
    ] {
        let app = spawn_with(kind, adjust).await;
        let id = app.create_draft("alice", "Quiet").await;
        app.append("alice", &id, "x").await;
        assert!(app.audit_rows().await.is_empty());
    }
}

async fn the_rate_limit_answers_429_with_headers_and_keys_by_user(kind: Kind) {
    let app = spawn_with(kind, |c| {
        c.rate_limit_enabled = true;
        c.rate_limit_burst_default = 2;
        c.rate_limit_per_minute_default = 60;
        c.rate_limit_burst_mutation = 0;
        c.rate_limit_per_minute_mutation = 1;
    })
    .await;
    // Reads: burst 2 → three pass at once, the fourth waits about a second.
    for remaining in [2, 1, 0] {
        let reply = app.get("alice", "/v1/collab/drafts").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit-policy"), Some("\"read\";q=3;w=3"));
        let state = reply.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!("\"read\";r={remaining};t=")),
            "{state}"
        );
    }
    let limited = app.get("alice", "/v1/collab/drafts").await;
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert!(limited
        .header("ratelimit")
        .unwrap()
        .starts_with("\"read\";r=0;"));
    // Another user has their own bucket.
    assert_eq!(app.get("bob", "/v1/collab/drafts").await.status, 200);
    // Mutations are stricter: one, then a minute's wait.
    let first = app
        .post("bob", "/v1/collab/drafts", json!({ "title": "a" }))
        .await;
    assert_eq!(first.status, 201);
    let second = app
        .post("bob", "/v1/collab/drafts", json!({ "title": "b" }))
        .await;
    assert_eq!(second.code(), "rate_limited");
    assert_eq!(second.header("retry-after"), Some("60"));
    // Each route has its own bucket: creating drafts used up bob's creates,
    // not his appends, which are limited on their own.
    let id = first.body["id"].as_str().unwrap();
    let path = format!("/v1/collab/drafts/{id}/segments");
    let append = app.post("bob", &path, json!({ "content": "x" })).await;
    assert_eq!(append.status, 201, "{}", append.body);
    // The bucket is the route's, not the path's: an append to another
    // draft spends from the same one.
    let other = app.create_draft("alice", "Alice's").await;
    assert_eq!(app.add("alice", &other, "bob", "editor").await.status, 201);
    assert_eq!(app.pass("alice", &other, "bob").await.status, 200);
    let elsewhere = app
        .post(
            "bob",
            &format!("/v1/collab/drafts/{other}/segments"),
            json!({ "content": "y" }),
        )
        .await;
    assert_eq!(elsewhere.code(), "rate_limited");
    // Without a valid token the client IP is the key; probes are never limited.
    for _ in 0..5 {
        assert_eq!(
            read_reply(app.http.get(app.url("/healthz")).send().await.unwrap())
                .await
                .status,
            200
        );
    }
    let anonymous: Vec<u16> = futures_util::future::join_all((0..4).map(|_| async {
        app.http
            .get(app.url("/v1/collab/drafts"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }))
    .await;
    assert_eq!(anonymous.iter().filter(|s| **s == 401).count(), 3);
    assert_eq!(anonymous.iter().filter(|s| **s == 429).count(), 1);
}

/// A store whose backend is down, or broken.
struct BrokenStore {
    unavailable: bool,
}

impl BrokenStore {
    fn fail(&self) -> Error {
        if self.unavailable {
            Error::unavailable("connection refused to db:5432")
        } else {
            Error::internal("relation \"drafts\" does not exist")
        }
    }
}

#[async_trait]
impl Store for BrokenStore {
    async fn create_draft(&self, _: &Draft) -> Result<(), Error> {
        Err(self.fail())
    }
    async fn get_draft(&self, _: Uuid) -> Result<Option<Draft>, Error> {
        Err(self.fail())
    }
    async fn drafts_for_user(&self, _: &UserId) -> Result<Vec<Draft>, Error> {
        Err(self.fail())
    }
    async fn segments(&self, _: Uuid, _: Page) -> Result<Vec<Segment>, Error> {
        Err(self.fail())
    }
    async fn heads(&self, _: &[Uuid]) -> Result<Vec<(Uuid, u64)>, Error> {
        Err(self.fail())
    }
    async fn events(&self, _: Uuid, _: Page) -> Result<Vec<Event>, Error> {
        Err(self.fail())
    }
    async fn mutate(
        &self,
        _: Uuid,
        _: Option<&IdempotencyKey>,
        _: &str,
        _: Decide<'_>,
    ) -> Result<Outcome, Error> {
        Err(self.fail())
    }
    async fn ping(&self) -> Result<(), Error> {
        Err(self.fail())
    }
    async fn counts(&self) -> Result<collabd::ports::StoreCounts, Error> {
        Err(self.fail())
    }
}

#[tokio::test]
async fn backend_failures_are_503_or_500_without_internal_detail() {
    for (unavailable, status, code) in [(true, 503, "unavailable"), (false, 500, "internal")] {
        let audit = Arc::new(MemoryAudit::new());
        let mut backends = Backends::memory(audit.clone());
        backends.store = Arc::new(BrokenStore { unavailable });
        let app = spawn_with_backends(|_| {}, backends, audit).await;
        let reply = app
            .post("alice", "/v1/collab/drafts", json!({ "title": "t" }))
            .await;
        assert_eq!((reply.status, reply.code()), (status, code));
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("5432") && !message.contains("relation"),
            "{message}"
        );
        let ready = read_reply(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
        assert_eq!(ready.status, status);
        // Liveness is about the process only.
        let live = read_reply(app.http.get(app.url("/healthz")).send().await.unwrap()).await;
        assert_eq!(live.status, 200);
    }
    // The real memory store is ready.
    let app = spawn_app(Kind::Memory).await;
    let ready = read_reply(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(
        (ready.status, ready.body["status"].as_str()),
        (200, Some("ready"))
    );
}

conformance!(
    the_happy_path_from_draft_to_ring_pass,
    lists_page_by_seq,
    every_validation_failure_is_a_400_envelope_and_changes_nothing,
    bad_tokens_are_401_envelopes,
    roles_and_the_ring_are_enforced,
    unknown_routes_and_methods_get_the_envelope,
    oversized_bodies_are_413,
    the_collaborator_cap_is_hard_and_the_segment_cap_soft,
    request_ids_are_echoed_when_sane_and_replaced_when_not,
    a_retried_append_returns_the_original,
    concurrent_retries_create_one_segment_and_concurrent_appends_leave_no_gap,
    audit_rows_follow_the_policy,
    audit_off_or_sampled_to_zero_records_nothing,
    the_rate_limit_answers_429_with_headers_and_keys_by_user,
);
