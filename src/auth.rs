//! Bearer tokens: HS256 JWTs whose `sub` is the user id and whose `exp` is
//! required. Tokens and the secret never reach a log line.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::collab::input::UserId;
use crate::error::Error;

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
}

/// Seconds of clock skew tolerated between a token's issuer and this
/// replica, on `exp` and `nbf` alike: a token minted on a host a little
/// ahead is neither refused as not yet valid nor kept past its expiry by
/// more than this.
pub const LEEWAY_SECONDS: u64 = 5;

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<(EncodingKey, DecodingKey)>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        Authenticator {
            keys: Arc::new((
                EncodingKey::from_secret(secret.as_bytes()),
                DecodingKey::from_secret(secret.as_bytes()),
            )),
            validation: Arc::new(validation),
        }
    }

    /// Mints a token for `user_id` valid for `ttl`.
    pub fn mint(&self, user_id: &str, ttl: Duration) -> Result<String, Error> {
        let user_id = UserId::parse(user_id)?;
        let now = unix_now();
        let claims = Claims {
            sub: user_id.into(),
            iat: Some(now),
            nbf: None,
            exp: now.saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.keys.0)
            .map_err(Error::internal)
    }

    /// Returns the user id of a valid token.
    pub fn verify(&self, token: &str) -> Result<UserId, Error> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.keys.1, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        Error::Unauthorized("token expired")
                    }
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        Error::Unauthorized("token is not valid yet (nbf)")
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        Error::Unauthorized("token signature is invalid")
                    }
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                        Error::Unauthorized("token lacks a required claim (sub, exp)")
                    }
                    _ => Error::Unauthorized("token is malformed"),
                }
            })?;
        UserId::parse(data.claims.sub)
            .map_err(|_| Error::Unauthorized("token subject is not a valid user id"))
    }

    /// Verifies the `Authorization: Bearer` header.
    pub fn verify_headers(&self, headers: &HeaderMap) -> Result<UserId, Error> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(Error::Unauthorized("missing bearer token"))?;
        let value = value
            .to_str()
            .map_err(|_| Error::Unauthorized("malformed authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(Error::Unauthorized("authorization must be a Bearer token"))?;
        self.verify(token.trim())
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
/// extensions; the extractor (`http::extract`) then reuses it.
#[derive(Clone, Debug)]
pub struct AuthUser(pub UserId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_to_its_user() {
        let auth = Authenticator::new("secret");
        let token = auth.mint("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&token).unwrap().as_str(), "alice");
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = Authenticator::new("one")
            .mint("alice", Duration::from_secs(60))
            .unwrap();
        let err = Authenticator::new("two").verify(&token).unwrap_err();
        assert_eq!(err.code(), "unauthorized");
    }

    #[test]
    fn expired_and_garbage_tokens_are_refused() {
        let auth = Authenticator::new("secret");
        let claims = Claims {
            sub: "alice".into(),
            iat: Some(1),
            nbf: None,
            exp: 2,
        };
        let old = jsonwebtoken::encode(&Header::default(), &claims, &auth.keys.0).unwrap();
        assert!(matches!(
            auth.verify(&old),
            Err(Error::Unauthorized("token expired"))
        ));
        assert!(auth.verify("not.a.token").is_err());
    }

    #[test]
    fn a_subject_outside_the_user_id_alphabet_is_refused() {
        let auth = Authenticator::new("secret");
        let claims = Claims {
            sub: "bad user".into(),
            iat: Some(unix_now()),
            nbf: None,
            exp: unix_now() + 60,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &auth.keys.0).unwrap();
        assert!(auth.verify(&token).is_err());
    }

    /// A token with exactly these claims, signed with `auth`'s secret.
    fn signed(auth: &Authenticator, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &auth.keys.0).unwrap()
    }

    #[test]
    fn only_sub_and_exp_are_required() {
        let auth = Authenticator::new("secret");
        let minimal = signed(
            &auth,
            serde_json::json!({ "sub": "alice", "exp": unix_now() + 60 }),
        );
        assert_eq!(auth.verify(&minimal).unwrap().as_str(), "alice");
        let fractional_iat = signed(
            &auth,
            serde_json::json!({ "sub": "alice", "exp": unix_now() + 60, "iat": 1.5 }),
        );
        assert!(auth.verify(&fractional_iat).is_ok());
        let no_exp = signed(&auth, serde_json::json!({ "sub": "alice" }));
        assert!(matches!(
            auth.verify(&no_exp),
            Err(Error::Unauthorized(
                "token lacks a required claim (sub, exp)"
            ))
        ));
    }

    #[test]
    fn a_token_not_valid_before_a_time_to_come_is_refused_beyond_the_leeway() {
        let auth = Authenticator::new("secret");
        let token_from = |nbf: u64| {
            signed(
                &auth,
                serde_json::json!({ "sub": "alice", "exp": nbf + 3600, "nbf": nbf }),
            )
        };
        assert!(matches!(
            auth.verify(&token_from(unix_now() + 3600)),
            Err(Error::Unauthorized("token is not valid yet (nbf)"))
        ));
        assert!(auth.verify(&token_from(unix_now() + 60)).is_err());
        // Within the leeway, and already valid: accepted.
        assert!(auth
            .verify(&token_from(unix_now() + LEEWAY_SECONDS - 2))
            .is_ok());
        assert!(auth.verify(&token_from(unix_now() - 60)).is_ok());
    }
}
