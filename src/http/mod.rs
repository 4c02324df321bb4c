//! The HTTP edge every public request passes: its id, span and client
//! address (`request`), the one access line that logs it (here), the error
//! envelope (`response`), the extractors that turn malformed input into that
//! envelope (`extract`), the probes, and the management listener.
//!
//! Features bring their own routes (`collab::http::router`,
//! `realtime::ws::router`); `app.rs` puts them behind this middleware.

pub mod body;
pub mod cors;
pub mod extract;
pub mod management;
pub mod openapi;
pub mod request;
pub mod response;
pub mod server;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use tracing::Instrument;

use self::request::{request_id_of, ClientInfo, REQUEST_ID, REQUEST_ID_HEADER};
use self::response::ErrorCause;
use crate::error::Error;
use crate::limits::client_ip::Trusted;
use crate::telemetry::Metrics;

/// What the probes and `/metrics` ask of the running server (`app.rs`
/// answers). Declared here, by its consumer.
#[async_trait]
pub trait Health: Clone + Send + Sync + 'static {
    /// Readiness: not draining, and the store answers.
    async fn ready(&self) -> Result<(), Error>;
    /// The Prometheus text, with the scrape-time figures brought up to date.
    async fn metrics_text(&self) -> String;
}

/// What the request-context middleware needs.
#[derive(Clone)]
pub struct RequestContext {
    /// Which peers' `X-Forwarded-For` is believed.
    pub trusted: Arc<Trusted>,
    pub metrics: Metrics,
}

/// Liveness and readiness on the public port (the management listener has
/// its own copies).
pub fn probes<S, H>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    H: Health + FromRef<S>,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<H>))
}

pub async fn not_found() -> Error {
    Error::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

/// The probes as OpenAPI.
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz_doc))]
pub struct ProbesApi;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "The process runs", body = serde_json::Value, example = json!({"status": "ok"}))))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: not draining, and the store answers. (Documented through
/// `readyz_doc`: the path macro takes no generic handler.)
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = serde_json::Value, example = json!({"status": "ready"})),
        (status = 503, description = "Draining, or the store does not answer", body = response::ErrorEnvelope),
    ))]
#[allow(dead_code)]
fn readyz_doc() {}

/// Readiness: not draining, and the store answers.
pub(crate) async fn readyz<H: Health>(
    State(health): State<H>,
) -> Result<Json<serde_json::Value>, Error> {
    health.ready().await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// Gives each request its id, client info and span, echoes the id, and logs
/// one line when the response is ready.
pub async fn request_context(
    State(context): State<RequestContext>,
    mut req: Request,
    next: Next,
) -> Response {
    let request_id = request_id_of(&req);
    let client = ClientInfo::from_request(&req, &*context.trusted);
    req.extensions_mut().insert(client);
    let log = AccessLog::start(&req, &request_id, context.metrics);
    let mut response = REQUEST_ID
        .scope(
            request_id.clone(),
            next.run(req).instrument(log.span.clone()),
        )
        .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    log.finish(&response);
    response
}

/// One request from arrival to its access line: its span, the in-flight
/// gauge, and the RED metrics.
struct AccessLog {
    started: Instant,
    method: Method,
    route: String,
    span: tracing::Span,
    metrics: Metrics,
}

impl AccessLog {
    fn start(req: &Request, request_id: &str, metrics: Metrics) -> Self {
        let method = req.method().clone();
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "unmatched".to_owned());
        // `method` and `route` for the log lines; the OpenTelemetry semantic
        // conventions' names for the trace.
        let span = tracing::info_span!(
            "http",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            request_id = %request_id,
            method = %method,
            route = %route,
            http.request.method = %method,
            http.route = %route,
            user_id = tracing::field::Empty,
            draft_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        crate::telemetry::link(&span, &crate::telemetry::HeaderCarrier(req.headers()));
        metrics.http_in_flight().increment(1.0);
        AccessLog {
            started: Instant::now(),
            method,
            route,
            span,
            metrics,
        }
    }

    /// The request's one log line: its status, latency and, for a failure,
    /// the error code and (for a server error) the cause.
    fn finish(self, response: &Response) {
        self.metrics.http_in_flight().decrement(1.0);
        let status = response.status().as_u16();
        self.span.record("http.response.status_code", status);
        let elapsed = self.started.elapsed();
        self.metrics.http_request(
            self.method.as_str(),
            &self.route,
            status,
            elapsed.as_secs_f64(),
        );
        let error = response.extensions().get::<ErrorCause>();
        let error_code = error.map(|e| e.code);
        if status >= 500 {
            // A server error marks the span as failed, with what failed.
            self.span.record("otel.status_code", "ERROR");
            self.span
                .record("error.type", error_code.unwrap_or("_OTHER"));
        }
        let cause = error.and_then(|e| e.cause.as_deref());
        let latency_us = elapsed.as_micros() as u64;
        let probe =
            self.method == Method::GET && matches!(self.route.as_str(), "/healthz" | "/readyz");
        self.span.in_scope(|| match status {
            500.. if status != 503 => {
                tracing::error!(
                    status,
                    latency_us,
                    error_code,
                    error.message = cause,
                    "request failed"
                )
            }
            500.. => {
                tracing::warn!(
                    status,
                    latency_us,
                    error_code,
                    error.message = cause,
                    "request failed"
                )
            }
            _ if probe => tracing::debug!(status, latency_us, error_code, "probe answered"),
            _ => tracing::info!(status, latency_us, error_code, "request completed"),
        });
    }
}
