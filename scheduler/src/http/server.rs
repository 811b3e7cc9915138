//! The API's connection loop. `axum::serve` sets no header timeout and
//! takes every connection it is offered, so a client that opens sockets
//! and sends nothing, or a header a byte at a time, held descriptors and
//! memory for as long as it liked. Here each connection has a deadline
//! for every request head (the wait for the next request on a kept-alive
//! connection included), a bounded read buffer and a bounded time to send
//! its body; connections over the cap are closed as they arrive; a failed
//! accept (out of descriptors, say) pauses the loop, never ends it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Bounds on what one client may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// Time for a request's head to arrive, counted from when the server
    /// starts waiting for it (so also the idle time allowed between requests).
    pub header_timeout: Duration,
    /// Time for a request's body to arrive.
    pub body_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

impl ConnectionLimits {
    /// Refuses settings the server cannot run with.
    pub fn check(&self) -> Result<(), String> {
        if self.header_timeout < Duration::from_millis(100) || self.body_timeout < Duration::from_millis(100) {
            return Err("--header-timeout and --body-timeout must be at least 100ms".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        Ok(())
    }
}

/// Largest read buffer per connection: a request head must fit (hyper's default is 400 KiB).
const MAX_READ_BUFFER: usize = 64 * 1024;
/// The pause after a failed accept; longer when descriptors or memory ran out.
const RETRY: Duration = Duration::from_millis(20);
const RETRY_EXHAUSTED: Duration = Duration::from_millis(200);
/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets
/// open connections finish their requests (for at most [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout));
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(MAX_READ_BUFFER);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    metrics.connection_failed_accept();
                    let exhausted =
                        matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM));
                    tracing::warn!(error = %e, "accepting an API connection failed; trying again");
                    tokio::time::sleep(if exhausted { RETRY_EXHAUSTED } else { RETRY }).await;
                    continue;
                }
            },
        };
        // Over the cap: closed at once, its descriptor freed.
        let Ok(place) = places.clone().try_acquire_owned() else {
            metrics.connection_refused();
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|never| match never {})) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        let open = metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
            drop((place, open));
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {DRAIN:?} after shutdown began; closing them");
    }
}

/// The peer address of a request served by [`serve`] (none for requests
/// that did not come through it, such as a test's `oneshot`).
pub fn peer(request: &axum::extract::Request) -> Option<SocketAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| *peer)
}
