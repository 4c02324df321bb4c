//! The machine-readable contract and the browser's view of it: the OpenAPI
//! document (served, printed by the binary and committed must agree, and
//! every route it names must exist), the AsyncAPI document held to the
//! frames the server really sends, and CORS for pages on other origins.

use std::collections::BTreeSet;

use crate::common::*;
use serde_json::{json, Value};

fn committed(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn the_served_printed_and_committed_openapi_documents_agree() {
    let app = spawn_app(Kind::Memory).await;
    let served = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = served.text().await.unwrap();
    let printed = crate::common::collabd_command()
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(served, printed);
    assert!(
        served == committed("docs/openapi.json"),
        "docs/openapi.json is stale: run `cargo run -q -- openapi > docs/openapi.json`"
    );
}

/// Every (method, path) the document names is a route of the server: none
/// answers `not_found` for the route or `method_not_allowed`.
#[tokio::test]
async fn every_documented_route_exists() {
    let app = spawn_app(Kind::Memory).await;
    let id = app.create_draft("alice", "Documented").await;
    let doc: Value = serde_json::from_str(&committed("docs/openapi.json")).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = app.url(&path.replace("{id}", &id));
            let request = match method.as_str() {
                "get" => app.http.get(url),
                "post" => app.http.post(url).json(&json!({})),
                "delete" => app.http.delete(url),
                other => panic!("a method the test does not know: {other}"),
            };
            let reply = read_reply(
                request
                    .bearer_auth(app.token("alice"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            let code = reply.body["error"]["code"].as_str().unwrap_or("");
            assert!(
                !(code == "not_found" && reply.body["error"]["message"] == "no such route")
                    && code != "method_not_allowed",
                "{method} {path}: {}",
                reply.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} routes in the document");
}

/// The AsyncAPI document against real frames: each frame the server sends
/// in a session (ready, every event type, pong, an error) has every field
/// its schema requires, no other, and a `type` (and `code`) the schema lists.
#[tokio::test]
async fn the_asyncapi_document_describes_the_frames_the_server_sends() {
    let doc: Value = serde_yaml::from_str(&committed("docs/asyncapi.yaml")).unwrap();
    let schemas = &doc["components"]["schemas"];
    let app = spawn_app(Kind::Memory).await;
    let id = app.create_draft("alice", "Framed").await;
    let (mut ws, ready) = app.ws("alice", &id, None).await;
    let mut frames = vec![("Ready", ready)];
    app.add("alice", &id, "bob", "editor").await;
    app.append("alice", &id, "one").await;
    app.pass("alice", &id, "bob").await;
    for _ in 0..3 {
        frames.push(("Event", ws.next_json().await));
    }
    ws.send_text(r#"{"type":"ping"}"#).await;
    frames.push(("Pong", ws.next_json().await));
    ws.send_text(r#"{"type":"nonsense"}"#).await;
    frames.push(("Error", ws.next_json().await));

    let mut event_types = BTreeSet::new();
    for (name, frame) in &frames {
        let schema = &schemas[*name];
        let keys: BTreeSet<&str> = frame
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let known: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(required.is_subset(&keys), "{name} lacks a field: {frame}");
        assert!(
            keys.is_subset(&known),
            "{name} has an undocumented field: {frame}"
        );
        let kind = frame["type"].as_str().unwrap();
        let listed = |field: &str, value: &str| {
            let property = &schema["properties"][field];
            property["const"] == value
                || property["enum"]
                    .as_array()
                    .is_some_and(|values| values.iter().any(|v| v == value))
        };
        assert!(listed("type", kind), "{name}: type {kind} is not listed");
        if *name == "Error" {
            let code = frame["code"].as_str().unwrap();
            assert!(listed("code", code), "error code {code} is not listed");
        }
        if *name == "Event" {
            event_types.insert(kind.to_owned());
        }
    }
    // Every event type the schema lists was sent: none is stale.
    let listed: BTreeSet<String> = schemas["Event"]["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(event_types, listed);
}

const ALLOWED: &str = "http://app.example:8080";

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, app.url("/v1/collab/drafts"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-request-id",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn cors_answers_allowed_origins_only(kind: Kind) {
    let app = spawn_with(kind, |c| c.cors_allowed_origins = vec![ALLOWED.into()]).await;
    let allowed = preflight(&app, ALLOWED).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let methods = header(&allowed, "access-control-allow-methods")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        methods.contains("post") && methods.contains("get"),
        "{methods}"
    );
    let headers = header(&allowed, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for needed in ["authorization", "content-type", "x-request-id"] {
        assert!(headers.contains(needed), "{headers}");
    }
    // The request itself: readable by the page, with the headers it needs.
    let actual = app
        .http
        .get(app.url("/v1/collab/drafts"))
        .header("origin", ALLOWED)
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(actual.status(), 200);
    assert_eq!(
        header(&actual, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let exposed = header(&actual, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for needed in ["x-request-id", "retry-after", "ratelimit"] {
        assert!(exposed.contains(needed), "{exposed}");
    }
    // Another origin gets no CORS headers: its browser refuses the answer.
    let refused = preflight(&app, "http://evil.example").await;
    assert_eq!(header(&refused, "access-control-allow-origin"), None);
    // Answered all the same (docs/API.md says so): the browser decides.
    assert!(refused.status().is_success(), "{}", refused.status());
    let other = app
        .http
        .get(app.url("/healthz"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), None);
}

async fn without_cors_origins_there_are_no_cors_headers(kind: Kind) {
    let app = spawn_app(kind).await;
    let response = preflight(&app, ALLOWED).await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    assert_eq!(response.status(), 405);
}

conformance!(
    cors_answers_allowed_origins_only,
    without_cors_origins_there_are_no_cors_headers,
);
