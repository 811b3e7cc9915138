-- The dispatcher (scheduler/src/dispatcher.rs) decides at run time which
-- migrations start and at what cap: a claim takes only an admitted one.
-- A job that could not be admitted before its bound ends `expired`.
alter table migration_job drop constraint migration_job_state_check;
alter table migration_job
    add constraint migration_job_state_check check (state in (
        'pending', 'scheduled', 'claimed', 'transferring', 'cutover', 'done',
        'failed', 'cancelled', 'rolled_back', 'recovering', 'expired')),
    -- When the dispatcher let it start (its cap then is cap_mbps); null while it waits.
    add column admitted_at timestamptz,
    -- Not admitted by then, it ends `expired` (null: it waits as long as it takes).
    add column expires_at timestamptz,
    -- An operator's ceiling (`PATCH` cap): the dispatcher never gives more.
    add column cap_limit_mbps float8 check (cap_limit_mbps > 0),
    -- A move out of a site being evacuated: the dispatcher puts it first.
    add column evacuation boolean not null default false;

drop index migration_job_one_active;
create unique index migration_job_one_active on migration_job (vm_id)
    where state not in ('done', 'failed', 'cancelled', 'rolled_back', 'expired');

-- The guest's dirty rate as its source executor measures it, smoothed; the
-- dispatcher and the planner use it rather than the declared one once known.
alter table vm add column measured_dirty_rate_mbps float8 check (measured_dirty_rate_mbps >= 0);

-- Every cap a migration was given, by the dispatcher or an operator, and
-- when: what the link admission invariant is checked against.
create table migration_cap (
    job_id   bigint not null references migration_job on delete cascade,
    at       timestamptz not null default clock_timestamp(),
    cap_mbps float8 not null check (cap_mbps > 0)
);
create index migration_cap_job on migration_cap (job_id, at);
