//! Outbound HTTP(S), shared by the adapters that call out (the JWKS fetch,
//! the OTLP metrics push): hyper's client with rustls on ring and the
//! platform's CA roots, `http://` allowed too.

use axum::http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A client for bodies of type `B`; fails only when the platform has no CA
/// certificates to check a server with.
pub fn client<B>() -> Result<Client<HttpsConnector<HttpConnector>, B>, String>
where
    B: axum::body::HttpBody + Send,
    B::Data: Send,
{
    let connector = HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("no CA certificates to check it with: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// A URL as messages show it: scheme, host, port and path, without
/// credentials or a query string that could hold a token.
pub fn shown(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{}", uri.path())
}
