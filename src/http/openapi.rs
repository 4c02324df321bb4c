//! The OpenAPI 3.1 document of the public API, derived from the handlers
//! and wire types themselves (utoipa): each feature declares its part next
//! to its routes (`collab::http::CollabApi`, `realtime::ws::WsApi`, the
//! probes), and this module puts them together. Served at `GET
//! /openapi.json`, printed by `collabd openapi`, and committed as
//! docs/openapi.json; a test fails when the three differ.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

/// The document's frame: title, version, the bearer scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "collabd",
        description = "Real-time collaboration: drafts written together, one ring holder at a time, every change live over a WebSocket. The WebSocket frames are described in docs/asyncapi.yaml; the rules in docs/API.md."
    ),
    paths(document_route),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT: HS256 with a shared secret, or RS256/ES256 (and others) from the identity provider's JWKS; claims sub (the user id) and exp, iss and aud when configured",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::collab::http::CollabApi::openapi());
    doc.merge(crate::realtime::ws::WsApi::openapi());
    doc.merge(super::ProbesApi::openapi());
    doc
}

/// The document as pretty JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut text = document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        text.push('\n');
        text
    })
}

/// `GET /openapi.json`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/openapi.json", get(document_route))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")))]
async fn document_route() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
