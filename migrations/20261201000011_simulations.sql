-- Simulations: what-if replays of stored signals through the placement
-- policies, run in the background by the replica that accepted them.

create table simulation (
    simulation_id bigint generated always as identity primary key,
    status text not null default 'running' check (status in ('running', 'done', 'failed')),
    request jsonb not null,
    created_at timestamptz not null default now(),
    -- The runner writes progress at least every few seconds; a running
    -- simulation left alone for long had its replica stop under it.
    updated_at timestamptz not null default now(),
    finished_at timestamptz,
    progress_hours bigint not null default 0,
    error text,
    report jsonb
);
