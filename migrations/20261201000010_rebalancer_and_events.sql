-- The hourly rebalancer's shared state: which replica leads (it holds a
-- Postgres advisory lock; this row only says who), when it last ran and
-- what came of it, so that any replica can answer `GET /v1/rebalancer`
-- and a new leader carries on the old one's timetable.
create table rebalancer (
    singleton      boolean primary key default true check (singleton),
    leader         text not null,
    leader_since   timestamptz not null,
    -- The leader checks its lock and writes this every few seconds.
    leader_seen_at timestamptz not null,
    interval_s     float8 not null check (interval_s > 0),
    auto_apply     boolean not null,
    auto_apply_min_saving float8 not null,
    -- Simulated seconds per real second (1 except in an accelerated demo).
    clock_speed    float8 not null check (clock_speed > 0),
    last_run_at    timestamptz,
    -- What the (possibly simulated) clock read at the last run.
    last_run_clock timestamptz,
    next_run_at    timestamptz,
    last_plan_id   bigint references plan on delete set null,
    last_outcome   text check (last_outcome in ('applied', 'proposed', 'no_moves', 'failed')),
    last_detail    text
);

-- Every change of a migration's state is announced to the replicas, which
-- stream it to dashboards (`GET /v1/events`). Payloads stay well under
-- NOTIFY's 8000 bytes.
create function notify_migration_event() returns trigger as $$
begin
    perform pg_notify('heliotrope_events', json_build_object(
        'kind', 'state',
        'migration', new.job_id,
        'at', new.at,
        'actor', new.actor,
        'from', new.from_state,
        'to', new.to_state,
        'detail', left(new.detail, 1000))::text);
    return null;
end;
$$ language plpgsql;

create trigger migration_event_notify after insert on migration_event
    for each row execute function notify_migration_event();
