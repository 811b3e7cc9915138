-- Inventory: sites, directed WAN links, VM groups, VMs, executors, and API tokens.
-- Conventions: lowercase SQL, `<table>_id` keys, `created_at`/`updated_at` kept by a trigger.

create or replace function set_updated_at() returns trigger as $$
begin
    new.updated_at = now();
    return new;
end;
$$ language plpgsql;

create table site (
    site_id            bigint generated always as identity primary key,
    name               text not null unique,
    region             text not null,
    latitude           double precision not null check (latitude between -90 and 90),
    longitude          double precision not null check (longitude between -180 and 180),
    timezone           text not null,
    capacity_vcpus     integer not null check (capacity_vcpus >= 0),
    capacity_memory_gib double precision not null check (capacity_memory_gib >= 0),
    capacity_disk_gib  double precision not null check (capacity_disk_gib >= 0),
    pue                double precision not null check (pue >= 1.0),
    watts_per_vcpu     double precision not null check (watts_per_vcpu >= 0),
    watts_per_gib      double precision not null check (watts_per_gib >= 0),
    state              text not null check (state in ('active', 'draining', 'down')),
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now()
);
create index site_region_idx on site (region);
create trigger site_updated_at before update on site for each row execute function set_updated_at();

-- Links go away with either end: a link to a site that no longer exists means nothing.
create table link (
    link_id                bigint generated always as identity primary key,
    from_site_id           bigint not null references site (site_id) on delete cascade,
    to_site_id             bigint not null references site (site_id) on delete cascade,
    bandwidth_mbps         double precision not null check (bandwidth_mbps > 0),
    rtt_ms                 double precision not null check (rtt_ms >= 0),
    background_reserve_pct double precision not null check (background_reserve_pct between 0 and 95),
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now(),
    unique (from_site_id, to_site_id),
    check (from_site_id <> to_site_id)
);
create index link_to_site_idx on link (to_site_id);
create trigger link_updated_at before update on link for each row execute function set_updated_at();

create table vm_group (
    group_id     bigint generated always as identity primary key,
    name         text not null unique,
    policy       text not null check (policy in ('spread', 'colocate')),
    min_sites    integer check (min_sites >= 1),
    max_per_site integer check (max_per_site >= 1),
    max_rtt_ms   double precision check (max_rtt_ms >= 0),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    check ((policy = 'spread' and min_sites is not null and max_per_site is not null and max_rtt_ms is null)
        or (policy = 'colocate' and max_rtt_ms is not null and min_sites is null and max_per_site is null))
);
create trigger vm_group_updated_at before update on vm_group for each row execute function set_updated_at();

-- A site or group cannot be deleted while VMs use it (restrict): the API answers 409.
create table vm (
    vm_id           bigint generated always as identity primary key,
    name            text not null unique,
    vcpus           integer not null check (vcpus >= 1),
    memory_gib      double precision not null check (memory_gib > 0),
    disk_gib        double precision not null check (disk_gib >= 0),
    dirty_rate_mbps double precision not null check (dirty_rate_mbps >= 0),
    site_id         bigint not null references site (site_id) on delete restrict,
    allowed_regions text[],
    pinned          boolean not null default false,
    group_id        bigint references vm_group (group_id) on delete restrict,
    priority        smallint not null check (priority between 0 and 100),
    max_downtime_ms integer not null check (max_downtime_ms >= 1),
    driver          text not null check (driver in ('sim', 'qemu')),
    driver_spec     jsonb not null default '{}'::jsonb check (jsonb_typeof(driver_spec) = 'object'),
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create index vm_site_idx on vm (site_id, vm_id);
create index vm_group_idx on vm (group_id, vm_id) where group_id is not null;
create trigger vm_updated_at before update on vm for each row execute function set_updated_at();

-- A VM's allowed sites, as rows so that the foreign key keeps them honest: a site
-- named in some VM's allow-list cannot be deleted (deleting it would silently widen
-- or empty that list). `position` keeps the order the operator gave.
create table vm_allowed_site (
    vm_id   bigint not null references vm (vm_id) on delete cascade,
    site_id bigint not null references site (site_id) on delete restrict,
    position smallint not null,
    primary key (vm_id, site_id),
    unique (vm_id, position)
);
create index vm_allowed_site_site_idx on vm_allowed_site (site_id);

create table executor (
    executor_id    bigint generated always as identity primary key,
    site_id        bigint not null references site (site_id) on delete restrict,
    address        text not null,
    last_heartbeat timestamptz,
    state          text not null check (state in ('online', 'offline', 'draining')),
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);
create index executor_site_idx on executor (site_id);
create trigger executor_updated_at before update on executor for each row execute function set_updated_at();

-- Only a SHA-256 of each secret is kept; the secret is shown once, at creation.
create table api_token (
    token_id     bigint generated always as identity primary key,
    name         text not null,
    role         text not null check (role in ('viewer', 'planner', 'admin', 'executor')),
    secret_sha256 bytea not null unique check (length(secret_sha256) = 32),
    created_at   timestamptz not null default now(),
    last_used_at timestamptz
);
