//! Change notifications: the inventory's triggers `NOTIFY` a channel on
//! every committed change (see the `inventory_notify` migration); this
//! module listens, so that what a replica caches can be dropped the moment
//! the data under it changes, wherever the change came from.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The channel the inventory triggers notify.
pub const INVENTORY_CHANNEL: &str = "heliotrope_inventory";

/// What a watcher learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Listening (again): from now on, every change will be reported.
    Listening,
    /// Something in the inventory changed.
    Changed,
    /// The listening connection is gone: changes may go unreported until `Listening`.
    Lost,
}

/// Reports inventory changes to `on_change` until `stop` is cancelled,
/// reconnecting after a lost connection.
pub async fn watch_inventory(pool: PgPool, stop: CancellationToken, on_change: impl Fn(Change)) {
    while !stop.is_cancelled() {
        let mut listener = match listen(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for inventory changes; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        on_change(Change::Listening);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => on_change(Change::Changed),
                    Ok(None) | Err(_) => {
                        tracing::warn!("lost the inventory change listener; reconnecting");
                        on_change(Change::Lost);
                        break;
                    }
                },
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(INVENTORY_CHANNEL).await?;
    Ok(listener)
}
