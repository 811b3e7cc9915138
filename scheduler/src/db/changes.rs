//! Change notifications: the inventory's triggers `NOTIFY` a channel on
//! every committed change (see the `inventory_notify` migration); this
//! module listens, so that what a replica caches can be dropped the moment
//! the data under it changes, wherever the change came from. Migrations'
//! news (changes of state, progress) travels the same way, so that every
//! replica can stream all of it to dashboards.

use std::time::Duration;

use heliotrope_api_spec::MigrationNews;
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
    watch(pool, INVENTORY_CHANNEL, stop, |notice| {
        on_change(match notice {
            Notice::Listening => Change::Listening,
            Notice::Payload(_) => Change::Changed,
            Notice::Lost => Change::Lost,
        })
    })
    .await
}

/// The channel migration news goes out on: changes of state from the
/// `migration_event` trigger, progress from `db::dispatch::progress`.
pub const NEWS_CHANNEL: &str = "heliotrope_events";

/// Passes every migration's news, from whichever replica it came, to
/// `on_news` until `stop` is cancelled. News sent while the connection is
/// lost is lost (the migrations' logs keep every change of state).
pub async fn watch_migrations(pool: PgPool, stop: CancellationToken, on_news: impl Fn(MigrationNews)) {
    watch(pool, NEWS_CHANNEL, stop, |notice| {
        if let Notice::Payload(payload) = notice {
            match serde_json::from_str(payload) {
                Ok(news) => on_news(news),
                Err(error) => tracing::warn!(%error, payload, "unreadable migration news"),
            }
        }
    })
    .await
}

/// The three things a channel's watcher sees.
enum Notice<'a> {
    Listening,
    Payload(&'a str),
    Lost,
}

async fn watch(pool: PgPool, channel: &str, stop: CancellationToken, on_notice: impl Fn(Notice)) {
    while !stop.is_cancelled() {
        let mut listener = match listen(&pool, channel).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, channel, "cannot listen for notifications; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        on_notice(Notice::Listening);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => on_notice(Notice::Payload(notification.payload())),
                    Ok(None) | Err(_) => {
                        tracing::warn!(channel, "lost the notification listener; reconnecting");
                        on_notice(Notice::Lost);
                        break;
                    }
                },
            }
        }
    }
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
