-- Browser sessions: the cookie carries a random session secret, never an
-- API token; its digest is kept here with its expiry, and signing out or
-- revoking the token ends it.
create table browser_session (
    session_id  bigint generated always as identity primary key,
    digest      bytea not null unique check (length(digest) = 32),
    token_id    bigint not null references api_token (token_id) on delete cascade,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null
);
create index browser_session_expiry on browser_session (expires_at);
