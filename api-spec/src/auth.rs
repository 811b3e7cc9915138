//! Roles and API tokens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do. `viewer` < `planner` < `admin` nest: each can do
/// all the one before it can. `executor` stands apart: it can reach the
/// executor endpoints and nothing else, and nothing else can reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Planner,
    Admin,
    Executor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Planner, Role::Admin, Role::Executor];

    /// Whether a token of this role may use a route that requires `required`.
    pub fn grants(self, required: Role) -> bool {
        match (self, required) {
            (Role::Executor, _) | (_, Role::Executor) => self == required,
            (have, need) => have.rank() >= need.rank(),
        }
    }

    fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Planner => 1,
            Role::Admin => 2,
            Role::Executor => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Planner => "planner",
            Role::Admin => "admin",
            Role::Executor => "executor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// A label for people (who or what holds the token), 1-64 characters.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub name: String,
    pub role: Role,
    /// For an executor token (and only for one): the site it serves, by
    /// name. It registers one executor there and acts for no other site.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub site: Option<String>,
}

/// A token as listed: everything but its secret, which is never stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Last time the token authenticated a request (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The site an executor token serves (bound at creation, or by its
    /// first registration for a token made before sites were named).
    #[serde(default)]
    pub site: Option<String>,
}

/// Answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: Token,
    /// Send as `Authorization: Bearer <secret>`. Store it now: it cannot be shown again.
    pub secret: String,
}

/// Filters of `GET /v1/tokens`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenFilter {
    pub role: Option<Role>,
}

/// What `POST /v1/session` takes: an API token to sign a browser in with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignIn {
    /// An API token's secret.
    #[schema(min_length = 1, max_length = 256)]
    pub token: String,
}

/// A browser session: who is signed in, and the CSRF token its writes
/// must carry (header `X-CSRF-Token`). The session itself travels in an
/// HttpOnly, SameSite=Strict cookie, out of the page's reach.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub token_id: i64,
    pub role: Role,
    pub csrf_token: String,
}
