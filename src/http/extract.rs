//! Extractors that turn every malformed input into the error envelope:
//! axum's own rejections are plain text, ours are `validation_error` or
//! `payload_too_large`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::{AuthUser, Authenticator};
use crate::error::Error;
use crate::text::truncate_chars;

/// A JSON body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(rejection: JsonRejection) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Error::PayloadTooLarge("request body exceeds MAX_BODY_BYTES".into());
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            Error::Validation("expected Content-Type: application/json".into())
        }
        JsonRejection::JsonSyntaxError(_) => Error::Validation("body is not valid JSON".into()),
        JsonRejection::JsonDataError(e) => Error::Validation(clip(&e.body_text())),
        other => Error::Validation(clip(&other.body_text())),
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(Error::Validation(clip(&rejection.body_text()))),
        }
    }
}

/// The `:id` of a draft route, which must be a UUID. Recorded on the request span.
pub struct DraftId(pub Uuid);

impl<S> FromRequestParts<S> for DraftId
where
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::Validation("draft id is missing".into()))?;
        let id = Uuid::parse_str(&raw)
            .map_err(|_| Error::Validation("draft id must be a UUID".into()))?;
        tracing::Span::current().record("draft_id", tracing::field::display(id));
        Ok(DraftId(id))
    }
}

/// serde's messages can quote the input; keep them short.
fn clip(text: &str) -> String {
    const MAX: usize = 300;
    let kept = truncate_chars(text, MAX);
    if kept.len() < text.len() {
        format!("{kept}…")
    } else {
        kept.to_owned()
    }
}

/// The authenticated caller: reused when the rate-limit middleware verified
/// the token already, else verified here. Recorded on the request span.
impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser(
            Authenticator::from_ref(state)
                .settle_request(&parts.extensions, &parts.headers)
                .await?,
        );
        tracing::Span::current().record("user_id", user.0.as_str());
        Ok(user)
    }
}
