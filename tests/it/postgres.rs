//! What only a shared database can promise: replicas that agree on one
//! gap-free history, exactly-once appends across them, nothing lost over a
//! restart, clean 503s and no partial rows while Postgres is unreachable, and
//! migrations that three replicas can run at once.

use std::sync::Arc;
use std::time::Duration;

use crate::common::pg::{server_addr, TestDb};
use crate::common::proxy::Proxy;
use crate::common::redis::{base_url, TestPrefix};
use crate::common::*;
use collabd::adapters::postgres::migrate::{migrate, MigrateError, MIGRATIONS};
use collabd::adapters::postgres::{pool, PoolSettings};
use serde_json::json;

/// Several replicas on one database are a cluster: they share Redis.
fn in_cluster(prefix: &TestPrefix) -> impl Fn(&mut collabd::config::Config) + '_ {
    |c| {
        c.redis_url = Some(base_url());
        c.redis_key_prefix = prefix.prefix.clone();
    }
}

#[tokio::test]
async fn two_replicas_on_one_database_assign_gap_free_seqs() {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new();
    let a = Arc::new(spawn_on(db.clone(), None, in_cluster(&prefix)).await);
    let b = Arc::new(spawn_on(db.clone(), None, in_cluster(&prefix)).await);
    let id = a.create_draft("alice", "Shared").await;

    let appends = (0..32).map(|n| {
        let app = if n % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tokio::spawn(async move { app.append("alice", &id, &format!("n{n}")).await.status })
    });
    for status in futures_util::future::join_all(appends).await {
        assert_eq!(status.unwrap(), 201);
    }
    let from_a = a
        .get(
            "alice",
            &format!("/v1/collab/drafts/{id}/events?limit=1000"),
        )
        .await;
    let from_b = b
        .get(
            "alice",
            &format!("/v1/collab/drafts/{id}/events?limit=1000"),
        )
        .await;
    assert_eq!(seqs_of(&from_a), (1..=32).collect::<Vec<_>>());
    assert_eq!(from_a.body, from_b.body);
    assert_eq!(db.count("segments").await, 32);
    assert_eq!(b.head("alice", &id).await, 32);
}

#[tokio::test]
async fn retries_racing_on_two_replicas_create_one_segment() {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new();
    let a = Arc::new(spawn_on(db.clone(), None, in_cluster(&prefix)).await);
    let b = Arc::new(spawn_on(db.clone(), None, in_cluster(&prefix)).await);
    let id = a.create_draft("alice", "Once").await;
    let path = format!("/v1/collab/drafts/{id}/segments");
    let retries = (0..32).map(|n| {
        let app = if n % 2 == 0 { a.clone() } else { b.clone() };
        let path = path.clone();
        tokio::spawn(async move {
            app.post(
                "alice",
                &path,
                json!({ "content": "once", "idempotency_key": "retry-me" }),
            )
            .await
        })
    });
    let replies: Vec<Reply> = futures_util::future::join_all(retries)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1);
    assert!(replies.iter().all(|r| r.status == 201 || r.status == 200));
    assert!(replies
        .iter()
        .all(|r| r.body["id"] == replies[0].body["id"]));
    assert_eq!(db.count("segments").await, 1);
    assert_eq!(db.count("events").await, 1);
}

/// A replica without Redis fans out only to its own sockets: a second one
/// on the same database (or a cluster replica next to it) would silently
/// split the watchers, so it is refused at start-up, naming what to do.
#[tokio::test]
async fn a_second_replica_without_redis_is_refused_until_the_first_is_gone() {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new();
    let first = spawn_on(db.clone(), None, |_| {}).await;
    let quick = |c: &mut collabd::config::Config| {
        c.database_url = Some(db.url());
        c.database_connect_timeout_seconds = 1;
        c.shutdown_timeout_seconds = 1;
    };
    for redis in [None, Some(base_url())] {
        let mut config = collabd::config::Config::defaults();
        quick(&mut config);
        config.redis_url = redis.clone();
        config.redis_key_prefix = prefix.prefix.clone();
        let refused = collabd::app::Backends::from_config(&config).await;
        let message = refused.err().expect("refused").to_string();
        assert!(message.contains("REDIS_URL"), "{redis:?}: {message}");
    }
    first.shutdown().await.unwrap();
    // Gone: the next one starts (waiting, if need be, for the old claim).
    let second = spawn_on(db.clone(), None, |_| {}).await;
    let id = second.create_draft("alice", "Mine now").await;
    assert_eq!(second.head("alice", &id).await, 0);
}

#[tokio::test]
async fn a_restart_loses_nothing_and_since_replays_from_the_table() {
    let db = TestDb::create().await;
    let first = spawn_on(db.clone(), None, |c| c.audit_enabled = true).await;
    let id = first.create_draft("alice", "Durable").await;
    first.add("alice", &id, "bob", "editor").await;
    first.append("alice", &id, "before restart").await;
    first.pass("alice", &id, "bob").await;
    first.shutdown().await.unwrap();

    let second = spawn_on(db.clone(), None, |_| {}).await;
    let draft = second.get("bob", &format!("/v1/collab/drafts/{id}")).await;
    assert_eq!(draft.status, 200);
    assert_eq!(draft.body["seq"], 3);
    assert_eq!(draft.body["ring_holder"], "bob");
    assert_eq!(
        draft.body["collaborators"],
        json!([{ "user_id": "alice", "role": "owner" }, { "user_id": "bob", "role": "editor" }])
    );
    let segments = second
        .get("bob", &format!("/v1/collab/drafts/{id}/segments"))
        .await;
    assert_eq!(segments.body["items"][0]["content"], "before restart");
    assert_eq!(second.audit_rows().await.len(), 4);

    let (mut ws, ready) = second.ws("bob", &id, Some(1)).await;
    assert_eq!(ready["seq"], 3);
    assert_eq!(ws.next_seqs(2).await, [2, 3]);
    assert_eq!(
        second.append("bob", &id, "after restart").await.body["seq"],
        4
    );
    assert_eq!(ws.next_seqs(1).await, [4]);
}

#[tokio::test]
async fn postgres_unreachable_means_503s_and_no_partial_rows_until_it_returns() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(server_addr()).await;
    let app = spawn_on(db.clone(), Some(proxy.addr), |c| {
        c.database_connect_timeout_seconds = 1;
        c.database_query_timeout_seconds = 2;
        c.audit_enabled = true;
    })
    .await;
    let id = app.create_draft("alice", "Fragile").await;
    assert_eq!(app.append("alice", &id, "kept").await.status, 201);

    proxy.cut();
    let append = app.append("alice", &id, "lost").await;
    assert_eq!((append.status, append.code()), (503, "unavailable"));
    let create = app
        .post("alice", "/v1/collab/drafts", json!({ "title": "x" }))
        .await;
    assert_eq!(create.code(), "unavailable");
    let read = app.get("alice", &format!("/v1/collab/drafts/{id}")).await;
    assert_eq!(read.code(), "unavailable");
    let ready = read_reply(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(ready.status, 503);
    // Nothing of the failed requests reached the database.
    assert_eq!(db.count("drafts").await, 1);
    assert_eq!(db.count("segments").await, 1);
    assert_eq!(db.count("events").await, 1);

    proxy.restore();
    eventually(|| async { app.append("alice", &id, "after").await.status == 201 }).await;
    let events = app
        .get("alice", &format!("/v1/collab/drafts/{id}/events"))
        .await;
    assert_eq!(seqs_of(&events), [1, 2]);
    let ready = read_reply(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(ready.status, 200);
}

#[tokio::test]
async fn three_replicas_migrating_at_once_apply_each_migration_once() {
    let db = TestDb::create().await;
    let settings = PoolSettings {
        url: db.url(),
        max_size: 2,
        connect_timeout: Duration::from_secs(5),
    };
    let runs = (0..3).map(|_| {
        let settings = settings.clone();
        tokio::spawn(async move { migrate(&pool(&settings).unwrap()).await.unwrap() })
    });
    let applied: Vec<Vec<i32>> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied.iter().filter(|a| **a == all).count(), 1);
    assert_eq!(applied.iter().filter(|a| a.is_empty()).count(), 2);
    assert_eq!(db.count("schema_migrations").await, all.len() as i64);
}

/// A migrated schema whose migration records `tamper` then changes, and
/// what migrating it again says.
async fn migrate_after(tamper: &str) -> (Arc<TestDb>, Result<Vec<i32>, MigrateError>) {
    let db = TestDb::create().await;
    let settings = PoolSettings {
        url: db.url(),
        max_size: 1,
        connect_timeout: Duration::from_secs(5),
    };
    let pool = pool(&settings).unwrap();
    migrate(&pool).await.unwrap();
    db.client().await.execute(tamper, &[]).await.unwrap();
    let again = migrate(&pool).await;
    (db, again)
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let (db, again) = migrate_after(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, '0999_future', 'x')",
    )
    .await;
    match again {
        Err(MigrateError::SchemaNewer { database: 999, .. }) => {}
        other => panic!("expected SchemaNewer, got {other:?}"),
    }

    // The binary says so in one line and does not start.
    // Async: the test's own runtime must keep serving its pool meanwhile.
    let output = tokio::process::Command::from(collabd_command())
        .env("DATABASE_URL", db.url())
        .env("PORT", "0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("newer than this binary"), "{stderr}");
}

#[tokio::test]
async fn an_edited_migration_is_refused_by_its_checksum() {
    // As if 0001 had been applied from a different text than this binary's.
    let (_db, again) = migrate_after(
        "UPDATE schema_migrations SET checksum = '0000000000000000' WHERE version = 1",
    )
    .await;
    match again {
        Err(MigrateError::Edited {
            version: 1,
            applied,
            ..
        }) => assert_eq!(applied, "0000000000000000"),
        other => panic!("expected Edited, got {other:?}"),
    }
}

#[tokio::test]
async fn collabd_migrate_applies_the_schema_and_is_idempotent() {
    let db = TestDb::create().await;
    for expected in ["[1]", "[]"] {
        let output = tokio::process::Command::from(collabd_command())
            .args(["migrate"])
            .env("DATABASE_URL", db.url())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("migrations applied: {expected}")),
            "{stdout}"
        );
    }
    assert_eq!(db.count("drafts").await, 0);
}

#[tokio::test]
async fn a_failed_audit_write_is_counted_and_does_not_fail_the_request() {
    let db = TestDb::create().await;
    let app = spawn_on(db.clone(), None, |c| c.audit_enabled = true).await;
    let id = app.create_draft("alice", "Audited").await;
    assert_eq!(app.state.collab.audit_failures(), 0);
    db.client()
        .await
        .batch_execute("ALTER TABLE audit_events RENAME TO audit_events_away")
        .await
        .unwrap();
    assert_eq!(app.append("alice", &id, "still works").await.status, 201);
    assert_eq!(app.state.collab.audit_failures(), 1);
    assert_eq!(db.count("segments").await, 1);
}
