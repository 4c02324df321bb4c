//! A stand-in OpenTelemetry collector: accepts OTLP/HTTP protobuf on
//! `/v1/traces` and `/v1/metrics` and keeps every span and every metric
//! data point it is sent, as a real one would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

/// One span as the collector received it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub kind: SpanKind,
    /// Lowercase hex, as in a `traceparent` header.
    pub trace_id: String,
    /// The string-valued attributes.
    pub attributes: Vec<(String, String)>,
    /// The span's status says it failed.
    pub failed: bool,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        attribute(&self.attributes, key)
    }
}

/// One data point of one pushed metric.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    /// The pushing process's `service.instance.id`.
    pub instance: String,
    /// Which push it came in, counted from 0 across the collector.
    pub push: usize,
    pub metric: String,
    /// `sum` (and then monotonic), `gauge` or `histogram`.
    pub kind: &'static str,
    pub attributes: Vec<(String, String)>,
    /// The value; for a histogram, its count.
    pub value: f64,
    /// A histogram's bucket bounds.
    pub bounds: Vec<f64>,
}

impl ReceivedPoint {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        attribute(&self.attributes, key)
    }
}

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    points: Arc<Mutex<(usize, Vec<ReceivedPoint>)>>,
}

pub struct Collector {
    pub addr: SocketAddr,
    received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .route("/v1/metrics", post(receive_metrics))
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            addr,
            received,
            server,
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().unwrap().clone()
    }

    /// Every metric data point pushed so far.
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.received.points.lock().unwrap().1.clone()
    }
}

/// A string attribute's value, by key.
fn attribute<'a>(attributes: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn strings(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some((kv.key.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

async fn receive_metrics(State(received): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportMetricsServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut held = received.points.lock().unwrap();
    let push = held.0;
    held.0 += 1;
    for resource in request.resource_metrics {
        let resource_attributes = strings(&resource.resource.unwrap_or_default().attributes);
        let instance = resource_attributes
            .iter()
            .find(|(k, _)| k == "service.instance.id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
            let point = |kind, attributes: &[KeyValue], value, bounds| ReceivedPoint {
                instance: instance.clone(),
                push,
                metric: metric.name.clone(),
                kind,
                attributes: strings(attributes),
                value,
                bounds,
            };
            let number = |value: Option<number_data_point::Value>| match value {
                Some(number_data_point::Value::AsDouble(v)) => v,
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                None => f64::NAN,
            };
            match metric.data.as_ref() {
                Some(metric::Data::Sum(sum)) => held.1.extend(sum.data_points.iter().map(|p| {
                    let kind = if sum.is_monotonic { "sum" } else { "updown" };
                    point(kind, &p.attributes, number(p.value), Vec::new())
                })),
                Some(metric::Data::Gauge(gauge)) => held.1.extend(
                    gauge
                        .data_points
                        .iter()
                        .map(|p| point("gauge", &p.attributes, number(p.value), Vec::new())),
                ),
                Some(metric::Data::Histogram(histogram)) => {
                    held.1.extend(histogram.data_points.iter().map(|p| {
                        let counted: u64 = p.bucket_counts.iter().sum();
                        assert_eq!(counted, p.count, "buckets that do not add up: {p:?}");
                        point(
                            "histogram",
                            &p.attributes,
                            p.count as f64,
                            p.explicit_bounds.clone(),
                        )
                    }))
                }
                other => panic!("unexpected data in {}: {other:?}", metric.name),
            }
        }
    }
    // An empty ExportMetricsServiceResponse: everything accepted.
    Vec::new()
}

async fn receive(State(received): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let spans = request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|span| ReceivedSpan {
            kind: span.kind(),
            trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
            attributes: strings(&span.attributes),
            failed: span
                .status
                .as_ref()
                .is_some_and(|status| status.code() == StatusCode::Error),
            name: span.name,
        });
    received.spans.lock().unwrap().extend(spans);
    // An empty ExportTraceServiceResponse: everything accepted.
    Vec::new()
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
