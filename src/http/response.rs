//! The error envelope on the wire. Rendering has no side effects: the cause
//! of a server error rides in a response extension to the access log, which
//! is the one place a failed request is logged.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::request::current_request_id;
use crate::error::Error;

/// What the access log needs to know of a failed request: its code, and the
/// cause of a server error (never sent to the client).
#[derive(Clone, Debug)]
pub struct ErrorCause {
    pub code: &'static str,
    pub cause: Option<String>,
}

/// `{"error": {"code", "message", "request_id"}}`: the body of every
/// non-2xx answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code; clients branch on it, never on the message.
    #[schema(schema_with = error_code_schema)]
    pub code: &'static str,
    /// For people; may change.
    pub message: String,
    /// The request's id, to quote when asking for help.
    pub request_id: String,
}

fn error_code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Error::CODES))
        .build()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code(),
                message: self.public_message(),
                request_id: current_request_id(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Error::RateLimited(retry_after) = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(retry_after),
            );
        }
        response.extensions_mut().insert(ErrorCause {
            code: self.code(),
            cause: self.cause().map(str::to_owned),
        });
        response
    }
}
