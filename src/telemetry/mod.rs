//! Logs and traces. Logs: pretty lines in dev, JSON lines in prod, filtered
//! by LOG_LEVEL; span fields (`request_id`, `user_id`, `draft_id`,
//! `connection_id`, and `trace_id`/`span_id` when tracing is on) ride on every
//! line logged inside the span. Traces: OpenTelemetry, off by default, on
//! with `OTEL_ENABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP over HTTP) or
//! `OTEL_TRACES_EXPORTER=console`; the batch exporter runs on its own thread,
//! so an unreachable collector never blocks a request.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod json;
pub mod metrics;
pub mod process;

pub use self::metrics::Metrics;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Compact human-readable lines, coloured on a terminal.
    Pretty,
}

/// Where finished spans go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Exporter {
    /// OTLP over HTTP to a collector.
    #[default]
    Otlp,
    /// Printed on stdout, for a look without a collector.
    Console,
    /// Nowhere: tracing off whatever else is set.
    None,
}

/// Which traces are kept: the OpenTelemetry samplers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sampling {
    AlwaysOn,
    AlwaysOff,
    Ratio,
    /// Follow the caller's decision; sample every root (the default).
    #[default]
    ParentAlwaysOn,
    ParentAlwaysOff,
    ParentRatio,
}

/// Where spans go.
#[derive(Clone, Debug, Default)]
pub struct TraceSettings {
    pub enabled: bool,
    /// OTLP/HTTP base URL (`/v1/traces` is appended); default http://localhost:4318.
    pub otlp_endpoint: Option<String>,
    /// Set explicitly, or left to the default (OTLP).
    pub exporter: Option<Exporter>,
    pub service_name: String,
    pub sampling: Sampling,
    /// The ratio of the ratio samplers, 0.0 to 1.0 (default 1.0).
    pub sampler_arg: Option<f64>,
}

impl TraceSettings {
    fn active(&self) -> bool {
        self.exporter != Some(Exporter::None)
            && (self.enabled
                || self.otlp_endpoint.is_some()
                || self.exporter == Some(Exporter::Console))
    }

    fn sampler(&self) -> Sampler {
        let ratio = self.sampler_arg.unwrap_or(1.0).clamp(0.0, 1.0);
        let parent = |root: Sampler| Sampler::ParentBased(Box::new(root));
        match self.sampling {
            Sampling::AlwaysOn => Sampler::AlwaysOn,
            Sampling::AlwaysOff => Sampler::AlwaysOff,
            Sampling::Ratio => Sampler::TraceIdRatioBased(ratio),
            Sampling::ParentAlwaysOn => parent(Sampler::AlwaysOn),
            Sampling::ParentAlwaysOff => parent(Sampler::AlwaysOff),
            Sampling::ParentRatio => parent(Sampler::TraceIdRatioBased(ratio)),
        }
    }
}

/// Flushes pending spans when the process ends.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: trace export did not finish: {e}");
            }
        }
    }
}

/// This process among the replicas, as OpenTelemetry's
/// `service.instance.id`: a random id made once per process, carried by its
/// spans and its pushed metrics alike.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

fn provider(settings: &TraceSettings) -> Result<SdkTracerProvider, String> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance_id(),
        ))
        .build();
    let builder = SdkTracerProvider::builder()
        .with_sampler(settings.sampler())
        .with_resource(resource);
    let builder = if settings.exporter == Some(Exporter::Console) {
        builder.with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
    } else {
        let base = settings
            .otlp_endpoint
            .clone()
            .unwrap_or_else(|| "http://localhost:4318".to_owned());
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        builder.with_batch_exporter(Reporting::new(exporter, base))
    };
    Ok(builder.build())
}

/// The OTLP exporter, saying when it cannot deliver: once when exports start
/// failing (naming the endpoint and the cause), once when they work again.
/// The SDK itself drops the spans without a word, so a wrong endpoint went
/// unnoticed.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    endpoint: String,
    failing: std::sync::atomic::AtomicBool,
}

impl<E> Reporting<E> {
    fn new(inner: E, endpoint: String) -> Self {
        Reporting {
            inner,
            endpoint,
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        use std::sync::atomic::Ordering::Relaxed;
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                error.message = %e,
                "traces cannot be exported; spans are dropped until the collector answers"
            ),
            Ok(()) if self.failing.swap(false, Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "trace export works again")
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource)
    }
}

/// Dependencies held at a level whatever `LOG_LEVEL` says. A filter of its
/// own on top of `LOG_LEVEL`'s, so no directive there (a more specific
/// target, a span name) can undo it: the exporter's HTTP client must not
/// trace (or log) itself; tokio_postgres prints every statement's parameters
/// at debug, and tungstenite every frame's payload at trace (segment
/// content, idempotency keys: never logged, at any level); tokio_postgres
/// prints the server's NOTICEs at info.
fn quiet_dependencies() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets([
            ("opentelemetry", LevelFilter::WARN),
            ("opentelemetry_sdk", LevelFilter::WARN),
            ("opentelemetry_otlp", LevelFilter::WARN),
            ("hyper", LevelFilter::WARN),
            ("hyper_util", LevelFilter::WARN),
            ("reqwest", LevelFilter::WARN),
            ("tokio_postgres", LevelFilter::WARN),
            ("tungstenite", LevelFilter::INFO),
            ("tokio_tungstenite", LevelFilter::INFO),
        ])
}

/// Installs the global subscriber (and the tracer, when tracing is on).
/// Call once, from `main`.
pub fn init(format: LogFormat, filter: &str, traces: &TraceSettings) -> TelemetryGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::FlatJson)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    let provider = if traces.active() {
        match provider(traces) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("warning: tracing disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(p.tracer("collabd"))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(quiet_dependencies())
        .with(fmt)
        .with(otel)
        .init();
    TelemetryGuard { provider }
}

/// Logging only, for tests and tools.
pub fn init_logging(format: LogFormat, filter: &str) {
    let _ = init(format, filter, &TraceSettings::default());
}

/// Adopts a remote parent (W3C trace context) for `span`, and records the
/// span's trace and span ids as fields so every log line inside carries them.
pub fn link(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_ids(span);
}

/// For a root span that outlives the span that started it (a WebSocket
/// session after its upgrade request): a trace of its own, linked to the
/// starter's, with its ids recorded as fields for the log lines inside.
pub fn link_to_current(span: &tracing::Span) {
    let starter = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone();
    if starter.is_valid() {
        span.add_link(starter);
    }
    record_ids(span);
}

/// A span for one round of periodic background work (a lease renewal, a
/// poll): its log lines name the job, and neither it nor anything inside it
/// is exported, since a trace per tick would drown the real ones. Its
/// parent is a remote context marked not sampled, which the parent-based
/// samplers (the default) follow.
pub fn untraced(job: &'static str) -> tracing::Span {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let span = tracing::info_span!("background", job);
    let unsampled = SpanContext::new(
        TraceId::from_bytes(fastrand::u128(1..).to_be_bytes()),
        SpanId::from_bytes(fastrand::u64(1..).to_be_bytes()),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(unsampled));
    span
}

/// Records a span's trace and span ids as its `trace_id` and `span_id`
/// fields (declared empty where the span is made), when tracing is on.
fn record_ids(span: &tracing::Span) {
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// Writes the current span's trace context into `carrier` (e.g. a pub/sub
/// message), so work it causes elsewhere joins the same trace.
pub fn inject(carrier: &mut dyn Injector) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, carrier));
}

/// Adapts HTTP headers to the propagator.
pub struct HeaderCarrier<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
