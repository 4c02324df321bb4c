//! REST handlers for drafts: parse every field into its type, call the
//! service, shape the response. The feature's routes are its `router()`.

use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use super::input::{DraftTitle, IdempotencyKey, SegmentContent, UserId};
use super::model::{Actor, Collaborator, Draft, Event, EventBody, Role, Segment};
use super::service::CollabService;
use crate::auth::{AuthUser, Authenticator};
use crate::error::Error;
use crate::http::extract::{ApiJson, ApiQuery, DraftId};
use crate::http::request::{current_request_id, ClientInfo};
use crate::http::response::ErrorEnvelope;
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

/// The drafts API as OpenAPI: every route below, its bodies and answers.
#[derive(OpenApi)]
#[openapi(
    paths(
        create_draft,
        list_drafts,
        get_draft,
        list_segments,
        append_segment,
        pass_ring,
        add_collaborator,
        list_events
    ),
    components(schemas(
        Draft,
        Segment,
        Event,
        EventBody,
        Collaborator,
        Role,
        ErrorEnvelope,
        CreateDraft,
        AppendSegment,
        PassRing,
        AddCollaborator
    ))
)]
pub struct CollabApi;

/// A list answer: `{"items": [...]}`, in ascending seq (or join) order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

fn items<T>(items: Vec<T>) -> Json<Items<T>> {
    Json(Items { items })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDraft {
    /// 1-200 characters once trimmed, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    title: String,
}

/// Create a draft; the caller becomes its owner and holds the ring.
#[utoipa::path(post, path = "/v1/collab/drafts", tag = "drafts",
    request_body = CreateDraft,
    responses(
        (status = 201, description = "The new draft", body = Draft),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
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

/// The drafts the caller collaborates on, oldest first.
#[utoipa::path(get, path = "/v1/collab/drafts", tag = "drafts",
    responses(
        (status = 200, description = "The caller's drafts", body = Items<Draft>),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
async fn list_drafts(
    State(collab): State<CollabService>,
    user: AuthUser,
) -> Result<Json<Items<Draft>>, Error> {
    Ok(items(collab.list_drafts(&user.0).await?))
}

/// One draft, for any of its collaborators.
#[utoipa::path(get, path = "/v1/collab/drafts/{id}", tag = "drafts",
    params(("id" = uuid::Uuid, Path, description = "The draft's id")),
    responses(
        (status = 200, description = "The draft", body = Draft),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
async fn get_draft(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
) -> Result<Response, Error> {
    let draft = collab.draft_for(&user.0, id).await?;
    Ok(Json(draft).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// Only what comes after this seq (exclusive); default 0.
    #[param(maximum = 9223372036854775807_u64)]
    after: Option<u64>,
    /// 1-1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The draft's segments in seq order, paged.
#[utoipa::path(get, path = "/v1/collab/drafts/{id}/segments", tag = "drafts",
    params(("id" = uuid::Uuid, Path, description = "The draft's id"), PageParams),
    responses(
        (status = 200, description = "A page of segments", body = Items<Segment>),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
async fn list_segments(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Items<Segment>>, Error> {
    let page = Page::new(params.after, params.limit)?;
    Ok(items(collab.segments(&user.0, id, page).await?))
}

/// The draft's event log in seq order, paged: what a client reads to fill
/// a gap or to catch up without a socket.
#[utoipa::path(get, path = "/v1/collab/drafts/{id}/events", tag = "drafts",
    params(("id" = uuid::Uuid, Path, description = "The draft's id"), PageParams),
    responses(
        (status = 200, description = "A page of events", body = Items<Event>),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
async fn list_events(
    State(collab): State<CollabService>,
    user: AuthUser,
    DraftId(id): DraftId,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Items<Event>>, Error> {
    let page = Page::new(params.after, params.limit)?;
    Ok(items(collab.events(&user.0, id, page).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AppendSegment {
    /// 1-10,000 characters, any but NUL, kept exactly.
    #[schema(min_length = 1, max_length = 10000)]
    content: String,
    /// 1-128 printable ASCII characters; a retry with the same key returns
    /// the original. May come in the `Idempotency-Key` header instead.
    #[schema(pattern = "^[!-~]{1,128}$")]
    idempotency_key: Option<String>,
}

/// Append a segment (the ring holder only): 201 with the new segment, or 200
/// with the original when the idempotency key was already used.
#[utoipa::path(post, path = "/v1/collab/drafts/{id}/segments", tag = "drafts",
    params(
        ("id" = uuid::Uuid, Path, description = "The draft's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same as idempotency_key in the body; both must agree"),
    ),
    request_body = AppendSegment,
    responses(
        (status = 201, description = "Appended", body = Segment),
        (status = 200, description = "A replay: the original segment", body = Segment),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PassRing {
    /// An editor or the owner of the draft.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,128}$")]
    to_user_id: String,
}

/// Pass the ring (the holder, or the owner) to an editor or the owner.
#[utoipa::path(post, path = "/v1/collab/drafts/{id}/ring/pass", tag = "drafts",
    params(("id" = uuid::Uuid, Path, description = "The draft's id")),
    request_body = PassRing,
    responses(
        (status = 200, description = "The draft, with its new ring holder", body = Draft),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddCollaborator {
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,128}$")]
    user_id: String,
    /// `editor` or `viewer`.
    role: Role,
}

/// Add a collaborator (the owner only): 201 with the draft when added, 200
/// when they already had that role.
#[utoipa::path(post, path = "/v1/collab/drafts/{id}/collaborators", tag = "drafts",
    params(("id" = uuid::Uuid, Path, description = "The draft's id")),
    request_body = AddCollaborator,
    responses(
        (status = 201, description = "Added", body = Draft),
        (status = 200, description = "Already a collaborator with that role", body = Draft),
        (status = "4XX", description = "Refused: see the code", body = ErrorEnvelope),
        (status = "5XX", description = "Unavailable or internal", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
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
