//! The HTTP/1 server loop: a router on hyper connections, with what
//! `axum::serve` lacks, a clock on each connection's request cycle:
//!
//! - **head**: from the first byte of a request head (or the opening of the
//!   connection) to its last, at most `HTTP_HEADER_TIMEOUT_SECONDS` (a
//!   client that trickles its head, or connects and says nothing, cannot
//!   hold a connection, and a file descriptor, for long);
//! - **idle**: between a response sent whole and the first byte of the next request,
//!   at most `HTTP_KEEPALIVE_TIMEOUT_SECONDS` (keep it above the load
//!   balancer's upstream idle timeout, or it may reuse a connection the
//!   server has just closed).
//!
//! Either limit closes the connection, as hyper's own header timer would
//! (hyper has one timer for both, which would force one value on two
//! different needs). The body has its own limit, in `http::body`. The loop
//! also gives handlers the peer address (`ConnectInfo`), lets WebSocket
//! upgrades through (the clock stops at the upgrade), and shuts down
//! gracefully: no new connections, idle ones closed, busy ones finish
//! (`app::run` bounds the wait), slow ones still cut by the clock.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// How long an accept error (out of file descriptors, say) pauses the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long a connection may spend in each part of its request cycle.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From the first byte of a request head to its last.
    pub header: Duration,
    /// From a response to the first byte of the next request.
    pub keep_alive: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then closes idle
/// connections, lets busy ones finish their request, and returns when all
/// are gone.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
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
            timeouts,
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
/// a graceful end when the server closes. The clock closes it when a head
/// or an idle spell runs over, draining or not.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    timeouts: Timeouts,
    closing: CancellationToken,
) {
    // A fresh connection owes its first request head at once.
    let (cycle, clock) = watch::channel(Cycle::now(Phase::Head));
    let cycle = Arc::new(cycle);
    let io = Watched {
        inner: stream,
        cycle: cycle.clone(),
    };
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        let cycle = cycle.clone();
        cycle.send_replace(Cycle::now(Phase::Busy));
        async move {
            // A router never fails: its errors are responses.
            let response = app.call(req.map(Body::new)).await;
            response.map(|response| response.map(|body| Body::new(Sending { body, cycle })))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = pin!(conn);
    let mut clock = pin!(overrun(clock, timeouts));
    let overran = tokio::select! {
        _ = conn.as_mut() => return,
        phase = clock.as_mut() => phase,
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => return,
                phase = clock.as_mut() => phase,
            }
        }
    };
    tracing::debug!(phase = overran.as_str(), "connection closed: too slow");
}

/// A response body on its way out: when hyper has sent it whole (or given
/// up on it) and drops it, the connection is idle again.
struct Sending {
    body: Body,
    cycle: Arc<watch::Sender<Cycle>>,
}

impl HttpBody for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.cycle.send_replace(Cycle::idle());
    }
}

/// Where a connection is in its request cycle, and since when.
#[derive(Clone, Copy, Debug)]
struct Cycle {
    phase: Phase,
    since: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request.
    Idle,
    /// A request head is arriving.
    Head,
    /// The app has the request (its body has a limit of its own).
    Busy,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Head => "head",
            Phase::Busy => "busy",
        }
    }
}

impl Cycle {
    fn now(phase: Phase) -> Cycle {
        Cycle {
            phase,
            since: Instant::now(),
        }
    }

    fn idle() -> Cycle {
        Cycle::now(Phase::Idle)
    }
}

/// Resolves with the phase that ran over its limit; never while busy.
async fn overrun(mut cycle: watch::Receiver<Cycle>, timeouts: Timeouts) -> Phase {
    loop {
        let now = *cycle.borrow_and_update();
        let limit = match now.phase {
            Phase::Idle => Some(timeouts.keep_alive),
            Phase::Head => Some(timeouts.header),
            Phase::Busy => None,
        };
        let over = async {
            match limit {
                Some(limit) => tokio::time::sleep_until(now.since + limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = over => return now.phase,
            changed = cycle.changed() => {
                if changed.is_err() {
                    // The connection is gone; nothing left to time.
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// The connection's socket, telling the clock when the first byte of a
/// request arrives.
struct Watched {
    inner: TcpStream,
    cycle: Arc<watch::Sender<Cycle>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        // Once upgraded, nobody keeps time: skip the lock.
        let timed = this.cycle.receiver_count() > 0;
        if timed && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.cycle.send_if_modified(|cycle| {
                let starts_a_head = cycle.phase == Phase::Idle;
                if starts_a_head {
                    *cycle = Cycle::now(Phase::Head);
                }
                starts_a_head
            });
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
