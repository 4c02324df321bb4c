//! Every metric collabd exports, named once here: Prometheus naming (base
//! units in the name, `_total` for counters), fixed label sets with bounded
//! values, real histograms with explicit buckets. `CATALOG` is the list
//! `docs/METRICS.md` must match (a test compares them).
//!
//! Each `AppState` owns its own recorder (no global one), so several servers
//! in one test process never mix their figures.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// What a metric is, for `docs/METRICS.md` and the HELP lines.
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

macro_rules! catalog {
    ($($id:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(pub const $id: &str = $name;)*
        pub const CATALOG: &[MetricDef] = &[
            $(MetricDef { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

catalog! {
    HTTP_REQUESTS = "http_requests_total", Counter, ["method", "route", "status"],
        "HTTP requests answered, by method, matched route pattern and status.";
    HTTP_DURATION = "http_request_duration_seconds", Histogram, ["method", "route"],
        "Time from request to response head, by method and route pattern.";
    HTTP_IN_FLIGHT = "http_requests_in_flight", Gauge, [],
        "HTTP requests being served now.";
    WS_CONNECTIONS = "ws_connections_total", Counter, [],
        "WebSocket upgrades accepted.";
    WS_ACTIVE = "ws_active_connections", Gauge, [],
        "WebSocket sessions open on this replica.";
    WS_SENT = "ws_messages_sent_total", Counter, ["event_type"],
        "Frames sent to clients: events by type, and ready, pong and error frames.";
    WS_RECEIVED = "ws_messages_received_total", Counter, [],
        "Messages received from clients.";
    WS_DURATION = "ws_connection_duration_seconds", Histogram, [],
        "How long WebSocket sessions lasted.";
    WS_DISCONNECTS = "ws_disconnects_total", Counter, ["reason"],
        "Sessions ended, by reason: client_closed, shutdown, slow_consumer, ws_limit, payload_too_large, bad_message, forbidden, rate_limited, unavailable, idle_timeout.";
    WS_INBOUND_REFUSED = "ws_inbound_rate_limited_total", Counter, [],
        "Client frames dropped by the per-socket inbound limit (WS_INBOUND_PER_SECOND, WS_INBOUND_BURST).";
    WS_QUEUE_DEPTH = "ws_outbound_queue_depth", Histogram, [],
        "Frames waiting in a socket's outbound queue when another is added.";
    WS_DROPPED = "ws_outbound_dropped_total", Counter, [],
        "Frames not queued because the socket's queue was full (the socket is then closed).";
    COLLAB_MUTATIONS = "collab_mutations_total", Counter, ["type"],
        "Committed mutations: create_draft, append_segment, pass_ring, add_collaborator.";
    RATELIMIT_BLOCKS = "ratelimit_block_total", Counter, ["scope"],
        "Requests refused with 429, by policy: read or mutation.";
    RATELIMIT_FALLBACK = "ratelimit_fallback_total", Counter, ["mode"],
        "Rate-limit decisions made by RATE_LIMIT_FAIL_MODE because the shared limiter failed.";
    AUTH_SUCCESS = "auth_success_total", Counter, [],
        "Bearer tokens verified (once per request or socket).";
    AUTH_FAILURES = "auth_failures_total", Counter, ["reason"],
        "Bearer tokens refused, by reason: missing, not_bearer, malformed, expired, not_yet_valid, signature, issuer, audience, algorithm, unknown_key, missing_claim, subject.";
    WS_LIMIT_REJECTIONS = "ws_limit_rejections_total", Counter, ["scope"],
        "Sockets refused by a cap: user, draft or global.";
    SOFT_CAP_EXCEEDED = "soft_cap_exceeded_total", Counter, ["cap"],
        "Requests that went past a soft cap (and succeeded).";
    ACTIVE_ROOMS = "drafts_active_rooms", Gauge, [],
        "Drafts with at least one open socket (cluster-wide in cluster mode).";
    DB_QUERY_DURATION = "db_query_duration_seconds", Histogram, ["query"],
        "Time spent in one store operation against Postgres, by operation.";
    DB_POOL_WAIT = "db_pool_wait_duration_seconds", Histogram, [],
        "Time spent waiting for a pooled Postgres connection.";
    DB_POOL_SIZE = "db_pool_size", Gauge, [],
        "Postgres connections open in this replica's pool.";
    DB_POOL_MAX = "db_pool_max_size", Gauge, [],
        "Postgres connections this replica's pool may open (DATABASE_POOL_SIZE).";
    DB_POOL_IN_USE = "db_pool_in_use", Gauge, [],
        "Postgres connections lent out now.";
    DB_POOL_WAITING = "db_pool_waiting", Gauge, [],
        "Requests waiting for a Postgres connection now.";
    REDIS_DURATION = "redis_command_duration_seconds", Histogram, ["op"],
        "Time spent in one Redis command or script, by operation.";
    FANOUT_PUBLISH = "fanout_publish_total", Counter, ["result"],
        "Events published to other replicas: ok or error.";
    FANOUT_LAG = "fanout_lag_seconds", Histogram, [],
        "From an event's commit to its arrival in this replica's room.";
    CHANNEL_DROPPED = "channel_dropped_messages_total", Counter, ["channel"],
        "Events dropped on the way to a room because a buffer was full (the room refills them from the store): room_queue (a room's queue) or pubsub_reader (the pub/sub reader fell behind the Redis client's buffer).";
    FANOUT_RECONNECTS = "fanout_reconnects_total", Counter, [],
        "Times the pub/sub subscriber reconnected (on a Redis Cluster, node reconnects that arrive together count once).";
    FANOUT_CATCHUPS = "fanout_catchups_total", Counter, ["cause"],
        "Rooms that read events from the store because the fanout had not brought them (lost, or still on the way): head_check or join.";
    AUDIT_FAILURES = "audit_write_failures_total", Counter, [],
        "Audit rows that could not be written.";
    HEALTH = "health_status", Gauge, ["component"],
        "1 when a component is healthy, 0 when not: process, store, redis.";
    BUILD_INFO = "collabd_build_info", Gauge, ["version", "revision"],
        "Always 1; the labels name the build.";
    STATE_DRAFTS = "collab_drafts", Gauge, [],
        "Drafts stored (reported by one replica at a time).";
    STATE_SEGMENTS = "collab_segments", Gauge, [],
        "Segments stored (reported by one replica at a time).";
    STATE_AUDIT_ROWS = "audit_rows", Gauge, [],
        "Audit rows stored, estimated on Postgres (reported by one replica at a time).";
    PROCESS_RSS = "process_resident_memory_bytes", Gauge, [],
        "Resident memory of the process.";
    PROCESS_CPU = "process_cpu_seconds_total", Counter, [],
        "User and system CPU time of the process.";
    PROCESS_FDS = "process_open_fds", Gauge, [],
        "Open file descriptors.";
    PROCESS_MAX_FDS = "process_max_fds", Gauge, [],
        "The file descriptor limit.";
    PROCESS_START = "process_start_time_seconds", Gauge, [],
        "When the process started, in seconds since the Unix epoch.";
}

/// How often histogram samples are folded into their buckets. Samples wait
/// in memory until then, 16 bytes each (the value and an instant): at 25,000
/// deliveries a second that is ~400 KB held for at most this long, instead
/// of growing until a scrape.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Bucket bounds, in the unit of the metric's name.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SESSION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
];
const DEPTH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Known label values, registered at start so every series exists from zero.
/// The reasons are `auth::Refusal`'s (a test there holds the two together).
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "missing",
    "not_bearer",
    "malformed",
    "expired",
    "not_yet_valid",
    "signature",
    "issuer",
    "audience",
    "algorithm",
    "unknown_key",
    "missing_claim",
    "subject",
];
const DISCONNECT_REASONS: &[&str] = &[
    "client_closed",
    "shutdown",
    "slow_consumer",
    "ws_limit",
    "payload_too_large",
    "bad_message",
    "forbidden",
    "rate_limited",
    "unavailable",
    "idle_timeout",
];
const MUTATION_TYPES: &[&str] = &[
    "create_draft",
    "append_segment",
    "pass_ring",
    "add_collaborator",
];
const EVENT_TYPES: &[&str] = &[
    "segment_appended",
    "ring_passed",
    "collaborator_added",
    "ready",
    "pong",
    "error",
];

/// HTTP methods outside this set are counted as `other`, to bound cardinality.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

struct Inner {
    /// When every counter was zero.
    started: std::time::SystemTime,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    http_in_flight: Gauge,
    ws_connections: Counter,
    ws_active: Gauge,
    ws_received: Counter,
    ws_duration: Histogram,
    ws_queue_depth: Histogram,
    ws_dropped: Counter,
    ws_inbound_refused: Counter,
    fanout_lag: Histogram,
    fanout_reconnects: Counter,
    audit_failures: Counter,
    db_pool_wait: Histogram,
}

/// This replica's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new();
        for def in CATALOG.iter().filter(|d| d.kind == Kind::Histogram) {
            let buckets = match def.name {
                WS_DURATION => SESSION_BUCKETS,
                WS_QUEUE_DEPTH => DEPTH_BUCKETS,
                _ => LATENCY_BUCKETS,
            };
            builder = builder
                .set_buckets_for_metric(Matcher::Full(def.name.to_owned()), buckets)
                .expect("bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        for def in CATALOG {
            let help = metrics::SharedString::const_str(def.help);
            let name = metrics::KeyName::from_const_str(def.name);
            match def.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        let plain = |name: &'static str| Key::from_static_name(name);
        let inner = Inner {
            started: std::time::SystemTime::now(),
            http_in_flight: recorder.register_gauge(&plain(HTTP_IN_FLIGHT), &METADATA),
            ws_connections: recorder.register_counter(&plain(WS_CONNECTIONS), &METADATA),
            ws_active: recorder.register_gauge(&plain(WS_ACTIVE), &METADATA),
            ws_received: recorder.register_counter(&plain(WS_RECEIVED), &METADATA),
            ws_duration: recorder.register_histogram(&plain(WS_DURATION), &METADATA),
            ws_queue_depth: recorder.register_histogram(&plain(WS_QUEUE_DEPTH), &METADATA),
            ws_dropped: recorder.register_counter(&plain(WS_DROPPED), &METADATA),
            ws_inbound_refused: recorder.register_counter(&plain(WS_INBOUND_REFUSED), &METADATA),
            fanout_lag: recorder.register_histogram(&plain(FANOUT_LAG), &METADATA),
            fanout_reconnects: recorder.register_counter(&plain(FANOUT_RECONNECTS), &METADATA),
            audit_failures: recorder.register_counter(&plain(AUDIT_FAILURES), &METADATA),
            db_pool_wait: recorder.register_histogram(&plain(DB_POOL_WAIT), &METADATA),
            recorder,
            handle,
        };
        let metrics = Metrics {
            inner: Arc::new(inner),
        };
        metrics.zero_known_series();
        metrics
            .gauge(
                BUILD_INFO,
                vec![
                    Label::new("version", env!("CARGO_PKG_VERSION")),
                    Label::new(
                        "revision",
                        option_env!("COLLABD_REVISION").unwrap_or("unknown"),
                    ),
                ],
            )
            .set(1.0);
        metrics.health("process", true);
        metrics
    }

    fn zero_known_series(&self) {
        self.counter(AUTH_SUCCESS, vec![]).increment(0);
        for reason in AUTH_FAILURE_REASONS {
            self.labeled_counter(AUTH_FAILURES, "reason", reason)
                .increment(0);
        }
        for reason in DISCONNECT_REASONS {
            self.labeled_counter(WS_DISCONNECTS, "reason", reason)
                .increment(0);
        }
        for kind in MUTATION_TYPES {
            self.labeled_counter(COLLAB_MUTATIONS, "type", kind)
                .increment(0);
        }
        for kind in EVENT_TYPES {
            self.labeled_counter(WS_SENT, "event_type", kind)
                .increment(0);
        }
        for scope in ["read", "mutation"] {
            self.labeled_counter(RATELIMIT_BLOCKS, "scope", scope)
                .increment(0);
        }
        for scope in ["user", "draft", "global"] {
            self.labeled_counter(WS_LIMIT_REJECTIONS, "scope", scope)
                .increment(0);
        }
        self.labeled_counter(SOFT_CAP_EXCEEDED, "cap", "max_segments_per_draft")
            .increment(0);
        for result in ["ok", "error"] {
            self.labeled_counter(FANOUT_PUBLISH, "result", result)
                .increment(0);
        }
        for channel in ["room_queue", "pubsub_reader"] {
            self.labeled_counter(CHANNEL_DROPPED, "channel", channel)
                .increment(0);
        }
        for cause in ["head_check", "join"] {
            self.labeled_counter(FANOUT_CATCHUPS, "cause", cause)
                .increment(0);
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.inner
            .recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.inner
            .recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    fn labeled_counter(
        &self,
        name: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> Counter {
        self.counter(name, vec![Label::new(label, value)])
    }

    /// When these metrics started counting from zero.
    pub fn started(&self) -> std::time::SystemTime {
        self.inner.started
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = self.inner.handle.render();
        // The recorder's counters are whole numbers; CPU time is not, so
        // this one series is written here, read at scrape time.
        if let Some(p) = super::process::sample() {
            let help = CATALOG
                .iter()
                .find(|d| d.name == PROCESS_CPU)
                .map(|d| d.help)
                .unwrap_or_default();
            text.push_str(&format!(
                "# HELP {PROCESS_CPU} {help}\n# TYPE {PROCESS_CPU} counter\n{PROCESS_CPU} {}\n",
                p.cpu_seconds
            ));
        }
        text
    }

    /// Moves recorded histogram samples into their buckets. The exporter
    /// keeps every sample in memory until this runs (16 bytes each, one per
    /// delivery, request and query), so it must run on a timer
    /// (`UPKEEP_INTERVAL`, driven by `app.rs`), not only when someone scrapes.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// One HTTP request answered. `route` is the matched pattern or "unmatched".
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.counter(
            HTTP_REQUESTS,
            vec![
                Label::new("method", method),
                Label::new("route", route.to_owned()),
                Label::new("status", status.to_string()),
            ],
        )
        .increment(1);
        self.histogram(
            HTTP_DURATION,
            vec![
                Label::new("method", method),
                Label::new("route", route.to_owned()),
            ],
        )
        .record(seconds);
    }

    pub fn http_in_flight(&self) -> &Gauge {
        &self.inner.http_in_flight
    }

    pub fn ws_opened(&self) {
        self.inner.ws_connections.increment(1);
        self.inner.ws_active.increment(1.0);
    }

    pub fn ws_closed(&self, reason: &'static str, seconds: f64) {
        self.inner.ws_active.decrement(1.0);
        self.inner.ws_duration.record(seconds);
        self.labeled_counter(WS_DISCONNECTS, "reason", reason)
            .increment(1);
    }

    pub fn ws_sent(&self, event_type: &'static str) {
        self.labeled_counter(WS_SENT, "event_type", event_type)
            .increment(1);
    }

    pub fn ws_received(&self) {
        self.inner.ws_received.increment(1);
    }

    pub fn ws_inbound_refused(&self) {
        self.inner.ws_inbound_refused.increment(1);
    }

    pub fn ws_queue_depth(&self, depth: usize) {
        self.inner.ws_queue_depth.record(depth as f64);
    }

    pub fn ws_dropped(&self) {
        self.inner.ws_dropped.increment(1);
    }

    pub fn auth_succeeded(&self) {
        self.counter(AUTH_SUCCESS, vec![]).increment(1);
    }

    pub fn auth_refused(&self, reason: &'static str) {
        self.labeled_counter(AUTH_FAILURES, "reason", reason)
            .increment(1);
    }

    pub fn ws_limit_rejected(&self, scope: &'static str) {
        self.labeled_counter(WS_LIMIT_REJECTIONS, "scope", scope)
            .increment(1);
    }

    pub fn mutation(&self, kind: &'static str) {
        self.labeled_counter(COLLAB_MUTATIONS, "type", kind)
            .increment(1);
    }

    pub fn rate_limited(&self, scope: &'static str) {
        self.labeled_counter(RATELIMIT_BLOCKS, "scope", scope)
            .increment(1);
    }

    pub fn rate_limit_fallback(&self, mode: &'static str) {
        self.labeled_counter(RATELIMIT_FALLBACK, "mode", mode)
            .increment(1);
    }

    pub fn soft_cap_exceeded(&self, cap: &'static str) {
        self.labeled_counter(SOFT_CAP_EXCEEDED, "cap", cap)
            .increment(1);
    }

    pub fn active_rooms(&self, rooms: u64) {
        self.gauge(ACTIVE_ROOMS, vec![]).set(rooms as f64);
    }

    pub fn db_query(&self, query: &'static str, seconds: f64) {
        self.histogram(DB_QUERY_DURATION, vec![Label::new("query", query)])
            .record(seconds);
    }

    pub fn db_pool_wait(&self, seconds: f64) {
        self.inner.db_pool_wait.record(seconds);
    }

    pub fn db_pool(&self, max_size: usize, size: usize, in_use: usize, waiting: usize) {
        self.gauge(DB_POOL_MAX, vec![]).set(max_size as f64);
        self.gauge(DB_POOL_SIZE, vec![]).set(size as f64);
        self.gauge(DB_POOL_IN_USE, vec![]).set(in_use as f64);
        self.gauge(DB_POOL_WAITING, vec![]).set(waiting as f64);
    }

    pub fn redis_command(&self, op: &'static str, seconds: f64) {
        self.histogram(REDIS_DURATION, vec![Label::new("op", op)])
            .record(seconds);
    }

    pub fn fanout_published(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.labeled_counter(FANOUT_PUBLISH, "result", result)
            .increment(1);
    }

    pub fn fanout_lag(&self, seconds: f64) {
        self.inner.fanout_lag.record(seconds.max(0.0));
    }

    /// A room found events in the store that the fanout had not brought.
    pub fn fanout_catchup(&self, cause: &'static str) {
        self.labeled_counter(FANOUT_CATCHUPS, "cause", cause)
            .increment(1);
    }

    /// Events a full buffer turned away on their way to rooms.
    pub fn channel_dropped(&self, channel: &'static str, events: u64) {
        self.labeled_counter(CHANNEL_DROPPED, "channel", channel)
            .increment(events);
    }

    pub fn fanout_reconnected(&self) {
        self.inner.fanout_reconnects.increment(1);
    }

    pub fn audit_failed(&self) {
        self.inner.audit_failures.increment(1);
    }

    pub fn health(&self, component: &'static str, healthy: bool) {
        self.gauge(HEALTH, vec![Label::new("component", component)])
            .set(if healthy { 1.0 } else { 0.0 });
    }

    /// Stored-state gauges; zeros when another replica reports them.
    pub fn state(&self, drafts: u64, segments: u64, audit_rows: u64) {
        self.gauge(STATE_DRAFTS, vec![]).set(drafts as f64);
        self.gauge(STATE_SEGMENTS, vec![]).set(segments as f64);
        self.gauge(STATE_AUDIT_ROWS, vec![]).set(audit_rows as f64);
    }

    /// Process figures, read from /proc on Linux (elsewhere: nothing); CPU
    /// time is written by `render` itself.
    pub fn process(&self) {
        if let Some(p) = super::process::sample() {
            self.gauge(PROCESS_RSS, vec![]).set(p.rss_bytes as f64);
            self.gauge(PROCESS_FDS, vec![]).set(p.open_fds as f64);
            self.gauge(PROCESS_MAX_FDS, vec![]).set(p.max_fds as f64);
            self.gauge(PROCESS_START, vec![]).set(p.start_time_seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for def in CATALOG {
            match def.kind {
                Kind::Counter => assert!(def.name.ends_with("_total"), "{}", def.name),
                _ => assert!(!def.name.ends_with("_total"), "{}", def.name),
            }
            assert!(
                def.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                def.name
            );
        }
    }

    #[test]
    fn known_series_start_at_zero_and_histograms_have_buckets() {
        let metrics = Metrics::new();
        metrics.http_request("GET", "/healthz", 200, 0.003);
        let text = metrics.render();
        assert!(
            text.contains("ws_disconnects_total{reason=\"slow_consumer\"} 0"),
            "{text}"
        );
        assert!(text.contains("http_request_duration_seconds_bucket{method=\"GET\",route=\"/healthz\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("collabd_build_info{"), "{text}");
        assert!(
            text.contains("# TYPE http_requests_total counter"),
            "{text}"
        );
    }
}
