//! Bearer tokens: JWTs whose `sub` is the user id and whose `exp` is
//! required; `nbf` is enforced, and `iss` and `aud` when configured
//! (`AUTH_JWT_ISSUER`, `AUTH_JWT_AUDIENCE`). A token is signed either with
//! HS256 by one of the shared secrets (`AUTH_JWT_SECRET`, and for rotation
//! `AUTH_JWT_SECRETS`, picked by the token's `kid` when it names one), or by
//! an identity provider's key (RS*, PS*, ES256/384, EdDSA) from its JWKS
//! (`AUTH_JWKS_URL`, see `jwks.rs`). Each algorithm is verified only with
//! keys of its own family. Tokens and secrets never reach a log line.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, Extensions, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, TokenData, Validation};
use serde::{Deserialize, Serialize};

use crate::collab::input::UserId;
use crate::error::Error;
use crate::telemetry::Metrics;

mod jwks;

pub use jwks::{Jwks, JwksSettings};

/// The claims read and written. Only `sub` and `exp` are required; `nbf`,
/// when present, is enforced; `iat` is informational.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    // Defaults only so that a missing one is reported by the validation
    // (as a missing claim) rather than as a malformed token.
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: u64,
    // Written when minting, never read: some issuers send a fraction.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    // Written when minting for a server that checks them; jsonwebtoken's
    // validation reads them from the token itself.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Seconds of clock skew tolerated between a token's issuer and this
/// replica, on `exp` and `nbf` alike: a token minted on a host a little
/// ahead is neither refused as not yet valid nor kept past its expiry by
/// more than this.
pub const LEEWAY_SECONDS: u64 = 5;

/// Why a token was refused: the words the client gets in its 401, and the
/// `reason` label of `auth_failures_total` (the same list as
/// `telemetry::metrics::AUTH_FAILURE_REASONS`, which a test holds to this).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    NotBearer,
    Malformed,
    Expired,
    NotYetValid,
    Signature,
    Issuer,
    Audience,
    Algorithm,
    UnknownKey,
    MissingClaim,
    Subject,
}

impl Refusal {
    pub const ALL: [Refusal; 12] = [
        Refusal::Missing,
        Refusal::NotBearer,
        Refusal::Malformed,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::Signature,
        Refusal::Issuer,
        Refusal::Audience,
        Refusal::Algorithm,
        Refusal::UnknownKey,
        Refusal::MissingClaim,
        Refusal::Subject,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::NotBearer => "not_bearer",
            Refusal::Malformed => "malformed",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Signature => "signature",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::MissingClaim => "missing_claim",
            Refusal::Subject => "subject",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "missing bearer token",
            Refusal::NotBearer => "authorization must be a Bearer token",
            Refusal::Malformed => "token is malformed",
            Refusal::Expired => "token expired",
            Refusal::NotYetValid => "token is not valid yet (nbf)",
            Refusal::Signature => "token signature is invalid",
            Refusal::Issuer => "token issuer is not accepted",
            Refusal::Audience => "token audience is not accepted",
            Refusal::Algorithm => "token algorithm is not accepted, or does not match its key",
            Refusal::UnknownKey => "token signing key is not known",
            Refusal::MissingClaim => "token lacks a required claim (sub, exp, iss, aud)",
            Refusal::Subject => "token subject is not a valid user id",
        }
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Error {
        Error::Unauthorized(refusal.message())
    }
}

/// One HS256 secret, with the `kid` that selects it if it has one.
#[derive(Clone)]
pub struct SharedSecret {
    pub kid: Option<String>,
    pub secret: String,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedSecret {{ kid: {:?}, .. }}", self.kid)
    }
}

/// What a token must be signed with and say about itself.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    /// HS256 secrets; the first one also mints (`collabd token`). May be
    /// empty when an identity provider signs every token.
    pub secrets: Vec<SharedSecret>,
    /// `AUTH_JWT_ISSUER`: the `iss` every token must carry.
    pub issuer: Option<String>,
    /// `AUTH_JWT_AUDIENCE`: a value every token's `aud` must hold.
    pub audience: Option<String>,
}

/// Signs and verifies tokens.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// The first shared secret's, for minting.
    mint: Option<EncodingKey>,
    shared: Vec<(Option<String>, DecodingKey)>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Where each verification's outcome is counted, when serving.
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

impl Authenticator {
    /// One HS256 secret, no issuer or audience: development, tests and
    /// `collabd token`.
    pub fn new(secret: &str) -> Self {
        let settings = AuthSettings {
            secrets: vec![SharedSecret {
                kid: None,
                secret: secret.to_owned(),
            }],
            ..AuthSettings::default()
        };
        Authenticator::with(settings, None)
    }

    /// Shared secrets and, when given, an identity provider's keys.
    pub fn with(settings: AuthSettings, jwks: Option<Jwks>) -> Self {
        Authenticator::build(settings, jwks, None)
    }

    /// The same, counting every verification in `auth_success_total` and
    /// `auth_failures_total{reason}`: build it once per server, and verify
    /// each request once (the rate limit hands its outcome on).
    pub fn counted(settings: AuthSettings, jwks: Option<Jwks>, metrics: Metrics) -> Self {
        Authenticator::build(settings, jwks, Some(metrics))
    }

    fn build(settings: AuthSettings, jwks: Option<Jwks>, metrics: Option<Metrics>) -> Self {
        let shared = settings
            .secrets
            .iter()
            .map(|s| (s.kid.clone(), DecodingKey::from_secret(s.secret.as_bytes())))
            .collect();
        let mint = settings
            .secrets
            .first()
            .map(|s| EncodingKey::from_secret(s.secret.as_bytes()));
        Authenticator {
            inner: Arc::new(Inner {
                mint,
                shared,
                jwks,
                issuer: settings.issuer,
                audience: settings.audience,
                metrics,
            }),
        }
    }

    /// Mints a token for `user_id` valid for `ttl`, with the first shared
    /// secret, carrying the configured issuer and audience.
    pub fn mint(&self, user_id: &str, ttl: Duration) -> Result<String, Error> {
        let key = self
            .inner
            .mint
            .as_ref()
            .ok_or_else(|| Error::internal("no shared secret to mint tokens with"))?;
        let user_id = UserId::parse(user_id)?;
        let now = unix_now();
        let claims = Claims {
            sub: user_id.into(),
            iat: Some(now),
            nbf: None,
            exp: now.saturating_add(ttl.as_secs()),
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).map_err(Error::internal)
    }

    /// Returns the user id of a valid token, and counts the outcome.
    pub async fn verify(&self, token: &str) -> Result<UserId, Error> {
        let outcome = self.check(token).await;
        self.settle(outcome)
    }

    /// Verifies the `Authorization: Bearer` header, and counts the outcome.
    pub async fn verify_headers(&self, headers: &HeaderMap) -> Result<UserId, Error> {
        let outcome = self.check_headers(headers).await;
        self.settle(outcome)
    }

    /// Settles a request's token, counted once: the verdict the rate limit
    /// handed on in the request's extensions, else the header verified now.
    pub async fn settle_request(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
    ) -> Result<UserId, Error> {
        match (
            extensions.get::<AuthUser>(),
            extensions.get::<AuthRefused>(),
        ) {
            (Some(AuthUser(user)), _) => self.settle(Ok(user.clone())),
            (None, Some(AuthRefused(refusal))) => self.settle(Err(*refusal)),
            (None, None) => self.verify_headers(headers).await,
        }
    }

    /// Verifies the header without counting: for a middleware that only
    /// needs to know who is calling and hands the outcome on (as
    /// [`AuthUser`] or [`AuthRefused`]) to whatever settles the request.
    pub async fn check_headers(&self, headers: &HeaderMap) -> Result<UserId, Refusal> {
        self.check(bearer(headers)?).await
    }

    /// Counts a request's outcome, once: `auth_success_total` or
    /// `auth_failures_total{reason}`.
    pub fn settle(&self, outcome: Result<UserId, Refusal>) -> Result<UserId, Error> {
        if let Some(metrics) = &self.inner.metrics {
            match &outcome {
                Ok(_) => metrics.auth_succeeded(),
                Err(refusal) => metrics.auth_refused(refusal.reason()),
            }
        }
        outcome.map_err(Error::from)
    }

    async fn check(&self, token: &str) -> Result<UserId, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let kid = header.kid.as_deref();
        let data = match header.alg {
            Algorithm::HS256 => self.verify_shared(token, kid)?,
            Algorithm::HS384 | Algorithm::HS512 => return Err(Refusal::Algorithm),
            alg => {
                let jwks = self.inner.jwks.as_ref().ok_or(Refusal::Algorithm)?;
                let key = jwks.key_for(kid, alg).await?;
                jsonwebtoken::decode::<Claims>(token, &key, &self.validation(alg))
                    .map_err(refusal)?
            }
        };
        UserId::parse(data.claims.sub).map_err(|_| Refusal::Subject)
    }

    /// HS256: the secret the token's `kid` names, else each in turn.
    fn verify_shared(&self, token: &str, kid: Option<&str>) -> Result<TokenData<Claims>, Refusal> {
        let named: Vec<&DecodingKey> = self
            .inner
            .shared
            .iter()
            .filter(|(k, _)| kid.is_some() && k.as_deref() == kid)
            .map(|(_, key)| key)
            .collect();
        let candidates: Vec<&DecodingKey> = if named.is_empty() {
            self.inner.shared.iter().map(|(_, key)| key).collect()
        } else {
            named
        };
        let validation = self.validation(Algorithm::HS256);
        let mut last = Refusal::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data),
                // Another secret may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = refusal(e),
                // The signature held: what is wrong is the token itself.
                Err(e) => return Err(refusal(e)),
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp", "sub"];
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        if let Some(issuer) = &self.inner.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.inner.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Providers set `aud` for their own reasons: unchecked unless asked.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::Missing)?;
    let value = value.to_str().map_err(|_| Refusal::NotBearer)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(Refusal::NotBearer)?;
    Ok(token.trim())
}

/// What jsonwebtoken's refusal means for the client.
fn refusal(e: jsonwebtoken::errors::Error) -> Refusal {
    match e.kind() {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidSignature => Refusal::Signature,
        ErrorKind::InvalidIssuer => Refusal::Issuer,
        ErrorKind::InvalidAudience => Refusal::Audience,
        ErrorKind::InvalidAlgorithm => Refusal::Algorithm,
        ErrorKind::MissingRequiredClaim(_) => Refusal::MissingClaim,
        _ => Refusal::Malformed,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The authenticated caller. The rate-limit middleware may have verified the
/// token already (to key by user) and left this in the request's
/// extensions; the extractor (`http::extract`) and the WebSocket upgrade
/// then reuse it, and count it.
#[derive(Clone, Debug)]
pub struct AuthUser(pub UserId);

/// A token the rate-limit middleware found wanting: whatever settles the
/// request answers with this rather than verifying the same token again.
#[derive(Clone, Copy, Debug)]
pub struct AuthRefused(pub Refusal);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_minted_token_verifies_to_its_user() {
        let auth = Authenticator::new("secret");
        let token = auth.mint("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&token).await.unwrap().as_str(), "alice");
    }

    #[tokio::test]
    async fn a_token_signed_with_another_secret_is_refused() {
        let token = Authenticator::new("one")
            .mint("alice", Duration::from_secs(60))
            .unwrap();
        let err = Authenticator::new("two").verify(&token).await.unwrap_err();
        assert_eq!(err.code(), "unauthorized");
    }

    #[tokio::test]
    async fn expired_and_garbage_tokens_are_refused() {
        let auth = Authenticator::new("secret");
        let claims = Claims {
            sub: "alice".into(),
            iat: Some(1),
            nbf: None,
            exp: 2,
            iss: None,
            aud: None,
        };
        let old = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            auth.inner.mint.as_ref().unwrap(),
        )
        .unwrap();
        assert!(matches!(
            auth.verify(&old).await,
            Err(Error::Unauthorized("token expired"))
        ));
        assert!(auth.verify("not.a.token").await.is_err());
    }

    #[tokio::test]
    async fn a_subject_outside_the_user_id_alphabet_is_refused() {
        let auth = Authenticator::new("secret");
        let claims = Claims {
            sub: "bad user".into(),
            iat: Some(unix_now()),
            nbf: None,
            exp: unix_now() + 60,
            iss: None,
            aud: None,
        };
        let token = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            auth.inner.mint.as_ref().unwrap(),
        )
        .unwrap();
        assert!(auth.verify(&token).await.is_err());
    }

    /// A token with exactly these claims, signed with `auth`'s secret.
    fn signed(auth: &Authenticator, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            auth.inner.mint.as_ref().unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn only_sub_and_exp_are_required() {
        let auth = Authenticator::new("secret");
        let minimal = signed(
            &auth,
            serde_json::json!({ "sub": "alice", "exp": unix_now() + 60 }),
        );
        assert_eq!(auth.verify(&minimal).await.unwrap().as_str(), "alice");
        let fractional_iat = signed(
            &auth,
            serde_json::json!({ "sub": "alice", "exp": unix_now() + 60, "iat": 1.5 }),
        );
        assert!(auth.verify(&fractional_iat).await.is_ok());
        let no_exp = signed(&auth, serde_json::json!({ "sub": "alice" }));
        assert!(matches!(
            auth.verify(&no_exp).await,
            Err(Error::Unauthorized(
                "token lacks a required claim (sub, exp, iss, aud)"
            ))
        ));
    }

    #[test]
    fn every_refusal_has_its_series() {
        let reasons: Vec<&str> = Refusal::ALL.iter().map(|r| r.reason()).collect();
        assert_eq!(reasons, crate::telemetry::metrics::AUTH_FAILURE_REASONS);
    }

    /// Secrets for rotation: a token naming a `kid` is checked with that
    /// secret only; one naming none, with each in turn.
    #[tokio::test]
    async fn rotated_secrets_are_picked_by_kid_or_tried_in_turn() {
        let secret = |kid: Option<&str>, secret: &str| SharedSecret {
            kid: kid.map(str::to_owned),
            secret: secret.to_owned(),
        };
        let auth = Authenticator::with(
            AuthSettings {
                secrets: vec![secret(None, "current"), secret(Some("k2"), "previous")],
                ..AuthSettings::default()
            },
            None,
        );
        let claims = serde_json::json!({ "sub": "alice", "exp": unix_now() + 60 });
        let sign = |kid: Option<&str>, secret: &str| {
            let header = Header {
                kid: kid.map(str::to_owned),
                ..Header::new(Algorithm::HS256)
            };
            jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        assert!(auth.verify(&sign(Some("k2"), "previous")).await.is_ok());
        assert!(auth.verify(&sign(None, "previous")).await.is_ok());
        assert!(auth.verify(&sign(None, "current")).await.is_ok());
        // Named k2 but signed with another secret: k2's is the only one tried.
        assert!(matches!(
            auth.verify(&sign(Some("k2"), "current")).await,
            Err(Error::Unauthorized(m)) if m == Refusal::Signature.message()
        ));
        assert!(auth.verify(&sign(None, "unknown")).await.is_err());
        // Minting uses the first.
        let minted = auth.mint("bob", Duration::from_secs(60)).unwrap();
        assert!(Authenticator::new("current").verify(&minted).await.is_ok());
        // HS384 is not accepted, whatever the secret.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"current"),
        )
        .unwrap();
        assert!(auth.verify(&hs384).await.is_err());
    }

    #[tokio::test]
    async fn a_token_not_valid_before_a_time_to_come_is_refused_beyond_the_leeway() {
        let auth = Authenticator::new("secret");
        let token_from = |nbf: u64| {
            signed(
                &auth,
                serde_json::json!({ "sub": "alice", "exp": nbf + 3600, "nbf": nbf }),
            )
        };
        assert!(matches!(
            auth.verify(&token_from(unix_now() + 3600)).await,
            Err(Error::Unauthorized("token is not valid yet (nbf)"))
        ));
        assert!(auth.verify(&token_from(unix_now() + 60)).await.is_err());
        // Within the leeway, and already valid: accepted.
        assert!(auth
            .verify(&token_from(unix_now() + LEEWAY_SECONDS - 2))
            .await
            .is_ok());
        assert!(auth.verify(&token_from(unix_now() - 60)).await.is_ok());
    }
}
