//! The management listener (`METRICS_ADDR`, 127.0.0.1:9090 by default):
//! `/metrics` in Prometheus text format, and the liveness and readiness
//! probes. Never served on the public port, so business figures do not leak.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{healthz, readyz};
use crate::app::AppState;
use crate::error::Error;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { Error::NotFound("no such route".into()) })
        .with_state(state)
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.config.metrics_auth_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(expected.as_str()) {
            return Error::Unauthorized("metrics need the METRICS_AUTH_TOKEN bearer token")
                .into_response();
        }
    }
    state.collect_metrics().await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
