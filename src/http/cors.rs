//! CORS for browser pages on other origins (`CORS_ALLOWED_ORIGINS`): exact
//! origins only. A preflight from one of them is answered with the methods
//! and headers the API uses; the headers a client needs to read
//! (`X-Request-Id`, `Retry-After`, the rate-limit pair) are exposed. Any
//! other origin gets no `Access-Control-Allow-Origin`, so its browser
//! refuses the answer.
//!
//! Kept apart from `WS_ALLOWED_ORIGINS`: that list defaults to `*` (a socket
//! carries its bearer token, no ambient credentials), while CORS should
//! name the app's origins. A browser app sets both to the same origins.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::request::REQUEST_ID_HEADER;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The layer for these origins, or None when CORS is off (no origins).
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                HeaderName::from_static(REQUEST_ID_HEADER),
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}
