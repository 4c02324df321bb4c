//! The HTTP/1 server loop: a router on hyper connections, with what
//! `axum::serve` lacks: a header-read timeout (`HTTP_HEADER_TIMEOUT_SECONDS`),
//! so a client that trickles its request head cannot hold a connection (and
//! a file descriptor) forever. Hyper applies the same timer while a
//! keep-alive connection waits for its next request, so it is also the
//! longest an idle connection is kept: keep it above the load balancer's
//! idle timeout. It also gives handlers the peer address
//! (`ConnectInfo`), lets WebSocket upgrades through, and shuts down
//! gracefully: no new connections, idle ones closed, busy ones finish.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// How long an accept error (out of file descriptors, say) pauses the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then closes idle
/// connections, lets busy ones finish their request, and returns when all
/// are gone.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            // One client's connection failed before we took it: nothing to wait for.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                tracing::error!(error.message = %e, "accepting a connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = &mut shutdown => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            peer,
            app.clone(),
            header_timeout,
            closing.clone(),
        ));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors that concern one incoming connection, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// One connection: requests in turn (keep-alive), an upgrade if asked, and
/// a graceful end when the server closes.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    closing: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        // A router never fails: its errors are responses.
        async move { app.call(req.map(Body::new)).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closing.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
