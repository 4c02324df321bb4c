//! REST handlers for drafts: parse, call the service, shape the response.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::model::{Actor, Role};
use super::validate::{self, Page};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{current_request_id, Error};
use crate::http::extract::{ApiJson, ApiQuery, DraftId};
use crate::http::ClientInfo;

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
pub struct CreateDraft {
    title: String,
}

pub async fn create_draft(
    State(state): State<AppState>,
    user: AuthUser,
    Extension(client): Extension<ClientInfo>,
    ApiJson(body): ApiJson<CreateDraft>,
) -> Result<Response, Error> {
    let draft = state
        .collab
        .create_draft(&actor(user, &client), &body.title)
        .await?;
    Ok((StatusCode::CREATED, Json(draft)).into_response())
}

pub async fn list_drafts(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<serde_json::Value>, Error> {
    Ok(items(state.collab.list_drafts(&user.0).await?))
}

pub async fn get_draft(
    State(state): State<AppState>,
    user: AuthUser,
    DraftId(id): DraftId,
) -> Result<Response, Error> {
    let draft = state.collab.draft_for(&user.0, id).await?;
    Ok(Json(draft).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    after: Option<u64>,
    limit: Option<u32>,
}

pub async fn list_segments(
    State(state): State<AppState>,
    user: AuthUser,
    DraftId(id): DraftId,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<serde_json::Value>, Error> {
    let page = Page::new(params.after, params.limit)?;
    Ok(items(state.collab.segments(&user.0, id, page).await?))
}

pub async fn list_events(
    State(state): State<AppState>,
    user: AuthUser,
    DraftId(id): DraftId,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<serde_json::Value>, Error> {
    let page = Page::new(params.after, params.limit)?;
    Ok(items(state.collab.events(&user.0, id, page).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendSegment {
    content: String,
    idempotency_key: Option<String>,
}

/// 201 with the new segment, or 200 with the original on a replay.
pub async fn append_segment(
    State(state): State<AppState>,
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
    let key = validate::pick_idempotency_key(body.idempotency_key, header_key)?;
    let appended = state
        .collab
        .append(&actor(user, &client), id, &body.content, key.as_deref())
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
pub struct PassRing {
    to_user_id: String,
}

pub async fn pass_ring(
    State(state): State<AppState>,
    user: AuthUser,
    DraftId(id): DraftId,
    Extension(client): Extension<ClientInfo>,
    ApiJson(body): ApiJson<PassRing>,
) -> Result<Response, Error> {
    let draft = state
        .collab
        .pass_ring(&actor(user, &client), id, &body.to_user_id)
        .await?;
    Ok(Json(draft).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddCollaborator {
    user_id: String,
    role: Role,
}

/// 201 with the draft when the collaborator was added, 200 when they already were.
pub async fn add_collaborator(
    State(state): State<AppState>,
    user: AuthUser,
    DraftId(id): DraftId,
    Extension(client): Extension<ClientInfo>,
    ApiJson(body): ApiJson<AddCollaborator>,
) -> Result<Response, Error> {
    let (draft, added) = state
        .collab
        .add_collaborator(&actor(user, &client), id, &body.user_id, body.role)
        .await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(draft)).into_response())
}
