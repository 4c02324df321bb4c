//! The management listener (`METRICS_ADDR`, 127.0.0.1:9090 by default):
//! `/metrics` in Prometheus text format, and the liveness and readiness
//! probes. Never served on the public port, so business figures do not leak.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::request::{current_request_id, request_id_of, REQUEST_ID, REQUEST_ID_HEADER};
use super::response::ErrorCause;
use super::{healthz, readyz, Health};
use crate::error::Error;

#[derive(Clone)]
struct Management<H> {
    health: H,
    /// `METRICS_AUTH_TOKEN`: when set, /metrics needs it as a bearer token.
    token: Option<Arc<str>>,
}

pub fn router<H: Health>(health: H, token: Option<String>) -> Router {
    let state = Management {
        health: health.clone(),
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/metrics", get(metrics::<H>))
        .with_state(state)
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz::<H>))
                .with_state(health),
        )
        .fallback(super::not_found)
        .layer(axum::middleware::map_response(log_failure))
        .layer(axum::middleware::from_fn(request_id))
}

/// Each request gets an id as on the public port (a sane `X-Request-Id`
/// kept, else a new one), echoed in the header and named by its error
/// envelope and its failure line.
async fn request_id(req: Request, next: Next) -> Response {
    let id = request_id_of(&req);
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The management port has no access log (probes and scrapes would flood
/// it); a server error here, a pod going unready, is logged once, here.
async fn log_failure(response: Response) -> Response {
    let status = response.status();
    if status.is_server_error() {
        let error = response.extensions().get::<ErrorCause>();
        tracing::warn!(
            request_id = %current_request_id(),
            status = status.as_u16(),
            error_code = error.map(|e| e.code),
            error.message = error.and_then(|e| e.cause.as_deref()),
            "management request failed"
        );
    }
    response
}

async fn metrics<H: Health>(State(m): State<Management<H>>, headers: HeaderMap) -> Response {
    if let Some(expected) = &m.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(&**expected) {
            return Error::Unauthorized("metrics need the METRICS_AUTH_TOKEN bearer token")
                .into_response();
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.health.metrics_text().await,
    )
        .into_response()
}
