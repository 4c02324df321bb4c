//! The REST rate-limit middleware. Each request spends one token from the
//! bucket of its route (method and matched template) and subject (the
//! verified user, else the client IP), under its route's policy (`read` or
//! `mutation`): one busy route cannot starve a user's others. Every limited route answers with the IETF draft's
//! `RateLimit-Policy` and `RateLimit` headers; an empty bucket answers 429
//! `rate_limited` with `Retry-After`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::gcra::{RatePolicy, ThrottleReply};
use crate::auth::{AuthRefused, AuthUser, Authenticator};
use crate::error::Error;
use crate::http::request::ClientInfo;
use crate::ports::RateLimiter;
use crate::telemetry::Metrics;

/// The two policies: mutations are stricter than reads.
#[derive(Clone, Debug)]
pub struct Policies {
    pub read: RatePolicy,
    pub mutation: RatePolicy,
}

impl Policies {
    /// `per_minute` sustained and `burst` extra requests, for reads and for
    /// mutations.
    pub fn per_minute(read: (u32, u32), mutation: (u32, u32)) -> Self {
        let policy = |name, (per_minute, burst): (u32, u32)| RatePolicy {
            name,
            max_burst: burst as i64,
            count: per_minute as i64,
            period_secs: 60,
        };
        Policies {
            read: policy("read", read),
            mutation: policy("mutation", mutation),
        }
    }

    fn for_method(&self, method: &Method) -> &RatePolicy {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            &self.read
        } else {
            &self.mutation
        }
    }
}

/// Probes are never limited: a throttled `/readyz` would pull a healthy pod.
fn exempt(req: &Request) -> bool {
    matches!(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
        Some("/healthz" | "/readyz")
    )
}

/// What the rate-limit middleware needs.
#[derive(Clone)]
pub struct RateLimits {
    /// `RATE_LIMIT_ENABLED`.
    pub enabled: bool,
    pub limiter: Arc<dyn RateLimiter>,
    pub policies: Arc<Policies>,
    pub auth: Authenticator,
    pub metrics: Metrics,
}

pub async fn rate_limit(State(state): State<RateLimits>, mut req: Request, next: Next) -> Response {
    if !state.enabled || exempt(&req) {
        return next.run(req).await;
    }
    // Key by the verified user when the token is good; the handler will
    // reuse this result rather than verify again. A bad token is keyed by
    // IP, and the handler refuses it.
    let verdict = state.auth.check_headers(req.headers()).await;
    let subject = match &verdict {
        Ok(user) => {
            req.extensions_mut().insert(AuthUser(user.clone()));
            format!("user:{user}")
        }
        Err(refused) => {
            req.extensions_mut().insert(AuthRefused(*refused));
            let ip = req
                .extensions()
                .get::<ClientInfo>()
                .map(|c| c.ip.to_string())
                .unwrap_or_else(|| "unknown".into());
            format!("ip:{ip}")
        }
    };
    let policy = state.policies.for_method(req.method()).clone();
    let key = bucket(&policy, &req, &subject);
    match state.limiter.throttle(&key, &policy, 1).await {
        Ok(reply) if reply.limited => {
            // Answered here: the token's verdict is counted here too.
            let _ = state.auth.settle(verdict);
            tracing::info!(scope = policy.name, "rate limited");
            state.metrics.rate_limited(policy.name);
            let retry = reply.retry_after_secs().max(1) as u64;
            let mut response = Error::RateLimited(retry).into_response();
            set_headers(response.headers_mut(), &policy, &reply);
            response
        }
        Ok(reply) => {
            let mut response = next.run(req).await;
            set_headers(response.headers_mut(), &policy, &reply);
            response
        }
        // Only RATE_LIMIT_FAIL_MODE=closed lets a backend failure through.
        Err(e) => {
            let _ = state.auth.settle(verdict);
            e.into_response()
        }
    }
}

/// The bucket a request spends from, e.g.
/// `mutation:POST:/v1/collab/drafts/:id/segments:user:alice`. The route's
/// `{param}` becomes `:param`: on Redis Cluster braces in a key name its hash
/// tag, which would put every bucket of the deployment in one slot.
fn bucket(policy: &RatePolicy, req: &Request, subject: &str) -> String {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched")
        .replace('{', ":")
        .replace('}', "");
    format!("{}:{}:{route}:{subject}", policy.name, req.method())
}

/// `RateLimit-Policy: "read";q=31;w=16` and `RateLimit: "read";r=30;t=1`
/// (draft-ietf-httpapi-ratelimit-headers): quota `q` over window `w`
/// seconds, `r` remaining, full again in `t` seconds.
fn set_headers(headers: &mut HeaderMap, policy: &RatePolicy, reply: &ThrottleReply) {
    let policy_value = format!(
        "\"{}\";q={};w={}",
        policy.name,
        policy.limit(),
        policy.window_secs()
    );
    let state_value = format!(
        "\"{}\";r={};t={}",
        policy.name,
        reply.remaining.max(0),
        reply.reset_after_secs().max(0)
    );
    if let Ok(v) = HeaderValue::from_str(&policy_value) {
        headers.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&state_value) {
        headers.insert("ratelimit", v);
    }
}
