-- Dispatch, first part: a migration job goes through states, and every
-- change of state is logged (who, what, when) for audit.

alter table migration_job drop constraint migration_job_state_check;
update migration_job set state = 'scheduled' where state = 'queued';
alter table migration_job
    alter column state set default 'pending',
    add constraint migration_job_state_check check (state in (
        'pending', 'scheduled', 'claimed', 'transferring', 'cutover', 'done',
        'failed', 'cancelled', 'rolled_back', 'recovering')),
    -- When the plan's schedule starts it, and its bandwidth cap then.
    add column start_at timestamptz,
    add column cap_mbps float8 check (cap_mbps > 0),
    add column attempts integer not null default 0 check (attempts >= 0),
    add column failure text,
    add column updated_at timestamptz not null default now();

create trigger migration_job_updated_at before update on migration_job
    for each row execute function set_updated_at();

-- Applying a plan twice records nothing twice.
create unique index migration_job_once_per_plan on migration_job (plan_id, vm_id);
-- A VM has at most one migration under way.
create unique index migration_job_one_active on migration_job (vm_id)
    where state not in ('done', 'failed', 'cancelled', 'rolled_back');

create table migration_event (
    event_id   bigint generated always as identity primary key,
    job_id     bigint not null references migration_job on delete cascade,
    at         timestamptz not null default now(),
    -- Who: `scheduler`, `token:<id>` or `executor:<id>`.
    actor      text not null,
    from_state text,
    to_state   text not null,
    detail     text not null default ''
);
create index migration_event_job on migration_event (job_id, event_id);

-- The events of jobs recorded before this migration: their creation.
insert into migration_event (job_id, at, actor, from_state, to_state, detail)
    select job_id, created_at, 'scheduler', null, state, 'recorded when its plan was applied'
    from migration_job;
