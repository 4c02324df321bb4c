//! Configuration: every knob is a CLI flag with an environment variable of the
//! seeds' name, listed by `collabd serve --help` and in `.env.example`.
//!
//! Defaults are safe for a laptop: limits and audit off, pretty logs, a dev
//! secret. `APP_ENV=prod` switches logs to JSON and refuses the dev secret.

//!
//! A leaf: it imports nothing of the product. `app.rs` alone turns a
//! `Config` into adapters and settings.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// `scheme://host[:port]` exactly as a browser sends it in `Origin`:
/// lowercase, no default port, no path. CORS compares bytes, so any other
/// spelling would silently never match.
fn is_exact_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    // An IPv6 host is bracketed: its colons are not the port's.
    let split = match rest.find(']') {
        Some(end) if rest.starts_with('[') => Some(end + 1),
        _ => rest.rfind(':'),
    };
    let (host, port) = match split.map(|at| rest.split_at(at)) {
        Some((host, "")) => (host, None),
        Some((host, port)) => match port.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None => return false,
        },
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
        });
    let port_ok = port.is_none_or(|p| p != default_port && p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

/// The secret used when none is configured. Fine for a laptop, refused in prod.
pub const DEV_JWT_SECRET: &str = "collabd-dev-secret-do-not-use-in-production";
/// The GCRA works in microseconds: more than one request per microsecond
/// would make the emission interval zero.
pub const MAX_PER_MINUTE: i64 = 60_000_000;
/// A production secret must be at least this long (HS256 keys should match the hash size).
pub const MIN_PROD_SECRET_BYTES: usize = 32;

#[derive(Debug, Parser)]
#[command(name = "collabd", version, about = "Real-time collaboration backend")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `collabd` alone serves, with these settings.
    #[command(flatten)]
    pub serve: Config,
}

// Parsed once at start-up; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the REST and WebSocket API (the default).
    Serve(Config),
    /// Mint an HS256 token for a user, signed with AUTH_JWT_SECRET.
    Token(TokenArgs),
    /// Apply the database migrations (DATABASE_URL) and exit.
    Migrate(MigrateArgs),
    /// Print the OpenAPI document of the REST API (docs/openapi.json).
    Openapi,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (the token's `sub`).
    #[arg(long)]
    pub user: String,
    /// Lifetime, e.g. `90s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    #[arg(long, env = "AUTH_JWT_SECRET", default_value = DEV_JWT_SECRET, hide_env_values = true, hide_default_value = true)]
    pub auth_jwt_secret: String,
    /// Written as `iss`, so a server with AUTH_JWT_ISSUER set accepts it.
    #[arg(long, env = "AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,
    /// Written as `aud`, so a server with AUTH_JWT_AUDIENCE set accepts it.
    #[arg(long, env = "AUTH_JWT_AUDIENCE")]
    pub auth_jwt_audience: Option<String>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_connect_timeout_seconds: u64,
}

/// An `AUTH_JWT_SECRETS` entry: `kid:secret`, or a secret alone.
fn split_kid(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once(':') {
        Some((kid, secret)) if !kid.is_empty() => (Some(kid), secret),
        _ => (None, entry),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Dev,
    Prod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    /// Human-readable lines; `text` is seed 004's name for it.
    #[value(alias = "text")]
    Pretty,
}

/// `RATE_LIMIT_FAIL_MODE`: what rate limiting does while Redis fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailMode {
    /// This replica's share of the cluster limit, in process.
    Local,
    /// Allow every request.
    Open,
    /// Refuse with 503 `unavailable`.
    Closed,
}

/// `OTEL_TRACES_EXPORTER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TracesExporter {
    Otlp,
    Console,
    None,
}

/// `OTEL_METRICS_EXPORTER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsExporter {
    /// Scraped from the management listener's /metrics only.
    Prometheus,
    /// Pushed over OTLP/HTTP as well; /metrics still answers.
    Otlp,
}

/// `OTEL_TRACES_SAMPLER`, with the OpenTelemetry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum TracesSampler {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

/// An address block, `10.0.0.0/8` or a single address (`/32`, `/128` implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has a prefix outside 0-{max}"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

/// The `TRUSTED_PROXIES` list: comma-separated addresses or CIDR blocks;
/// empty means no proxy is trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(IpNet::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl IpNet {
    /// Whether `ip` lies in the block (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[derive(Clone, Debug, Args)]
pub struct Config {
    /// `dev` or `prod`; prod means JSON logs and a real secret.
    #[arg(long, env = "APP_ENV", value_enum, default_value = "dev")]
    pub app_env: AppEnv,
    /// Address of the public listener (`0.0.0.0` in a container).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of the public listener.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// `json` or `pretty`; defaults to pretty in dev and json in prod.
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,collabd=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// HS256 secret for bearer tokens; also signs `collabd token`'s. Never
    /// logged. In prod it may be left unset when AUTH_JWKS_URL or
    /// AUTH_JWT_SECRETS says how tokens are signed.
    #[arg(long, env = "AUTH_JWT_SECRET", default_value = DEV_JWT_SECRET, hide_env_values = true, hide_default_value = true)]
    pub auth_jwt_secret: String,
    /// More HS256 secrets accepted, for rotation: comma-separated `kid:secret`
    /// (used for tokens whose header names that `kid`) or `secret` (tried in
    /// turn). Never logged.
    #[arg(
        long,
        env = "AUTH_JWT_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_jwt_secrets: Vec<String>,
    /// An identity provider's JWKS (RS256/384/512, PS*, ES256/384, EdDSA
    /// keys): an `https://` URL, or a file (`file:///path` or a path).
    #[arg(long, env = "AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// The JWKS is fetched again once its copy is this old: a key the
    /// provider removed stops verifying within this.
    #[arg(long, env = "AUTH_JWKS_REFRESH_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub auth_jwks_refresh_seconds: u64,
    /// A token with an unknown `kid` fetches the JWKS again, at most once
    /// per this long, whatever the traffic.
    #[arg(long, env = "AUTH_JWKS_MIN_REFRESH_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub auth_jwks_min_refresh_seconds: u64,
    /// When set, every token's `iss` must be exactly this.
    #[arg(long, env = "AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,
    /// When set, every token's `aud` must hold this value.
    #[arg(long, env = "AUTH_JWT_AUDIENCE")]
    pub auth_jwt_audience: Option<String>,
    /// A client must send a request's whole head (line and headers) within
    /// this long of its first byte (of connecting, for the first request),
    /// or its connection is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub http_header_timeout_seconds: u64,
    /// The longest an idle keep-alive connection is kept between requests;
    /// keep it above the load balancer's upstream idle timeout.
    #[arg(long, env = "HTTP_KEEPALIVE_TIMEOUT_SECONDS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_keepalive_timeout_seconds: u64,
    /// A request's whole body must arrive within this long of its head
    /// (slower: 408 request_timeout).
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub http_body_timeout_seconds: u64,
    /// Largest accepted request body in bytes (larger: 413 payload_too_large).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Turn on REST rate limiting.
    #[arg(long, env = "RATE_LIMIT_ENABLED", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub rate_limit_enabled: bool,
    /// Read routes: sustained requests per minute per user (or IP).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE_DEFAULT", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=MAX_PER_MINUTE))]
    pub rate_limit_per_minute_default: u32,
    /// Read routes: extra requests allowed in a burst.
    #[arg(long, env = "RATE_LIMIT_BURST_DEFAULT", default_value_t = 30)]
    pub rate_limit_burst_default: u32,
    /// Mutations: sustained requests per minute per user (or IP).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE_MUTATION", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=MAX_PER_MINUTE))]
    pub rate_limit_per_minute_mutation: u32,
    /// Mutations: extra requests allowed in a burst.
    #[arg(long, env = "RATE_LIMIT_BURST_MUTATION", default_value_t = 10)]
    pub rate_limit_burst_mutation: u32,
    /// Comma list of proxy addresses or CIDRs whose X-Forwarded-For is believed.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        default_value = "",
        hide_default_value = true
    )]
    pub trusted_proxies: TrustedProxies,

    /// Turn on the WebSocket socket caps below.
    #[arg(long, env = "WS_LIMITS_ENABLED", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ws_limits_enabled: bool,
    /// Open sockets one user may hold.
    #[arg(long, env = "WS_MAX_SOCKETS_PER_USER", default_value_t = 3)]
    pub ws_max_sockets_per_user: u32,
    /// Open sockets on one draft.
    #[arg(long, env = "WS_MAX_SOCKETS_PER_DRAFT", default_value_t = 100)]
    pub ws_max_sockets_per_draft: u32,
    /// Open sockets on the whole server.
    #[arg(long, env = "WS_MAX_SOCKETS_GLOBAL", default_value_t = 1000)]
    pub ws_max_sockets_global: u32,
    /// Largest inbound WebSocket message in bytes (always enforced).
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..))]
    pub ws_max_message_bytes: u32,
    /// Comma list of allowed `Origin` values; `*` allows any.
    #[arg(
        long,
        env = "WS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub ws_allowed_origins: Vec<String>,
    /// Comma list of exact origins (`https://app.example.com`) whose pages
    /// may call the REST API from a browser; empty: no CORS headers at all.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Seconds between the server's WebSocket pings on each socket.
    #[arg(long, env = "WS_PING_INTERVAL_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ws_ping_interval_seconds: u64,
    /// A socket that sends nothing (no frame, no pong) for this long is
    /// closed and its lease released: a vanished client cannot hold a slot.
    #[arg(long, env = "WS_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub ws_idle_timeout_seconds: u64,
    /// Client frames one socket may send per second, sustained.
    #[arg(long, env = "WS_INBOUND_PER_SECOND", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ws_inbound_per_second: u32,
    /// Client frames one socket may send at once; a whole burst refused in a
    /// row closes the socket with `rate_limited`.
    #[arg(long, env = "WS_INBOUND_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ws_inbound_burst: u32,
    /// How often each replica checks its rooms' heads against the store, so
    /// an event the fanout lost (a cut, a lost reply) reaches watchers
    /// within this long even if the draft then goes quiet.
    #[arg(long, env = "ROOM_HEAD_CHECK_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub room_head_check_seconds: u64,
    /// Events queued per socket before the client counts as a slow consumer.
    #[arg(long, env = "WS_OUTBOUND_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_outbound_queue: u32,

    /// Hard cap on collaborators per draft (adding more: 409 limit_exceeded).
    #[arg(long, env = "MAX_COLLABORATORS_PER_DRAFT")]
    pub max_collaborators_per_draft: Option<u32>,
    /// Soft cap on segments per draft: past it appends still succeed and log a WARN.
    #[arg(long, env = "MAX_SEGMENTS_PER_DRAFT")]
    pub max_segments_per_draft: Option<u64>,
    /// Cost cap on open sockets per draft, enforced whether or not WS_LIMITS_ENABLED is.
    #[arg(long, env = "MAX_WS_CONNECTIONS_PER_DRAFT")]
    pub max_ws_connections_per_draft: Option<u32>,

    /// Record audit rows for create, append, pass and add-collaborator.
    #[arg(long, env = "AUDIT_ENABLED", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub audit_enabled: bool,
    /// Fraction of audited actions recorded, 0.0 to 1.0.
    #[arg(long, env = "AUDIT_SAMPLE_RATE", default_value_t = 1.0)]
    pub audit_sample_rate: f64,

    /// Postgres URL (`postgres://user:pass@host:5432/db`). Set: drafts, events
    /// and audit rows live in Postgres and replicas can share them. Unset: memory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in this replica's pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,
    /// Deadline for connecting to Postgres or waiting for a pooled connection.
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_connect_timeout_seconds: u64,
    /// Deadline for one store operation; past it the request gets 503 unavailable.
    #[arg(long, env = "DATABASE_QUERY_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_query_timeout_seconds: u64,

    /// Redis URL (`redis://host:6379/0`, `rediss://` for TLS), or a Redis
    /// Cluster's (`redis-cluster://host:6379?node=host2:6379&node=...`,
    /// `rediss-cluster://`), whose rooms then use sharded pub/sub. Set together
    /// with DATABASE_URL: cluster mode, with room fanout, rate limits and socket
    /// caps shared by all replicas.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "collabd:")]
    pub redis_key_prefix: String,
    /// Connections in this replica's Redis pool (plus one for subscriptions).
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub redis_pool_size: u32,
    /// Deadline for connecting to Redis and for each command.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub redis_timeout_ms: u64,
    /// A replica that stops renewing its socket lease for this long stops counting.
    #[arg(long, env = "WS_LEASE_TTL_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub ws_lease_ttl_seconds: u64,
    /// When Redis fails: `local` (this replica's share of the limit), `open` or `closed` (503).
    #[arg(
        long,
        env = "RATE_LIMIT_FAIL_MODE",
        value_enum,
        default_value = "local"
    )]
    pub rate_limit_fail_mode: FailMode,

    /// Turn on OpenTelemetry tracing (also on when an OTLP endpoint or the
    /// console exporter is set).
    #[arg(long, env = "OTEL_ENABLED", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub otel_enabled: bool,
    /// OTLP/HTTP collector base URL, e.g. http://lgtm:4318 (`/v1/traces` and
    /// `/v1/metrics` are appended).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// `otlp` (default), `console` (spans on stdout) or `none`.
    #[arg(long, env = "OTEL_TRACES_EXPORTER", value_enum)]
    pub otel_traces_exporter: Option<TracesExporter>,
    /// The service name spans carry.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "collabd")]
    pub otel_service_name: String,
    /// always_on, always_off, traceidratio, parentbased_always_on (default),
    /// parentbased_always_off, parentbased_traceidratio.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum)]
    pub otel_traces_sampler: Option<TracesSampler>,
    /// The ratio for the ratio samplers, 0.0 to 1.0.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub otel_traces_sampler_arg: Option<f64>,
    /// `prometheus` (scrape /metrics only) or `otlp` (push them too).
    #[arg(
        long,
        env = "OTEL_METRICS_EXPORTER",
        value_enum,
        default_value = "prometheus"
    )]
    pub otel_metrics_exporter: MetricsExporter,
    /// Where metrics are pushed, in full (default: the OTLP endpoint + `/v1/metrics`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")]
    pub otel_exporter_otlp_metrics_endpoint: Option<String>,
    /// Milliseconds between two metric pushes.
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub otel_metric_export_interval: u64,
    /// Milliseconds one metric push may take.
    #[arg(long, env = "OTEL_METRIC_EXPORT_TIMEOUT", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub otel_metric_export_timeout: u64,

    /// Management listener: /metrics, /healthz, /readyz. Never the public port.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: std::net::SocketAddr,
    /// When set, /metrics requires `Authorization: Bearer <this>`.
    #[arg(long, env = "METRICS_AUTH_TOKEN", hide_env_values = true)]
    pub metrics_auth_token: Option<String>,
    /// How often the state gauges (drafts, segments, audit rows) are polled,
    /// by one replica at a time.
    #[arg(long, env = "STATE_METRICS_INTERVAL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub state_metrics_interval_seconds: u64,

    /// On SIGTERM: how long open sockets and requests get to finish.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 10)]
    pub shutdown_timeout_seconds: u64,
    /// On SIGTERM: how long to keep accepting (answering /readyz with 503)
    /// before closing the listener, so a load balancer can notice first.
    #[arg(long, env = "SHUTDOWN_DRAIN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_drain_delay_seconds: u64,
}

/// A configuration that cannot run, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl Config {
    /// The settings a test or embedder starts from: every default, no
    /// environment read.
    pub fn defaults() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        // Parsing an empty command line still consults the environment; clear
        // that influence by building from defaults and ignoring env values.
        let mut cmd = <Only as clap::CommandFactory>::command();
        cmd = cmd.mut_args(|arg| arg.env(None::<&str>));
        let matches = cmd
            .try_get_matches_from(["collabd"])
            .expect("defaults always parse");
        <Only as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("defaults always parse")
            .config
    }

    /// The HS256 secrets accepted, as (kid, secret), the minting one first.
    /// In prod the built-in dev secret is never among them.
    pub fn shared_secrets(&self) -> Vec<(Option<String>, String)> {
        let dev_only = self.app_env == AppEnv::Prod && self.auth_jwt_secret == DEV_JWT_SECRET;
        let main = (!dev_only).then(|| (None, self.auth_jwt_secret.clone()));
        main.into_iter()
            .chain(self.auth_jwt_secrets.iter().map(|entry| {
                let (kid, secret) = split_kid(entry);
                (kid.map(str::to_owned), secret.to_owned())
            }))
            .collect()
    }

    /// Checks the rules a single flag cannot express, one `ensure` each.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let prod = self.app_env == AppEnv::Prod;
        let secret = &self.auth_jwt_secret;
        let other_signers = self.auth_jwks_url.is_some() || !self.auth_jwt_secrets.is_empty();
        ensure(
            !prod || secret != DEV_JWT_SECRET || other_signers,
            "AUTH_JWT_SECRET",
            || {
                "APP_ENV=prod needs a real secret, not the built-in dev one (or AUTH_JWKS_URL)"
                    .into()
            },
        )?;
        ensure(
            !prod || secret == DEV_JWT_SECRET || secret.len() >= MIN_PROD_SECRET_BYTES,
            "AUTH_JWT_SECRET",
            || format!("must be at least {MIN_PROD_SECRET_BYTES} bytes in prod"),
        )?;
        let weak = self.auth_jwt_secrets.iter().find(|entry| {
            let secret = split_kid(entry).1;
            secret.is_empty()
                || (prod && (secret.len() < MIN_PROD_SECRET_BYTES || secret == DEV_JWT_SECRET))
        });
        ensure(weak.is_none(), "AUTH_JWT_SECRETS", || {
            format!("every secret must be non-empty, and in prod at least {MIN_PROD_SECRET_BYTES} bytes and not the dev one")
        })?;
        ensure(
            !prod
                || self
                    .auth_jwks_url
                    .as_ref()
                    .is_none_or(|url| !url.starts_with("http://")),
            "AUTH_JWKS_URL",
            || {
                "must be https:// (or a file) in prod: keys fetched in the clear could be swapped"
                    .into()
            },
        )?;
        ensure(
            self.auth_jwks_min_refresh_seconds <= self.auth_jwks_refresh_seconds,
            "AUTH_JWKS_MIN_REFRESH_SECONDS",
            || "must not exceed AUTH_JWKS_REFRESH_SECONDS".into(),
        )?;
        ensure(!secret.is_empty(), "AUTH_JWT_SECRET", || {
            "must not be empty".into()
        })?;
        ensure(
            (0.0..=1.0).contains(&self.audit_sample_rate),
            "AUDIT_SAMPLE_RATE",
            || format!("{} is not between 0.0 and 1.0", self.audit_sample_rate),
        )?;
        ensure(self.max_body_bytes >= 256, "MAX_BODY_BYTES", || {
            "must be at least 256".into()
        })?;
        ensure(
            tracing_subscriber::EnvFilter::try_new(&self.log_level).is_ok(),
            "LOG_LEVEL",
            || format!("{:?} is not a valid filter", self.log_level),
        )?;
        ensure(
            self.database_url
                .as_ref()
                .is_none_or(|url| url.parse::<tokio_postgres::Config>().is_ok()),
            "DATABASE_URL",
            || "is not a valid Postgres URL".into(),
        )?;
        ensure(
            self.redis_url.is_none() || self.database_url.is_some(),
            "REDIS_URL",
            || "cluster mode also needs DATABASE_URL (drafts live in Postgres)".into(),
        )?;
        ensure(
            self.redis_url
                .as_ref()
                .is_none_or(|url| fred::prelude::Config::from_url(url).is_ok()),
            "REDIS_URL",
            || "is not a valid Redis URL".into(),
        )?;
        let prefix = &self.redis_key_prefix;
        ensure(
            !prefix.is_empty()
                && !prefix
                    .chars()
                    .any(|c| c.is_whitespace() || c == '{' || c == '}'),
            "REDIS_KEY_PREFIX",
            || "must be non-empty, without spaces or braces".into(),
        )?;
        ensure(
            self.ws_idle_timeout_seconds > self.ws_ping_interval_seconds,
            "WS_IDLE_TIMEOUT_SECONDS",
            || "must be longer than WS_PING_INTERVAL_SECONDS, or a live client times out".into(),
        )?;
        ensure(
            !self.ws_allowed_origins.iter().any(|o| o.trim().is_empty()),
            "WS_ALLOWED_ORIGINS",
            || "contains an empty entry".into(),
        )?;
        let bad_origin = self
            .cors_allowed_origins
            .iter()
            .find(|o| !is_exact_origin(o));
        ensure(bad_origin.is_none(), "CORS_ALLOWED_ORIGINS", || {
            format!(
                "{:?} is not an exact origin like https://app.example.com (scheme, host, optional port; no path, no *)",
                bad_origin.map(String::as_str).unwrap_or_default()
            )
        })
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(match self.app_env {
            AppEnv::Dev => LogFormat::Pretty,
            AppEnv::Prod => LogFormat::Json,
        })
    }

    pub fn database_query_timeout(&self) -> Duration {
        Duration::from_secs(self.database_query_timeout_seconds)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }
}

/// One rule of `Config::validate`: `Err` naming `variable` unless `holds`.
fn ensure(
    holds: bool,
    variable: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError {
            variable,
            reason: reason(),
        })
    }
}

/// Parses `90s`, `15m`, `1h`, `7d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use s, m, h or d"
            ))
        }
    };
    amount
        .checked_mul(seconds)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cors_origins_are_spelled_as_browsers_send_them() {
        for good in [
            "http://127.0.0.1:8090",
            "https://app.example.com",
            "http://localhost:3000",
            "http://[::1]:8080",
        ] {
            assert!(is_exact_origin(good), "{good}");
        }
        for bad in [
            "*",
            "app.example.com",
            "https://App.example.com",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "https://app.example.com/",
            "https://app.example.com/path",
            "http://:8080",
            "http://app:99999",
            "ftp://app.example.com",
        ] {
            assert!(!is_exact_origin(bad), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn prod_refuses_the_dev_secret_naming_the_variable() {
        let mut config = Config::defaults();
        config.app_env = AppEnv::Prod;
        let err = config.validate().unwrap_err();
        assert_eq!(err.variable, "AUTH_JWT_SECRET");
        config.auth_jwt_secret = "short".into();
        assert_eq!(config.validate().unwrap_err().variable, "AUTH_JWT_SECRET");
        config.auth_jwt_secret = "x".repeat(MIN_PROD_SECRET_BYTES);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn prod_with_an_identity_provider_needs_no_secret_but_never_takes_the_dev_one() {
        let mut config = Config::defaults();
        config.app_env = AppEnv::Prod;
        config.auth_jwks_url = Some("https://idp.example/jwks.json".into());
        assert!(config.validate().is_ok());
        assert!(config.shared_secrets().is_empty());
        // Keys fetched in the clear could be swapped on the way.
        config.auth_jwks_url = Some("http://idp.example/jwks.json".into());
        assert_eq!(config.validate().unwrap_err().variable, "AUTH_JWKS_URL");
        config.auth_jwks_url = Some("/etc/collabd/jwks.json".into());
        assert!(config.validate().is_ok());
        // Nor through the rotation list.
        config.auth_jwt_secrets = vec![format!("old:{DEV_JWT_SECRET}")];
        assert_eq!(config.validate().unwrap_err().variable, "AUTH_JWT_SECRETS");
        config.auth_jwt_secrets = vec![
            format!("old:{}", "y".repeat(MIN_PROD_SECRET_BYTES)),
            "z".repeat(MIN_PROD_SECRET_BYTES),
        ];
        assert!(config.validate().is_ok());
        assert_eq!(
            config.shared_secrets(),
            vec![
                (Some("old".to_owned()), "y".repeat(MIN_PROD_SECRET_BYTES)),
                (None, "z".repeat(MIN_PROD_SECRET_BYTES)),
            ]
        );
    }

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }

    #[test]
    fn trusted_proxy_lists_parse_and_may_be_empty() {
        assert_eq!("".parse::<TrustedProxies>().unwrap().0.len(), 0);
        let two = " 10.0.0.0/8, ::1 ,".parse::<TrustedProxies>().unwrap();
        assert_eq!(two.0.len(), 2);
        assert!(two.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/8,bogus".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn samplers_take_their_opentelemetry_names() {
        let names: Vec<String> = TracesSampler::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "always_on",
                "always_off",
                "traceidratio",
                "parentbased_always_on",
                "parentbased_always_off",
                "parentbased_traceidratio"
            ]
        );
    }

    #[test]
    fn sample_rate_must_be_a_fraction() {
        let mut config = Config::defaults();
        config.audit_sample_rate = 1.5;
        assert_eq!(config.validate().unwrap_err().variable, "AUDIT_SAMPLE_RATE");
    }

    #[test]
    fn defaults_are_safe_for_a_laptop() {
        let config = Config::defaults();
        assert!(!config.rate_limit_enabled);
        assert!(!config.ws_limits_enabled);
        assert!(!config.audit_enabled);
        assert_eq!(config.port, 3000);
        assert_eq!(config.ws_max_message_bytes, 4096);
        assert_eq!(config.rate_limit_per_minute_default, 120);
        assert_eq!(config.rate_limit_burst_default, 30);
        assert_eq!(config.log_format(), LogFormat::Pretty);
        assert!(config.validate().is_ok());
    }
}
