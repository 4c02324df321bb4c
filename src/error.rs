//! The error contract. Every non-2xx response is built here, from one enum,
//! into one envelope: `{"error": {"code", "message", "request_id"}}`.
//!
//! Internal causes (`Unavailable`, `Internal`) are logged once, here, where the
//! response is made, and never sent: the client gets a fixed message and the
//! request id to quote.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

tokio::task_local! {
    /// The id of the request being served, set by the request-id middleware so
    /// that any error built below it can name the request.
    pub static REQUEST_ID: String;
}

/// The id of the request this task is serving, or "n/a" outside one.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "n/a".to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400 `validation_error`: malformed JSON, a missing or invalid field.
    #[error("{0}")]
    Validation(String),
    /// 401 `unauthorized`: missing, malformed, expired or wrongly signed token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403 `forbidden`: not a collaborator, or the role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`: unknown draft or unknown route.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 `ring_required`: an append by someone not holding the ring.
    #[error("you must hold the ring to append")]
    RingRequired,
    /// 409 `limit_exceeded`: a hard cap was reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// 413 `payload_too_large`: the body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429 `rate_limited`: the token bucket is empty; retry after this many seconds.
    #[error("rate limit exceeded, retry in {0} s")]
    RateLimited(u64),
    /// 503 `unavailable`: a backend is down, or the server is draining. The
    /// string is the cause, for the log only.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 500 `internal`: anything else. The string is the cause, for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Carried in the response extensions so the access log can name the code.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl Error {
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Error::Unavailable(cause.to_string())
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Error::Internal(cause.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Validation(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::RingRequired | Error::LimitExceeded(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation(_) => "validation_error",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::RingRequired => "ring_required",
            Error::LimitExceeded(_) => "limit_exceeded",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::RateLimited(_) => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The message a client may see: the detail for client errors, a fixed
    /// sentence for server errors.
    pub fn public_message(&self) -> String {
        match self {
            Error::Unavailable(_) => "service temporarily unavailable, retry later".to_owned(),
            Error::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let request_id = current_request_id();
        match &self {
            Error::Internal(cause) => {
                tracing::error!(error_code = self.code(), error.message = %cause, "request failed")
            }
            Error::Unavailable(cause) => {
                tracing::warn!(error_code = self.code(), error.message = %cause, "backend unavailable")
            }
            _ => {}
        }
        let body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.public_message(),
                "request_id": request_id,
            }
        });
        let mut response = (self.status(), Json(body)).into_response();
        if let Error::RateLimited(retry_after) = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(retry_after),
            );
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
