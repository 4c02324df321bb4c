//! The public HTTP surface: one router for the REST API, the WebSocket
//! upgrade and the health probes, and the middleware every request passes
//! (request id and span, access log, rate limit, body limit).

pub mod extract;
pub mod management;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use tracing::Instrument;
use uuid::Uuid;

use crate::app::AppState;
use crate::collab::http as collab;
use crate::error::{Error, ErrorCode, REQUEST_ID};
use crate::limits::client_ip::client_ip;
use crate::limits::http::rate_limit;
use crate::realtime::ws;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_CHARS: usize = 128;

/// Where the request came from, for audit rows and rate-limit keys.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

/// Builds the public router. Tests and `app::run` both call this.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route(
            "/v1/collab/drafts",
            get(collab::list_drafts).post(collab::create_draft),
        )
        .route("/v1/collab/drafts/{id}", get(collab::get_draft))
        .route(
            "/v1/collab/drafts/{id}/segments",
            get(collab::list_segments).post(collab::append_segment),
        )
        .route("/v1/collab/drafts/{id}/ring/pass", post(collab::pass_ring))
        .route(
            "/v1/collab/drafts/{id}/collaborators",
            post(collab::add_collaborator),
        )
        .route("/v1/collab/drafts/{id}/events", get(collab::list_events))
        .route("/v1/collab/drafts/{id}/ws", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::NotFound("no such route".into())
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

/// Liveness: the process answers.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: not draining, and the store answers.
pub(crate) async fn readyz(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, Error> {
    state.ready().await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// A client's `X-Request-Id` is kept when it is a sane token: 1-128
/// characters of `[A-Za-z0-9._:-]`. Anything else is replaced, so logs and
/// headers never carry what a client smuggled in.
fn request_id_from(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_CHARS
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

/// Gives each request its id, client info and span, echoes the id, and logs
/// one line when the response is ready.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request_id_from(&req);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let ip = client_ip(peer, req.headers(), &state.config.trusted_proxies.0);
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(256).collect());
    req.extensions_mut().insert(ClientInfo { ip, user_agent });
    let method = req.method().clone();
    let in_flight = state.metrics.http_in_flight().clone();
    in_flight.increment(1.0);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        request_id = %request_id,
        method = %method,
        route = %route,
        user_id = tracing::field::Empty,
        draft_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::link(&span, &crate::telemetry::HeaderCarrier(req.headers()));
    let mut response = REQUEST_ID
        .scope(request_id.clone(), next.run(req).instrument(span.clone()))
        .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    in_flight.decrement(1.0);
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    state.metrics.http_request(
        method.as_str(),
        &route,
        status,
        started.elapsed().as_secs_f64(),
    );
    let error_code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    let latency_us = started.elapsed().as_micros() as u64;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_us, error_code, "request failed");
        } else if method == Method::GET && (route == "/healthz" || route == "/readyz") {
            tracing::debug!(status, latency_us, error_code, "probe answered");
        } else {
            tracing::info!(status, latency_us, error_code, "request completed");
        }
    });
    response
}
