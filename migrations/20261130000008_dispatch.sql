-- Dispatch, second part: executors register and claim migrations under a
-- lease; both ends of a migration get its secret from here.

alter table executor
    add column driver text not null default 'sim' check (driver in ('sim', 'qemu')),
    add column capacity integer not null default 1 check (capacity between 1 and 64),
    -- The token it registered with: only that token speaks for it.
    add column token_id bigint references api_token on delete set null;
-- Registering again from the same place is the same executor.
create unique index executor_site_address on executor (site_id, address);

alter table migration_job
    -- The source executor that claimed it, and until when its claim holds.
    add column lease_holder bigint references executor on delete set null,
    add column lease_expires timestamptz,
    -- The destination executor chosen at claim time, and whether it took its side.
    add column destination_executor bigint references executor on delete set null,
    add column destination_ready boolean not null default false,
    -- The per-job secret both executors prove to each other (never the scheduler's tokens).
    add column secret bytea,
    -- The last progress report, as sent.
    add column progress jsonb;

create index migration_job_claimable on migration_job (from_site_id, start_at) where state = 'scheduled';
create index migration_job_leased on migration_job (lease_expires) where lease_expires is not null;
