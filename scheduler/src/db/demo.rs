//! The mark a demo leaves on the database it made (see `crate::demo::state`).

use sqlx::PgExecutor;

use super::Result;

/// The demo instance this database belongs to, if the demo made it.
pub async fn instance(db: impl PgExecutor<'_>) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("select instance from demo").fetch_optional(db).await?)
}

/// Marks the database as demo `instance`'s.
pub async fn mark(db: impl PgExecutor<'_>, instance: &str) -> Result<()> {
    sqlx::query("insert into demo (instance) values ($1) on conflict (singleton) do update set instance = $1")
        .bind(instance)
        .execute(db)
        .await?;
    Ok(())
}
