-- Provider feeds: where a site's carbon or price comes from, and how the
-- polling of it is going. Credentials are never stored: `credential_env`
-- names the environment variable that holds them.
create table feed (
    feed_id          bigint generated always as identity primary key,
    site_id          bigint not null references site (site_id) on delete cascade,
    provider         text not null check (provider in ('electricitymaps', 'watttime', 'gb_carbon_intensity', 'entsoe')),
    signal           text not null check (signal in ('carbon', 'price')),
    area             text not null,
    base_url         text not null,
    credential_env   text,
    poll_interval_s  integer not null check (poll_interval_s between 60 and 86400),
    enabled          boolean not null default true,
    last_success_at  timestamptz,
    last_error_at    timestamptz,
    last_error       text,
    points_ingested  bigint not null default 0,
    -- Newest point timestamp seen, and when it last moved: a feed is stale when it
    -- has not moved for three poll intervals.
    newest_point_at  timestamptz,
    last_new_data_at timestamptz,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    unique (site_id, provider, signal, area)
);
create trigger feed_updated_at before update on feed for each row execute function set_updated_at();
