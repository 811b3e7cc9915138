//! API tokens: only their SHA-256 digests are stored.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{Role, Token, TokenFilter};
use sqlx::PgPool;

use super::{enum_from_text, enum_to_text, ListQuery, Result, StoreError};
use crate::domain::page::{Page, PageRequest};
use crate::domain::token::{generate_secret, secret_digest};

#[derive(sqlx::FromRow)]
struct TokenRow {
    token_id: i64,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    site: Option<String>,
}

impl TryFrom<TokenRow> for Token {
    type Error = sqlx::Error;
    fn try_from(r: TokenRow) -> std::result::Result<Token, sqlx::Error> {
        Ok(Token {
            id: r.token_id,
            name: r.name,
            role: enum_from_text(r.role)?,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            site: r.site,
        })
    }
}

const COLUMNS: &str = "token_id, name, role, created_at, last_used_at, \
    (select s.name from site s where s.site_id = api_token.site_id) as site";

/// Stores a token whose secret hashes to `digest`; an executor token
/// serves `site` (by name).
pub async fn insert(pool: &PgPool, name: &str, role: Role, site: Option<&str>, digest: &[u8; 32]) -> Result<Token> {
    let mut tx = pool.begin().await?;
    let site_id = match site {
        Some(site) => Some(super::site_id_by_name(&mut tx, "site", site).await?),
        None => None,
    };
    let sql = format!(
        "insert into api_token (name, role, secret_sha256, site_id) values ($1, $2, $3, $4) returning {COLUMNS}"
    );
    let row: TokenRow = sqlx::query_as(&sql)
        .bind(name)
        .bind(enum_to_text(&role))
        .bind(&digest[..])
        .bind(site_id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row.try_into()?)
}

/// Whether token `id` stands (it has not been revoked).
pub async fn exists(pool: &PgPool, id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar("select exists (select 1 from api_token where token_id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Token> {
    let sql = format!("select {COLUMNS} from api_token where token_id = $1");
    let row: Option<TokenRow> = sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?;
    row.ok_or_else(|| StoreError::NotFound(format!("token {id}")))?.try_into().map_err(Into::into)
}

pub async fn list(pool: &PgPool, page: PageRequest, filter: &TokenFilter) -> Result<Page<Token>> {
    let rows: Vec<TokenRow> = ListQuery::new(&format!("select {COLUMNS} from api_token"), "token_id", page)
        .filter("role", filter.role.as_ref().map(enum_to_text))
        .fetch(pool)
        .await?;
    let tokens = rows.into_iter().map(Token::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(page.page(tokens, |t| t.id))
}

/// Revokes a token. The last admin token cannot go: nobody could manage
/// the inventory or make another token afterwards.
pub async fn delete(pool: &PgPool, id: i64) -> Result<()> {
    let mut tx = pool.begin().await?;
    // Serialise revocations so that two concurrent ones cannot remove the last two admins.
    sqlx::query("lock table api_token in share row exclusive mode").execute(&mut *tx).await?;
    let role: Option<String> =
        sqlx::query_scalar("select role from api_token where token_id = $1").bind(id).fetch_optional(&mut *tx).await?;
    let role = role.ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
    if role == "admin" {
        let admins: i64 =
            sqlx::query_scalar("select count(*) from api_token where role = 'admin'").fetch_one(&mut *tx).await?;
        if admins <= 1 {
            return Err(StoreError::Conflict(format!("token {id} is the last admin token; create another first")));
        }
    }
    sqlx::query("delete from api_token where token_id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// The token a secret's digest belongs to, as (id, role). Records the use
/// at most once a minute, so that authentication stays a read.
pub async fn authenticate(pool: &PgPool, digest: &[u8; 32]) -> Result<Option<(i64, Role)>> {
    let row: Option<(i64, String, bool)> = sqlx::query_as(
        "select token_id, role, coalesce(last_used_at < now() - interval '1 minute', true) \
         from api_token where secret_sha256 = $1",
    )
    .bind(&digest[..])
    .fetch_optional(pool)
    .await?;
    let Some((id, role, stale)) = row else {
        return Ok(None);
    };
    if stale {
        sqlx::query("update api_token set last_used_at = now() where token_id = $1").bind(id).execute(pool).await?;
    }
    Ok(Some((id, enum_from_text(role)?)))
}

/// Makes sure an admin can get in. With `configured` (from
/// `HELIOTROPE_ADMIN_TOKEN`), that secret becomes an admin token if it is
/// not one yet, in place of the previous one from the environment. Without it, when no admin token exists, a new one is made
/// and its secret returned so that the caller can print it, once.
pub async fn ensure_admin(pool: &PgPool, configured: Option<&str>) -> Result<Option<String>> {
    let mut tx = pool.begin().await?;
    sqlx::query("lock table api_token in share row exclusive mode").execute(&mut *tx).await?;
    let (secret, name, printed) = match configured {
        Some(secret) => (secret.to_owned(), "admin-from-env", false),
        None => (generate_secret(), "admin-generated", true),
    };
    let digest = secret_digest(&secret);
    let exists: bool = match configured {
        Some(_) => {
            sqlx::query_scalar("select exists (select 1 from api_token where secret_sha256 = $1)")
                .bind(&digest[..])
                .fetch_one(&mut *tx)
                .await?
        }
        None => {
            sqlx::query_scalar("select exists (select 1 from api_token where role = 'admin')")
                .fetch_one(&mut *tx)
                .await?
        }
    };
    if exists {
        return Ok(None);
    }
    if configured.is_some() {
        // A rotated HELIOTROPE_ADMIN_TOKEN replaces the previous one: the old secret stops working.
        sqlx::query("delete from api_token where name = 'admin-from-env' and role = 'admin'").execute(&mut *tx).await?;
    }
    sqlx::query("insert into api_token (name, role, secret_sha256) values ($1, 'admin', $2)")
        .bind(name)
        .bind(&digest[..])
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(printed.then_some(secret))
}
