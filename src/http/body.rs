//! Request bodies, read whole at the edge, before any handler waits on
//! them. A declared `Content-Length` over `MAX_BODY_BYTES` is refused at
//! once with 413, before a byte of the body is read; a body that has not
//! arrived `HTTP_BODY_TIMEOUT_SECONDS` after its head is refused with 408
//! (a client cannot hold a connection by trickling it or by declaring more
//! than it sends). Handlers get the body buffered. Bodies here are small
//! JSON documents, so buffering costs nothing a handler would not spend.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::Error;

/// What the body middleware enforces.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Middleware: refuses a body that is too large or too slow, and hands the
/// rest of the stack the body in one piece.
pub async fn read_whole(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    match buffered(req, limits).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn buffered(req: Request, limits: BodyLimits) -> Result<Request, Error> {
    let too_large = || {
        Error::PayloadTooLarge(format!(
            "request body exceeds MAX_BODY_BYTES ({} bytes)",
            limits.max_bytes
        ))
    };
    if declared_length(&req).is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(too_large());
    }
    if req.body().is_end_stream() {
        // No body at all (a GET, a WebSocket upgrade): nothing to wait for.
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, limits.max_bytes).collect();
    match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => Err(Error::RequestTimeout(format!(
            "request body not received within HTTP_BODY_TIMEOUT_SECONDS ({} s)",
            limits.timeout.as_secs()
        ))),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(Error::Validation(
            "request body is malformed or incomplete".into(),
        )),
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
    }
}

/// The `Content-Length` the client declared, if it is a number.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
