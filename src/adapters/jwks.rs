//! Where `AUTH_JWKS_URL` points: an `https://` (or `http://`) URL, fetched
//! with a 5 s timeout and a 1 MiB limit, or a file (`file:///path` or a
//! plain path) that an operator or a sidecar keeps current.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::outbound::{self, shown};
use crate::error::Error;
use crate::ports::KeySetSource;

/// A key set is a few KiB; anything far larger is not one.
const MAX_BYTES: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

/// The source `AUTH_JWKS_URL` names.
pub fn source(location: &str) -> Result<Arc<dyn KeySetSource>, Error> {
    if location.starts_with("https://") || location.starts_with("http://") {
        Ok(Arc::new(HttpJwks::new(location)?))
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        Ok(Arc::new(FileJwks {
            path: PathBuf::from(path),
        }))
    }
}

/// A JWKS served over HTTP(S), as identity providers publish it.
pub struct HttpJwks {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: Uri,
    shown: String,
}

impl HttpJwks {
    pub fn new(url: &str) -> Result<HttpJwks, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::internal(format!("not a URL: {e}")))?;
        let client =
            outbound::client().map_err(|e| Error::internal(format!("{}: {e}", shown(&uri))))?;
        Ok(HttpJwks {
            client,
            shown: shown(&uri),
            url: uri,
        })
    }
}

#[async_trait]
impl KeySetSource for HttpJwks {
    async fn fetch(&self) -> Result<String, Error> {
        let failed = |e: &dyn std::fmt::Display| {
            Error::unavailable(format!("cannot fetch the JWKS at {}: {e}", self.shown))
        };
        let fetch = async {
            let response = self
                .client
                .get(self.url.clone())
                .await
                .map_err(|e| failed(&e))?;
            if !response.status().is_success() {
                return Err(failed(&format!("HTTP {}", response.status())));
            }
            let body = Limited::new(response.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| failed(&e))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|e| failed(&e))
        };
        tokio::time::timeout(TIMEOUT, fetch)
            .await
            .map_err(|_| failed(&"no answer within 5 s"))?
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

/// A JWKS in a file.
pub struct FileJwks {
    path: PathBuf,
}

#[async_trait]
impl KeySetSource for FileJwks {
    async fn fetch(&self) -> Result<String, Error> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(Error::internal)?;
        read.map_err(|e| {
            Error::unavailable(format!(
                "cannot read the JWKS at {}: {e}",
                self.path.display()
            ))
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
