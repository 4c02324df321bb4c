//! A stand-in OpenTelemetry collector: accepts OTLP/HTTP protobuf on
//! `/v1/traces` and keeps every span it is sent, as a real one would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// One span as the collector received it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub kind: SpanKind,
    /// Lowercase hex, as in a `traceparent` header.
    pub trace_id: String,
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
            name: span.name,
            trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
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
