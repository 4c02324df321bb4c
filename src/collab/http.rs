//! REST handlers for drafts: parse every field into its type, call the
//! service, shape the response. The feature's routes are its `router()`.

use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::input::{DraftTitle, IdempotencyKey, SegmentContent, UserId};
use super::model::{Actor, Role};
use super::service::CollabService;
use crate::auth::{AuthUser, Authenticator};
use crate::error::Error;
use crate::http::extract::{ApiJson, ApiQuery, DraftId};
use crate::http::request::{current_request_id, ClientInfo};
use crate::ports::Page;

/// The draft routes, for any state that can hand out the service and the
/// token checker.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    CollabService: FromRef<S>,
    Authenticator: FromRef<S>,
{
    Router::new()
        .route("/v1/collab/drafts", get(list_drafts).post(create_draft))
        .route("/v1/collab/drafts/{id}", get(get_draft))
        .route(
            "/v1/collab/drafts/{id}/segments",
            get(list_segments).post(append_segment),
        )
        .route("/v1/collab/drafts/{id}/ring/pass", post(pass_ring))
        .route(
            "/v1/collab/drafts/{id}/collaborators",
            post(add_collaborator),
        )
        .route("/v1/collab/drafts/{id}/events", get(list_events))
}

fn actor(user: AuthUser, client: &ClientInfo) -> Actor {
    Actor {
        user_id: user.0,
        request_id: current_request_id(),
        ip: Some(client.ip.to_string()),
        user_agent: client.user_agent.clone(),
    }
}

fn items<T: serde::Serialize>(items: Vec<T>) -> Json<serde_json::Value> {
    Json(json!({ "items": items }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDraft {
    title: String,
}

async fn create_draft(
    State(collab): State<CollabService>,
    user: AuthUser,
    Extension(client): Extension<ClientInfo>,
    ApiJson(body): ApiJson<CreateDraft>,
) -> Result<Response, Error> {
    let title = DraftTitle::parse(&body.title)?;
    let draft = collab.create_draft(&actor(user, &client), title).await?;
    Ok((StatusCode::CREATED, Json(draft)).into_response())
}

async fn list_drafts(
    State(collab): State<CollabService>,
    user: AuthUser,
) -> Result<Json<serde_json::Value>, Error> {
    Ok(items(collab.list_drafts(&user.0).await?))
}

async fn get_draft(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
) -> Result<Response, Error> {
    let draft = collab.draft_for(&user.0, id).await?;
    Ok(Json(draft).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    after: Option<u64>,
    limit: Option<u32>,
}

async fn list_segments(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<serde_json::Value>, Error> {
    let page = Page::new(params.after, params.limit)?;
    Ok(items(collab.segments(&user.0, id, page).await?))
}

async fn list_events(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<serde_json::Value>, Error> {
    let page = Page::new(params.after, params.limit)?;
    Ok(items(collab.events(&user.0, id, page).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendSegment {
    content: String,
    idempotency_key: Option<String>,
}

/// 201 with the new segment, or 200 with the original on a replay.
async fn append_segment(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
    Extension(client): Extension<ClientInfo>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AppendSegment>,
) -> Result<Response, Error> {
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::Validation("Idempotency-Key must be ASCII".into()))?
                .to_owned(),
        ),
    };
    let key = IdempotencyKey::pick(body.idempotency_key, header_key)?;
    let content = SegmentContent::parse(body.content)?;
    let appended = collab
        .append(&actor(user, &client), id, content, key)
        .await?;
    let status = if appended.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(appended.segment)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PassRing {
    to_user_id: String,
}

async fn pass_ring(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
    Extension(client): Extension<ClientInfo>,
    ApiJson(body): ApiJson<PassRing>,
) -> Result<Response, Error> {
    let to = UserId::parse(body.to_user_id)?;
    let draft = collab.pass_ring(&actor(user, &client), id, &to).await?;
    Ok(Json(draft).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddCollaborator {
    user_id: String,
    role: Role,
}

/// 201 with the draft when the collaborator was added, 200 when they already were.
async fn add_collaborator(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
    Extension(client): Extension<ClientInfo>,
    ApiJson(body): ApiJson<AddCollaborator>,
) -> Result<Response, Error> {
    let collaborator = UserId::parse(body.user_id)?;
    let (draft, added) = collab
        .add_collaborator(&actor(user, &client), id, &collaborator, body.role)
        .await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(draft)).into_response())
}
