//! A stand-in OpenTelemetry collector: accepts OTLP/HTTP protobuf on
//! `/v1/traces` and keeps every span it is sent, as a real one would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
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
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

pub struct Collector {
    pub addr: SocketAddr,
    spans: Spans,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Spans::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            addr,
            spans,
            server,
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let received = request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|span| ReceivedSpan {
            kind: span.kind(),
            trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
            attributes: span
                .attributes
                .iter()
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(text) => Some((kv.key.clone(), text.clone())),
                    _ => None,
                })
                .collect(),
            failed: span
                .status
                .as_ref()
                .is_some_and(|status| status.code() == StatusCode::Error),
            name: span.name,
        });
    spans.lock().unwrap().extend(received);
    // An empty ExportTraceServiceResponse: everything accepted.
    Vec::new()
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
