-- Plans: what the planner proposed, with its objective, moves and solver
-- figures, and the migration jobs an applied plan records.

alter table link add column egress_cost_per_gb float8 not null default 0
    check (egress_cost_per_gb >= 0 and egress_cost_per_gb <= 1000);

create table plan (
    plan_id bigint generated always as identity primary key,
    created_at timestamptz not null default now(),
    status text not null check (status in ('proposed', 'approved', 'applied', 'superseded', 'failed')),
    status_changed_at timestamptz not null default now(),
    -- What was asked (horizon, mode, carbon price, dry run) and what it was planned on.
    request jsonb not null,
    horizon_start timestamptz not null,
    currency text not null,
    inputs jsonb not null,
    -- Objective breakdowns, the moves, solver figures and signal coverage, as served.
    objective jsonb not null,
    baseline jsonb not null,
    moves jsonb not null,
    move_count integer not null,
    solver jsonb not null,
    signals jsonb not null,
    failure text
);

-- Superseding touches only the plans still waiting.
create index plan_waiting on plan (plan_id) where status in ('proposed', 'approved');

create table migration_job (
    job_id bigint generated always as identity primary key,
    plan_id bigint not null references plan on delete restrict,
    vm_id bigint not null references vm on delete cascade,
    from_site_id bigint not null references site on delete restrict,
    to_site_id bigint not null references site on delete restrict,
    -- Dispatch adds the states a job goes through once it runs.
    state text not null default 'queued' check (state in ('queued')),
    predicted_bytes float8 not null,
    created_at timestamptz not null default now()
);

-- Moves per VM in the last day, and VMs with a job still open.
create index migration_job_vm on migration_job (vm_id, created_at);
