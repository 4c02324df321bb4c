//! Tokens from an identity provider: a replica process verifies RS256 and
//! ES256 tokens against a JWKS served by a local HTTP server, follows a key
//! rotation without a restart (the new key accepted on its first token, the
//! removed one refused once the copy is refreshed), bounds the fetches that
//! made-up `kid`s cause, and checks `iss` and `aud`. Start-up refuses a JWKS
//! it cannot read, in one line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::cluster::Cluster;
use crate::common::redis::base_url;
use crate::common::*;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "collabd";

/// A test-only key pair from tests/fixtures/jwks/keys.json.
struct TestKey {
    kid: &'static str,
    alg: Algorithm,
    private: EncodingKey,
    jwk: Value,
}

fn test_key(kid: &'static str) -> TestKey {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwks/keys.json"
    ))
    .unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let entry = &all[kid];
    let hex = entry["private_der_hex"].as_str().unwrap();
    let der: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let alg: Algorithm = entry["alg"].as_str().unwrap().parse().unwrap();
    let private = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
        _ => EncodingKey::from_ec_der(&der),
    };
    TestKey {
        kid,
        alg,
        private,
        jwk: entry["jwk"].clone(),
    }
}

impl TestKey {
    /// A token for `user` signed with this key, naming `kid`.
    fn token_as(&self, kid: &str, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.private).unwrap()
    }

    fn token(&self, user: &str) -> String {
        self.token_as(self.kid, claims(user, ISSUER, AUDIENCE))
    }
}

fn claims(user: &str, iss: &str, aud: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({ "sub": user, "exp": now + 600, "iss": iss, "aud": aud })
}

/// The identity provider's JWKS endpoint: serves what the test publishes and
/// counts the fetches.
struct Provider {
    url: String,
    published: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

type Shared = (Arc<Mutex<Value>>, Arc<AtomicUsize>);

impl Provider {
    async fn start(keys: &[&TestKey]) -> Provider {
        let published = Arc::new(Mutex::new(Value::Null));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State((published, fetches)): State<Shared>| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(published.lock().unwrap().clone())
                }),
            )
            .with_state((published.clone(), fetches.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let provider = Provider {
            url,
            published,
            fetches,
            server,
        };
        provider.publish(keys);
        provider
    }

    fn publish(&self, keys: &[&TestKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.published.lock().unwrap() = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The status of listing drafts with this bearer token.
async fn status_with(api: &Api, token: &str) -> u16 {
    api.http
        .get(api.url("/v1/collab/drafts"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn keys_from_an_identity_provider_rotate_without_a_restart() {
    let (old, new) = (test_key("rsa-1"), test_key("ec-2"));
    let provider = Provider::start(&[&old]).await;
    let common = [
        ("AUTH_JWKS_URL", provider.url.as_str()),
        ("AUTH_JWKS_MIN_REFRESH_SECONDS", "1"),
        ("AUTH_JWT_ISSUER", ISSUER),
        ("AUTH_JWT_AUDIENCE", AUDIENCE),
    ];
    let mut cluster = Cluster::start(0, base_url(), &common).await;
    // `eager` learns of new keys only from the tokens that name them (its
    // periodic refresh, 60 s, is beyond every wait here); `periodic` only
    // ever sees known kids, so only its 2 s refresh can drop a key.
    for refresh in ["60", "2"] {
        let replica = cluster
            .spawn_replica_with(&[("AUTH_JWKS_REFRESH_SECONDS", refresh.to_owned())])
            .await;
        cluster.replicas.push(replica);
    }
    let (eager, periodic) = (&cluster.replicas[0].api, &cluster.replicas[1].api);
    assert_eq!(status_with(eager, &old.token("alice")).await, 200);
    assert_eq!(status_with(periodic, &old.token("alice")).await, 200);
    // The new key is not published yet: refused.
    assert_eq!(status_with(eager, &new.token("alice")).await, 401);

    // Made-up kids: each refused, and together they fetch the JWKS at most
    // once per AUTH_JWKS_MIN_REFRESH_SECONDS.
    let before = provider.fetches();
    let flood = Instant::now();
    for n in 0..30 {
        let forged = new.token_as(&format!("made-up-{n}"), claims("alice", ISSUER, AUDIENCE));
        assert_eq!(status_with(eager, &forged).await, 401);
    }
    let fetched = provider.fetches() - before;
    let allowed = 1 + flood.elapsed().as_secs() as usize;
    assert!(
        fetched <= allowed,
        "{fetched} fetches for 30 unknown kids in {:?}",
        flood.elapsed()
    );

    // Rotation, step 1: both keys published. A token from the new key is
    // accepted without a restart (once the minimum refresh interval allows
    // a fetch), the old one still.
    provider.publish(&[&old, &new]);
    eventually(|| async { status_with(eager, &new.token("bob")).await == 200 }).await;
    assert_eq!(status_with(eager, &old.token("alice")).await, 200);

    // Step 2: the old key withdrawn. Within the refresh period its tokens
    // are refused; the new key's are accepted.
    provider.publish(&[&new]);
    eventually(|| async { status_with(periodic, &old.token("alice")).await == 401 }).await;
    assert_eq!(status_with(periodic, &new.token("bob")).await, 200);
    let api = eager;

    // The issuer and the audience are checked, and the answer says which.
    for (iss, aud, reason) in [
        ("https://elsewhere.example", AUDIENCE, "issuer"),
        (ISSUER, "another-service", "audience"),
    ] {
        let token = new.token_as(new.kid, claims("bob", iss, aud));
        let reply = read_reply(
            api.http
                .get(api.url("/v1/collab/drafts"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((reply.status, reply.code()), (401, "unauthorized"));
        let message = reply.body["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(reason), "{message}");
    }
    // A symmetric key published in the JWKS (public, so anyone could sign
    // with it) never verifies anything: an HS256 token naming it is refused.
    let published_secret = b"published-for-all-to-see";
    let oct = json!({ "kty": "oct", "kid": "oct-1", "k": base64url(published_secret) });
    let with_oct = json!({ "keys": [new.jwk.clone(), oct] });
    *provider.published.lock().unwrap() = with_oct;
    let forged = jsonwebtoken::encode(
        &Header {
            kid: Some("oct-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("mallory", ISSUER, AUDIENCE),
        &EncodingKey::from_secret(published_secret),
    )
    .unwrap();
    // Once the replica has read that document (a made-up kid makes it
    // fetch, once the minimum interval allows):
    let before = provider.fetches();
    let unknown = new.token_as("made-up-after-oct", claims("x", ISSUER, AUDIENCE));
    eventually(|| async {
        status_with(eager, &unknown).await == 401 && provider.fetches() > before
    })
    .await;
    assert_eq!(status_with(eager, &forged).await, 401);

    // `collabd token` mints for a server that checks issuer and audience.
    let minted = collabd_command()
        .args(["token", "--user", "carol"])
        .env("AUTH_JWT_SECRET", crate::common::cluster::SECRET)
        .env("AUTH_JWT_ISSUER", ISSUER)
        .env("AUTH_JWT_AUDIENCE", AUDIENCE)
        .output()
        .unwrap();
    assert!(minted.status.success());
    let minted = String::from_utf8(minted.stdout).unwrap();
    assert_eq!(status_with(eager, minted.trim()).await, 200);

    // The provider goes away: the keys already known keep working, on the
    // replica whose copy keeps getting old too.
    drop(provider);
    for replica in [eager, periodic] {
        assert_eq!(status_with(replica, &new.token("bob")).await, 200);
    }
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// In prod with an identity provider and no AUTH_JWT_SECRET, the built-in
/// dev secret signs nothing that is accepted; the JWKS may be a file.
#[tokio::test]
async fn in_prod_the_dev_secret_is_never_accepted() {
    let key = test_key("ec-2");
    let file = std::env::temp_dir().join(format!("collabd-jwks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, json!({ "keys": [key.jwk.clone()] }).to_string()).unwrap();
    let mut cluster = Cluster::start(0, base_url(), &[]).await;
    let replica = cluster
        .spawn_replica_with(&[
            ("APP_ENV", "prod".to_owned()),
            ("AUTH_JWT_SECRET", String::new()),
            ("AUTH_JWKS_URL", file.display().to_string()),
            ("AUTH_JWT_ISSUER", ISSUER.to_owned()),
            ("AUTH_JWT_AUDIENCE", AUDIENCE.to_owned()),
        ])
        .await;
    cluster.replicas.push(replica);
    let api = &cluster.replicas[0].api;
    let dev = collabd::auth::Authenticator::with(
        collabd::auth::AuthSettings {
            secrets: vec![collabd::auth::SharedSecret {
                kid: None,
                secret: collabd::config::DEV_JWT_SECRET.to_owned(),
            }],
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
        },
        None,
    )
    .mint("mallory", std::time::Duration::from_secs(60))
    .unwrap();
    assert_eq!(status_with(api, &dev).await, 401);
    assert_eq!(status_with(api, &key.token("alice")).await, 200);
    let _ = std::fs::remove_file(file);
}

#[test]
fn an_unreadable_jwks_stops_the_start_with_one_line() {
    let url = format!("http://{}/jwks.json", closed_addr());
    let (stderr, _) = refused_start(
        collabd_command()
            .env("AUTH_JWKS_URL", &url)
            .env("PORT", "0")
            .env("METRICS_ADDR", "127.0.0.1:0"),
    );
    assert!(
        stderr.contains("AUTH_JWKS_URL") && stderr.contains(&url),
        "{stderr}"
    );
}
