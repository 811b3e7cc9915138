//! Building and running the scheduler's server: bind (port 0 picks a free
//! port, which tests use), serve, and stop gracefully when told.

use std::net::SocketAddr;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::changes::watch_inventory;
use crate::http::{app, AppState};

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    read_cache: bool,
}

impl Application {
    /// Binds `listen`; the database must already be migrated. With
    /// `read_cache`, inventory reads are cached (see `http::cache`).
    pub async fn build(pool: PgPool, listen: SocketAddr, read_cache: bool) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        Ok(Application { listener, state: AppState::new(pool), read_cache })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let watcher = self.read_cache.then(|| {
            let (pool, cache, stop) = (self.state.pool.clone(), self.state.read_cache.clone(), shutdown.clone());
            tokio::spawn(async move { watch_inventory(pool, stop, |change| cache.on_change(change)).await })
        });
        let served = axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Some(watcher) = watcher {
            // It stops on the same token; a panic in it would already have been logged.
            let _ = watcher.await;
        }
        served
    }
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted; shutting down"),
            _ = term => tracing::info!("SIGTERM; shutting down"),
        }
        trigger.cancel();
    });
    token
}
