//! The error contract: one enum whose variants are the stable codes of the
//! error envelope `{"error": {"code", "message", "request_id"}}`. Each
//! variant names its status; `http::response` renders the envelope.
//!
//! Internal causes (`Unavailable`, `Internal`) are never sent: the client
//! gets a fixed message and the request id to quote, and the access log
//! records the cause once.

use axum::http::StatusCode;

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
    /// 408 `request_timeout`: the body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
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

impl Error {
    /// Every code an envelope may carry, for the API documents.
    pub const CODES: [&'static str; 12] = [
        "validation_error",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "request_timeout",
        "ring_required",
        "limit_exceeded",
        "payload_too_large",
        "rate_limited",
        "unavailable",
        "internal",
    ];

    /// The one way a missing draft is reported, wherever it is noticed.
    pub fn draft_not_found() -> Self {
        Error::NotFound("draft not found".into())
    }

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
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
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
            Error::RequestTimeout(_) => "request_timeout",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::RateLimited(_) => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// What went wrong inside, for the log: set for server errors only.
    pub fn cause(&self) -> Option<&str> {
        match self {
            Error::Unavailable(cause) | Error::Internal(cause) => Some(cause),
            _ => None,
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

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once() {
        let every = [
            Error::Validation(String::new()),
            Error::Unauthorized(""),
            Error::Forbidden(String::new()),
            Error::NotFound(String::new()),
            Error::MethodNotAllowed,
            Error::RequestTimeout(String::new()),
            Error::RingRequired,
            Error::LimitExceeded(String::new()),
            Error::PayloadTooLarge(String::new()),
            Error::RateLimited(1),
            Error::Unavailable(String::new()),
            Error::Internal(String::new()),
        ];
        let codes: Vec<&str> = every.iter().map(Error::code).collect();
        assert_eq!(codes, Error::CODES);
    }
}
