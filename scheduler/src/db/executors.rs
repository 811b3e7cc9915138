//! Executors, read-only until dispatch adds registration.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Executor, ExecutorFilter};
use sqlx::PgPool;

use super::{enum_from_text, enum_to_text, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};

#[derive(sqlx::FromRow)]
struct ExecutorRow {
    executor_id: i64,
    site: String,
    address: String,
    last_heartbeat: Option<DateTime<Utc>>,
    state: String,
}

impl TryFrom<ExecutorRow> for Executor {
    type Error = sqlx::Error;
    fn try_from(r: ExecutorRow) -> std::result::Result<Executor, sqlx::Error> {
        Ok(Executor {
            id: r.executor_id,
            site: r.site,
            address: r.address,
            last_heartbeat: r.last_heartbeat,
            state: enum_from_text(r.state)?,
        })
    }
}

const SELECT: &str = "select e.executor_id, s.name as site, e.address, e.last_heartbeat, e.state \
    from executor e join site s on s.site_id = e.site_id";

pub async fn get(pool: &PgPool, id: i64) -> Result<Executor> {
    let sql = format!("{SELECT} where e.executor_id = $1");
    let row: Option<ExecutorRow> = sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("executor {id}")))?.try_into().map_err(Into::into)
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &ExecutorFilter) -> Result<Page<Executor>> {
    let rows: Vec<ExecutorRow> = ListQuery::new(SELECT, "e.executor_id", page)
        .filter("s.name", filter.site.as_deref())
        .filter("e.state", filter.state.as_ref().map(enum_to_text))
        .fetch(pool)
        .await?;
    let executors = rows.into_iter().map(Executor::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(executors, |e| e.id))
}
