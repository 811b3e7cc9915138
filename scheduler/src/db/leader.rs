//! Leading: the background duties exactly one replica performs at a time
//! (rebalancing, polling the feeds). A leader holds a Postgres advisory
//! lock on a connection of its own; when its process dies the connection
//! ends, Postgres releases the lock, and the next replica to try takes it.
//! Every duty takes, checks and lets go of its lead the same way, here.

use sqlx::{Connection, PgConnection, PgPool};

use super::Result;

/// A duty one replica performs at a time; each has its own advisory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// The hourly rebalancer (`crate::rebalancer`).
    Rebalancing,
    /// Polling the provider feeds (`crate::feeds::poller`).
    FeedPolling,
}

impl Duty {
    /// The advisory lock's key: eight bytes of its name ("helioreb", "helio-fe").
    fn key(self) -> i64 {
        match self {
            Duty::Rebalancing => 0x6865_6c69_6f72_6562,
            Duty::FeedPolling => 0x6865_6c69_6f2d_6665,
        }
    }
}

/// A held lead: the connection whose session holds the duty's lock.
pub struct Lead {
    connection: PgConnection,
    duty: Duty,
}

/// The lead of `duty`, if no other replica holds it.
pub async fn take(pool: &PgPool, duty: Duty) -> Result<Option<Lead>> {
    let mut connection = PgConnection::connect_with(&pool.connect_options()).await?;
    let got: bool =
        sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(duty.key()).fetch_one(&mut connection).await?;
    if got {
        Ok(Some(Lead { connection, duty }))
    } else {
        connection.close().await?;
        Ok(None)
    }
}

impl Lead {
    /// Whether the lock's connection still answers and holds the lock (taking
    /// a session lock again only counts it up, which the unlock counts down).
    /// Why not, if the connection failed, is logged.
    pub async fn still_held(&mut self) -> bool {
        match self.try_still_held().await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(duty = ?self.duty, %error, "the lead's connection failed");
                false
            }
        }
    }

    async fn try_still_held(&mut self) -> Result<bool> {
        let key = self.duty.key();
        let held: bool =
            sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(key).fetch_one(&mut self.connection).await?;
        if held {
            sqlx::query("select pg_advisory_unlock($1)").bind(key).execute(&mut self.connection).await?;
        }
        Ok(held)
    }

    /// Lets the lead go before the connection closes (a graceful stop).
    pub async fn release(mut self) -> Result<()> {
        sqlx::query("select pg_advisory_unlock($1)").bind(self.duty.key()).execute(&mut self.connection).await?;
        self.connection.close().await?;
        Ok(())
    }
}
