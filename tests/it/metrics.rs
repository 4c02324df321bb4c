//! Observability as an operator meets it: /metrics only on the management
//! listener, exact counter deltas after known traffic, real histogram
//! buckets, bounded series under hostile paths, the documented catalog equal
//! to the live one, promtool's approval, and the state gauges.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::logfields;
use crate::common::*;
use collabd::telemetry::metrics::CATALOG;

/// `series → value` for every sample line of an exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_live_on_the_management_port_only() {
    let app = spawn_app(Kind::Memory).await;
    let public = read_reply(app.http.get(app.url("/metrics")).send().await.unwrap()).await;
    assert_eq!((public.status, public.code()), (404, "not_found"));
    let text = app.scrape().await;
    assert!(text.contains("# TYPE http_requests_total counter"));
    let probe = app
        .http
        .get(format!("http://{}/readyz", app.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
}

#[tokio::test]
async fn a_metrics_token_guards_the_scrape() {
    let app = spawn_with(Kind::Memory, |c| {
        c.metrics_auth_token = Some("scrape-me".into())
    })
    .await;
    let url = format!("http://{}/metrics", app.metrics_addr);
    let without = read_reply(app.http.get(&url).send().await.unwrap()).await;
    assert_eq!((without.status, without.code()), (401, "unauthorized"));
    // The envelope names the request, as on the public port: the id made
    // for it, or the caller's.
    let made = without.body["error"]["request_id"].as_str().unwrap();
    assert_eq!(without.headers["x-request-id"], made);
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
    let named = app
        .http
        .get(&url)
        .header("x-request-id", "scrape-42")
        .send()
        .await
        .unwrap();
    let named = read_reply(named).await;
    assert_eq!(named.body["error"]["request_id"], "scrape-42");
    let with = app
        .http
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
}

#[tokio::test]
async fn known_traffic_moves_the_counters_by_exactly_that_much() {
    let app = spawn_with(Kind::Memory, |c| {
        c.rate_limit_enabled = true;
        c.rate_limit_burst_mutation = 1;
        c.rate_limit_per_minute_mutation = 1;
        c.max_segments_per_draft = Some(1);
    })
    .await;
    let before = app.scrape().await;

    let id = app.create_draft("alice", "Counted").await;
    app.add("alice", &id, "bob", "editor").await;
    app.append("alice", &id, "one").await;
    app.append("alice", &id, "two").await;
    app.pass("alice", &id, "bob").await;
    // Each route has a mutation burst of 1 (two at once): the third append
    // is refused, whatever the other routes spent.
    let refused = app.append("alice", &id, "three").await;
    assert_eq!(refused.status, 429);
    app.get(
        "alice",
        &format!("/v1/collab/drafts/{}", uuid::Uuid::new_v4()),
    )
    .await;
    // A forged token, refused once (the rate limit hands its verdict on).
    let forged = app
        .http
        .get(app.url("/v1/collab/drafts"))
        .header("authorization", "Bearer forged.token.value")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let (mut ws, _) = app.ws("alice", &id, Some(0)).await;
    ws.next_seqs(4).await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    ws.next_json().await;
    ws.close().await;

    eventually(|| async {
        let text = app.scrape().await;
        series_value(&text, "ws_disconnects_total{reason=\"client_closed\"}") == 1.0
    })
    .await;
    let after = app.scrape().await;
    let delta = |series: &str| series_value(&after, series) - series_value(&before, series);
    let drafts = "/v1/collab/drafts";
    let segments = "/v1/collab/drafts/{id}/segments";
    assert_eq!(
        delta(&format!(
            "http_requests_total{{method=\"POST\",route=\"{drafts}\",status=\"201\"}}"
        )),
        1.0
    );
    assert_eq!(
        delta(&format!(
            "http_requests_total{{method=\"POST\",route=\"{segments}\",status=\"201\"}}"
        )),
        2.0
    );
    assert_eq!(
        delta(&format!(
            "http_requests_total{{method=\"POST\",route=\"{segments}\",status=\"429\"}}"
        )),
        1.0
    );
    assert_eq!(
        delta(
            "http_requests_total{method=\"GET\",route=\"/v1/collab/drafts/{id}\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(&format!(
            "http_request_duration_seconds_count{{method=\"POST\",route=\"{segments}\"}}"
        )),
        3.0
    );
    assert_eq!(delta("collab_mutations_total{type=\"create_draft\"}"), 1.0);
    assert_eq!(
        delta("collab_mutations_total{type=\"add_collaborator\"}"),
        1.0
    );
    assert_eq!(
        delta("collab_mutations_total{type=\"append_segment\"}"),
        2.0
    );
    assert_eq!(delta("collab_mutations_total{type=\"pass_ring\"}"), 1.0);
    assert_eq!(delta("ratelimit_block_total{scope=\"mutation\"}"), 1.0);
    assert_eq!(
        delta("soft_cap_exceeded_total{cap=\"max_segments_per_draft\"}"),
        1.0
    );
    // Seven requests (one refused with 429) and one socket verified a
    // token: each counted once, by whatever settled it.
    assert_eq!(delta("auth_success_total"), 8.0);
    assert_eq!(delta("auth_failures_total{reason=\"malformed\"}"), 1.0);
    assert_eq!(delta("auth_failures_total{reason=\"signature\"}"), 0.0);
    assert_eq!(delta("ws_connections_total"), 1.0);
    assert_eq!(delta("ws_messages_sent_total{event_type=\"ready\"}"), 1.0);
    assert_eq!(
        delta("ws_messages_sent_total{event_type=\"segment_appended\"}"),
        2.0
    );
    assert_eq!(delta("ws_messages_sent_total{event_type=\"pong\"}"), 1.0);
    assert_eq!(delta("ws_messages_received_total"), 1.0);
    assert_eq!(series_value(&after, "ws_active_connections"), 0.0);
    assert_eq!(delta("ws_connection_duration_seconds_count"), 1.0);
    // Histograms are real histograms with the documented buckets.
    assert!(after.contains(&format!("http_request_duration_seconds_bucket{{method=\"POST\",route=\"{segments}\",le=\"0.0005\"}}")));
    assert!(after.contains(&format!("http_request_duration_seconds_bucket{{method=\"POST\",route=\"{segments}\",le=\"+Inf\"}} 3")));
    assert!(after.contains("# TYPE http_request_duration_seconds histogram"));
    assert_eq!(
        series_value(&after, "health_status{component=\"process\"}"),
        1.0
    );
    assert_eq!(
        series_value(&after, "health_status{component=\"store\"}"),
        1.0
    );
    assert!(series_value(&after, "process_resident_memory_bytes") > 0.0);
    assert!(after.contains("collabd_build_info{version=\""));
    // Built from a checkout: the revision is its commit, not "unknown".
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(head) = head {
        assert!(
            after.contains(&format!("revision=\"{head}\"")),
            "collabd_build_info does not name {head}"
        );
    }
}

/// Sends `n` requests with random methods, paths, ids and query strings.
async fn hostile_traffic(app: &TestApp, seed: u64, n: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
    ];
    for i in 0..n {
        let path = match i % 4 {
            0 => format!("/v1/collab/drafts/{}", uuid::Uuid::new_v4()),
            1 => format!("/random/{}/{}", rng.u64(..), rng.alphanumeric()),
            2 => format!(
                "/v1/collab/drafts/{}/segments?after={}",
                rng.u32(..),
                rng.u32(..)
            ),
            _ => format!("/{}", "x".repeat(rng.usize(1..50))),
        };
        let method = methods[rng.usize(0..methods.len())].clone();
        let _ = app
            .http
            .request(method, app.url(&path))
            .bearer_auth(app.token("alice"))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn thousands_of_random_paths_and_ids_keep_the_series_bounded() {
    let app = spawn_app(Kind::Memory).await;
    hostile_traffic(&app, 7, 1000).await;
    let first = samples(&app.scrape().await).len();
    // A few (method, route, status) combinations, each a counter and a histogram.
    assert!(first < 400, "{first} series after 1000 random requests");
    // A thousand more, all new paths and ids: not one new series.
    hostile_traffic(&app, 8, 1000).await;
    let second = samples(&app.scrape().await).len();
    assert_eq!(second, first, "series grew from {first} to {second}");
}

#[tokio::test]
async fn the_documented_catalog_is_the_code_catalog_and_covers_live_names() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    let coded: BTreeSet<String> = CATALOG.iter().map(|d| d.name.to_owned()).collect();
    assert_eq!(
        documented, coded,
        "docs/METRICS.md and src/telemetry/metrics.rs disagree"
    );
    // Each row's type and labels are the code's too.
    let rows: BTreeSet<(String, String, String)> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let labels = match cells[3] {
                "-" => String::new(),
                listed => listed.replace('`', ""),
            };
            (
                cells[1].trim_matches('`').to_owned(),
                cells[2].to_owned(),
                labels,
            )
        })
        .collect();
    let coded_rows: BTreeSet<(String, String, String)> = CATALOG
        .iter()
        .map(|d| {
            (
                d.name.to_owned(),
                d.kind.as_str().to_owned(),
                d.labels.join(", "),
            )
        })
        .collect();
    let drift: Vec<_> = rows.symmetric_difference(&coded_rows).collect();
    assert!(
        drift.is_empty(),
        "docs/METRICS.md rows whose type or labels differ from the code: {drift:?}"
    );
    for kind in [Kind::Memory, Kind::Postgres, Kind::Cluster] {
        let app = spawn_app(kind).await;
        app.create_draft("alice", "Named").await;
        let live = family_names(&app.scrape().await);
        let undocumented: Vec<_> = live.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "{kind:?}: live but undocumented: {undocumented:?}"
        );
    }
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let app = spawn_app(Kind::Postgres).await;
    let id = app.create_draft("alice", "Linted").await;
    app.append("alice", &id, "x").await;
    let text = app.scrape().await;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool: {report}");
    assert!(
        report.trim().is_empty(),
        "promtool found problems: {report}"
    );
}

#[tokio::test]
async fn the_state_gauges_report_the_store() {
    let app = spawn_with(Kind::Postgres, |c| {
        c.state_metrics_interval_seconds = 1;
        c.audit_enabled = true;
        c.database_pool_size = 7;
    })
    .await;
    let id = app.create_draft("alice", "Polled").await;
    app.create_draft("alice", "Polled too").await;
    app.append("alice", &id, "x").await;
    eventually(|| async {
        let text = app.scrape().await;
        series_value(&text, "collab_drafts") == 2.0 && series_value(&text, "collab_segments") == 1.0
    })
    .await;
    // The pool's ceiling beside what it uses, read at scrape time.
    let text = app.scrape().await;
    assert_eq!(series_value(&text, "db_pool_max_size"), 7.0);
    assert!(series_value(&text, "db_pool_size") <= 7.0);
}

/// docs/OBSERVABILITY.md's log fields are the ones the source writes: none
/// named that no event or span has, none written that the table misses.
/// (The JSON lines of live requests are checked against the same table in
/// `cluster::a_request_on_one_replica_and_its_delivery_on_another_share_a_trace`.)
#[test]
fn the_documented_log_fields_are_the_code_fields() {
    let documented = logfields::documented();
    let mut written = logfields::written();
    written.extend(logfields::LINE_KEYS.iter().map(|k| k.to_string()));
    assert!(
        written.len() > 40 && written.contains("request_id") && written.contains("error.type"),
        "the source scan found too little: {written:?}"
    );
    let undocumented: Vec<_> = written.difference(&documented).collect();
    let unwritten: Vec<_> = documented.difference(&written).collect();
    assert!(
        undocumented.is_empty() && unwritten.is_empty(),
        "written but not in docs/OBSERVABILITY.md: {undocumented:?}; \
         documented but never written: {unwritten:?}"
    );
}
