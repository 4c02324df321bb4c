//! An identity provider's signing keys, from the JWKS document it publishes
//! (the `KeySetSource` port; `adapters::jwks` fetches it over HTTP(S) or
//! reads a file). Cached: loaded at start-up (a replica that cannot read it
//! does not start), fetched again once the copy is older than
//! `AUTH_JWKS_REFRESH_SECONDS` (so a key the provider removed stops
//! verifying within that), and when a token names a `kid` the copy does not
//! hold (a new key), at most once per `AUTH_JWKS_MIN_REFRESH_SECONDS`
//! whatever the traffic, so made-up `kid`s cannot turn into a flood of
//! fetches. A copy that is merely old is refreshed in the background while
//! requests go on with it; only a token naming an unknown `kid` waits for a
//! fetch. A failed refresh keeps the keys already known (a provider outage
//! must not lock every user out) and is tried again after the minimum
//! interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::Refusal;
use crate::error::Error;
use crate::ports::KeySetSource;

/// How often the keys are fetched again.
#[derive(Clone, Copy, Debug)]
pub struct JwksSettings {
    /// The age at which the cached keys are fetched again.
    pub refresh: Duration,
    /// The least time between two fetches, whatever asks for them.
    pub min_refresh: Duration,
}

/// The cached keys of one JWKS, shared by every request.
#[derive(Clone)]
pub struct Jwks {
    inner: Arc<Shared>,
}

struct Shared {
    source: Arc<dyn KeySetSource>,
    settings: JwksSettings,
    keys: RwLock<Arc<KeyTable>>,
    /// When the last fetch started; held while one runs, so concurrent
    /// askers wait for it and then use its result.
    last_fetch: tokio::sync::Mutex<Instant>,
    /// A background refresh of an old copy is under way.
    refreshing: AtomicBool,
}

/// One fetch's usable keys.
struct KeyTable {
    keys: Vec<SigningKey>,
    fetched: Instant,
}

struct SigningKey {
    kid: Option<String>,
    /// The algorithms this key may verify: its `alg`, else its family's.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// What a lookup found.
enum Found {
    Key(DecodingKey),
    /// The `kid` is known, but not for this algorithm.
    WrongAlgorithm,
    Missing,
}

impl Jwks {
    /// Fetches the keys once; fails if they cannot be read or none is usable.
    pub async fn load(
        source: Arc<dyn KeySetSource>,
        settings: JwksSettings,
    ) -> Result<Jwks, Error> {
        let table = fetch(source.as_ref()).await?;
        if table.keys.is_empty() {
            return Err(Error::internal(format!(
                "the JWKS at {} holds no signing key collabd can use (RSA, EC P-256/P-384 or Ed25519)",
                source.describe()
            )));
        }
        Ok(Jwks {
            inner: Arc::new(Shared {
                source,
                settings,
                keys: RwLock::new(Arc::new(table)),
                last_fetch: tokio::sync::Mutex::new(Instant::now()),
                refreshing: AtomicBool::new(false),
            }),
        })
    }

    /// The key that verifies a token with this `kid` and algorithm.
    pub(super) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, Refusal> {
        if self.current().fetched.elapsed() >= self.inner.settings.refresh {
            self.refresh_in_background();
        }
        let mut found = self.current().find(kid, alg);
        if matches!(found, Found::Missing) && kid.is_some() {
            // A key the copy does not know yet: the provider may have added it.
            self.refresh().await;
            found = self.current().find(kid, alg);
        }
        match found {
            Found::Key(key) => Ok(key),
            Found::WrongAlgorithm => Err(Refusal::Algorithm),
            Found::Missing => Err(Refusal::UnknownKey),
        }
    }

    fn current(&self) -> Arc<KeyTable> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts one refresh that no request waits for.
    fn refresh_in_background(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let jwks = self.clone();
        tokio::spawn(async move {
            jwks.refresh().await;
            jwks.inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches again, unless a fetch started less than `min_refresh` ago
    /// (one that was running while this waited included).
    async fn refresh(&self) {
        let mut last = self.inner.last_fetch.lock().await;
        if last.elapsed() < self.inner.settings.min_refresh {
            return;
        }
        *last = Instant::now();
        match fetch(self.inner.source.as_ref()).await {
            Ok(table) => {
                *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
            }
            Err(e) => tracing::warn!(
                error.message = %e,
                source = %self.inner.source.describe(),
                "JWKS refresh failed; keeping the keys already known"
            ),
        }
    }
}

impl KeyTable {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Found {
        let candidates: Vec<&SigningKey> = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            // No `kid`: only unambiguous with a single key of the family.
            None => self
                .keys
                .iter()
                .filter(|k| k.algorithms.contains(&alg))
                .collect(),
        };
        match candidates.as_slice() {
            [] => Found::Missing,
            [one] if one.algorithms.contains(&alg) => Found::Key(one.key.clone()),
            [_] => Found::WrongAlgorithm,
            _ => match candidates.iter().find(|k| k.algorithms.contains(&alg)) {
                Some(key) if kid.is_some() => Found::Key(key.key.clone()),
                _ => Found::Missing,
            },
        }
    }
}

/// Reads the document and keeps the keys that can verify signatures.
async fn fetch(source: &dyn KeySetSource) -> Result<KeyTable, Error> {
    let document = source.fetch().await?;
    let set: JwkSet = serde_json::from_str(&document).map_err(|e| {
        Error::internal(format!(
            "the JWKS at {} is not a JWK set: {e}",
            source.describe()
        ))
    })?;
    let keys = set
        .keys
        .iter()
        .filter_map(|jwk| {
            Some(SigningKey {
                kid: jwk.common.key_id.clone(),
                algorithms: algorithms_of(jwk)?,
                key: DecodingKey::from_jwk(jwk).ok()?,
            })
        })
        .collect();
    Ok(KeyTable {
        keys,
        fetched: Instant::now(),
    })
}

/// The signature algorithms a key may verify, or `None` for a key that is
/// not for signatures (encryption keys, and shared secrets, which have no
/// place in a published key set).
fn algorithms_of(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    use Algorithm::*;
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    match jwk.common.key_algorithm {
        // Pinned by the provider: that one only, if it fits the key.
        Some(pinned) => {
            let pinned: Algorithm = format!("{pinned:?}").parse().ok()?;
            family.contains(&pinned).then(|| vec![pinned])
        }
        None => Some(family),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: serde_json::Value) -> Jwk {
        serde_json::from_value(json).unwrap()
    }

    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn keys_verify_only_their_own_algorithms() {
        let rsa = json!({ "kty": "RSA", "n": N, "e": "AQAB" });
        assert_eq!(algorithms_of(&jwk(rsa)).unwrap().len(), 6);
        let pinned = json!({ "kty": "RSA", "alg": "RS256", "n": N, "e": "AQAB" });
        assert_eq!(algorithms_of(&jwk(pinned)), Some(vec![Algorithm::RS256]));
        let for_encryption = json!({ "kty": "RSA", "use": "enc", "n": N, "e": "AQAB" });
        assert_eq!(algorithms_of(&jwk(for_encryption)), None);
        let wrapping = json!({ "kty": "RSA", "alg": "RSA-OAEP", "n": N, "e": "AQAB" });
        assert_eq!(algorithms_of(&jwk(wrapping)), None);
        let secret = json!({ "kty": "oct", "k": "c2VjcmV0" });
        assert_eq!(algorithms_of(&jwk(secret)), None);
    }

    use serde_json::json;
}
