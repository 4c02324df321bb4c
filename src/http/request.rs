//! What every request carries from the edge inward: its id (a task-local, so
//! an error built anywhere below can name it) and where it came from.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use uuid::Uuid;

use crate::limits::client_ip::{client_ip, Trusted};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_CHARS: usize = 128;
/// The longest `User-Agent` kept for audit rows: enough to tell clients
/// apart, short enough that a client cannot fill rows with it.
const MAX_USER_AGENT_CHARS: usize = 256;

tokio::task_local! {
    /// The id of the request being served, set by the request-context
    /// middleware for everything the request runs.
    pub static REQUEST_ID: String;
}

/// The id of the request this task is serving, or "n/a" outside one.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "n/a".to_owned())
}

/// A client's `X-Request-Id` is kept when it is a sane token: 1-128
/// characters of `[A-Za-z0-9._:-]`. Anything else is replaced, so logs and
/// headers never carry what a client smuggled in.
pub fn request_id_of(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_CHARS
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

/// Where the request came from, for audit rows and rate-limit keys.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The client address (through trusted proxies) and its user agent.
    pub fn from_request(req: &Request, trusted: &Trusted) -> Self {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| crate::text::truncate_chars(ua, MAX_USER_AGENT_CHARS).to_owned());
        ClientInfo {
            ip: client_ip(peer, req.headers(), trusted),
            user_agent,
        }
    }
}
