//! Persistence: all SQL lives here, one module per aggregate.
//!
//! Functions take a `PgPool` (or a transaction where several statements
//! must hold together) and [`Valid`](crate::domain::Valid) domain values,
//! and return wire types or a [`StoreError`]. Constraint violations are
//! turned into `StoreError`s here so that the HTTP layer never has to know
//! a Postgres error code.

pub mod admission;
pub mod changes;
pub mod clock;
pub mod demo;
pub mod dispatch;
pub mod executors;
pub mod feeds;
pub mod groups;
pub mod leader;
pub mod links;
pub mod migration_jobs;
pub mod plans;
pub mod rebalancer;
pub mod recoveries;
pub mod savings;
pub mod sessions;
pub mod signals;
pub mod simulations;
pub mod sites;
pub mod standbys;
pub mod tokens;
pub mod vms;

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};

use crate::domain::page::PageRequest;

/// The schema, embedded in the binary and applied at start-up (and by `heliotrope migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A read-only transaction that sees one consistent state of the database
/// throughout (repeatable read), for reads that must agree with each other.
pub async fn begin_snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *tx).await?;
    Ok(tx)
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<()> {
    sqlx::query("select 1").execute(pool).await?;
    Ok(())
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// A unique name is taken, or a row is still referenced.
    #[error("{0}")]
    Conflict(String),
    /// A migration's destination confirmed it before its cutover.
    #[error("{0}")]
    NotInCutover(String),
    /// The caller's token may not act on this (an executor token for another site).
    #[error("{0}")]
    NotYours(String),
    /// A name in the request refers to nothing.
    #[error("{field}: no {kind} named '{name}'")]
    UnknownReference { field: String, kind: &'static str, name: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Opens a pool on `url`. The pool is lazy about nothing: it fails here
/// when the database cannot be reached.
pub async fn connect(url: &str, max_connections: u32) -> std::result::Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name("heliotrope"))
        .await
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> std::result::Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// The text a snake_case wire enum is stored as (the same as its JSON).
pub(crate) fn enum_to_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => unreachable!("wire enums serialise to strings, got {other:?}"),
    }
}

/// Reads back what [`enum_to_text`] stored. A value the code does not know
/// means the schema and the code disagree, which is a decode error.
pub(crate) fn enum_from_text<T: DeserializeOwned>(text: String) -> std::result::Result<T, sqlx::Error> {
    serde_json::from_value(serde_json::Value::String(text)).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Maps a unique-key violation to a 409 that says which name is taken and
/// a restrict foreign key to a 409 that says what still uses the row.
pub(crate) fn on_constraint(err: sqlx::Error, describe: impl Fn(&str) -> Option<String>) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if let Some(message) = db.constraint().and_then(&describe) {
            if db.is_unique_violation() || db.is_foreign_key_violation() {
                return StoreError::Conflict(message);
            }
        }
    }
    StoreError::Database(err)
}

/// A list query: `select_from` restricted to one keyset page of `id_column`,
/// with an `and <column> = <value>` for each filter that is present.
///
/// Only the filters given become SQL, so each combination is its own
/// prepared statement with a plan Postgres can cache; `($1 is null or ...)`
/// would make it plan every execution afresh.
pub(crate) struct ListQuery<'a> {
    builder: QueryBuilder<'a, Postgres>,
    id_column: &'static str,
    page: PageRequest,
}

impl<'a> ListQuery<'a> {
    pub(crate) fn new(select_from: &str, id_column: &'static str, page: PageRequest) -> Self {
        let mut builder = QueryBuilder::new(select_from);
        builder.push(format_args!(" where {id_column} > ")).push_bind(page.after_id);
        ListQuery { builder, id_column, page }
    }

    /// Adds `and <column> = <value>` when the filter is present.
    pub(crate) fn filter<T>(mut self, column: &str, value: Option<T>) -> Self
    where
        T: 'a + sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send,
    {
        if let Some(value) = value {
            self.builder.push(format_args!(" and {column} = ")).push_bind(value);
        }
        self
    }

    /// Adds `and (<a> = <value> or <b> = <value>)` when the filter is present.
    pub(crate) fn filter_either<T>(mut self, [a, b]: [&str; 2], value: Option<T>) -> Self
    where
        T: 'a + sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + Clone,
    {
        if let Some(value) = value {
            self.builder.push(format_args!(" and ({a} = ")).push_bind(value.clone());
            self.builder.push(format_args!(" or {b} = ")).push_bind(value).push(")");
        }
        self
    }

    /// Fetches the page (one row more than asked, to learn whether another follows).
    pub(crate) async fn fetch<R>(mut self, db: impl sqlx::PgExecutor<'_>) -> std::result::Result<Vec<R>, sqlx::Error>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        self.builder.push(format_args!(" order by {} limit ", self.id_column)).push_bind(self.page.fetch_limit());
        self.builder.build_query_as::<R>().fetch_all(db).await
    }
}

/// Every row `sql` selects, converted: whole aggregates as the planner reads them.
pub(crate) async fn fetch_all<R, T>(db: impl sqlx::PgExecutor<'_>, sql: &str) -> Result<Vec<T>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + TryInto<T, Error = sqlx::Error>,
{
    let rows: Vec<R> = sqlx::query_as(sql).fetch_all(db).await?;
    Ok(rows.into_iter().map(R::try_into).collect::<std::result::Result<_, _>>()?)
}

/// The id of the site named `name`, or an error that names `field`.
pub(crate) async fn site_id_by_name(tx: &mut Transaction<'_, Postgres>, field: &str, name: &str) -> Result<i64> {
    sqlx::query_scalar("select site_id from site where name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::UnknownReference { field: field.to_owned(), kind: "site", name: name.to_owned() })
}

/// Creates database `name` on the server at `server_url` unless it exists.
pub async fn create_database_if_missing(server_url: &str, name: &str) -> std::result::Result<(), sqlx::Error> {
    let pool = connect(server_url, 1).await?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(&pool)
        .await?;
    if !exists {
        // Identifiers cannot be bound; callers pass names of their own making.
        sqlx::query(&format!("create database \"{}\"", name.replace('"', ""))).execute(&pool).await?;
    }
    pool.close().await;
    Ok(())
}

/// Empties every table but the migrations' record, restarting identities:
/// the schema stays as migrated (`heliotrope demo --reset`).
pub async fn empty_every_table(pool: &PgPool) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "do $$ declare tables text; begin \
           select string_agg(format('%I', tablename), ', ') into tables from pg_tables \
             where schemaname = current_schema() and tablename <> '_sqlx_migrations'; \
           if tables is not null then execute 'truncate table ' || tables || ' restart identity cascade'; end if; \
         end $$",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops database `name` on the server at `server_url`, ending its sessions.
pub async fn drop_database(server_url: &str, name: &str) -> std::result::Result<(), sqlx::Error> {
    let pool = connect(server_url, 1).await?;
    sqlx::query(&format!("drop database if exists \"{}\" with (force)", name.replace('"', ""))).execute(&pool).await?;
    pool.close().await;
    Ok(())
}

/// `url` fit to print: its password, if any, hidden.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(a database URL that does not parse)".to_owned(),
    }
}

/// `url` with its database name replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn swaps_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5432/a", "b"), "postgres://u@h:5432/b");
        assert_eq!(with_database("postgres://u@h", "b"), "postgres://u@h/b");
        assert_eq!(with_database("postgres://u@localhost/a?host=/tmp/s", "b"), "postgres://u@localhost/b?host=/tmp/s");
    }
}
