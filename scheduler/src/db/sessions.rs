//! Browser sessions: the digest of each session's secret, the token it
//! acts for and when it ends. Deleting the token deletes its sessions.

use std::time::Duration;

use heliotrope_api_spec::Role;
use sqlx::PgPool;

use super::{enum_from_text, Result};

/// Opens a session for `token_id` lasting `lasts`; sessions long expired are dropped on the way.
pub async fn open(pool: &PgPool, digest: &[u8; 32], token_id: i64, lasts: Duration) -> Result<()> {
    sqlx::query("delete from browser_session where expires_at < now() - interval '1 day'").execute(pool).await?;
    sqlx::query(
        "insert into browser_session (digest, token_id, expires_at) \
         values ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(&digest[..])
    .bind(token_id)
    .bind(lasts.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// The token and role a live session acts for.
pub async fn authenticate(pool: &PgPool, digest: &[u8; 32]) -> Result<Option<(i64, Role)>> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "select t.token_id, t.role from browser_session s join api_token t using (token_id) \
         where s.digest = $1 and s.expires_at > now()",
    )
    .bind(&digest[..])
    .fetch_optional(pool)
    .await?;
    row.map(|(id, role)| Ok((id, enum_from_text(role)?))).transpose()
}

/// Ends a session (nothing happens for one that does not exist).
pub async fn close(pool: &PgPool, digest: &[u8; 32]) -> Result<()> {
    sqlx::query("delete from browser_session where digest = $1").bind(&digest[..]).execute(pool).await?;
    Ok(())
}
