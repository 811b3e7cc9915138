-- Disaster recovery: a site marked down has each of its VMs restarted at
-- its freshest standby from its replica, once; what cannot be is listed lost.

-- When the site was last marked down: its executors' fencing is judged against it.
alter table site
    add column down_at timestamptz,
    add column down_reason text not null default '';

-- What each executor says with its replication report: the VMs it runs,
-- and since when it holds its VMs stopped (fenced).
alter table executor
    add column running_vms text[] not null default '{}',
    add column fenced_since timestamptz;

create table recovery (
    recovery_id    bigint generated always as identity primary key,
    vm_id          bigint not null references vm on delete cascade,
    from_site_id   bigint not null references site on delete cascade,
    -- The standby it restarts at; none when lost.
    to_site_id     bigint references site on delete cascade,
    state          text not null check (state in ('waiting', 'starting', 'running', 'failed', 'lost')),
    detail         text not null default '',
    -- The site's down_at: one failure's recoveries share it.
    failed_at      timestamptz not null,
    -- The replica's last sync (it holds every write before) and what was written since, as last reported.
    recovery_point timestamptz,
    lost_bytes     bigint check (lost_bytes >= 0),
    priority       smallint not null,
    executor_id    bigint references executor on delete set null,
    started_at     timestamptz,
    running_at     timestamptz,
    quarantine     text not null default 'pending'
        check (quarantine in ('pending', 'held', 'none', 'discarding', 'discarded')),
    check ((state = 'lost') = (to_site_id is null))
);
-- A VM is restarted once per failure, and by one recovery at a time.
create unique index recovery_once_per_failure on recovery (vm_id, failed_at);
create unique index recovery_one_under_way on recovery (vm_id) where state in ('waiting', 'starting');
create index recovery_from_site on recovery (from_site_id, failed_at);
create index recovery_to_site on recovery (to_site_id) where state in ('waiting', 'starting');

-- An evacuation's order for a final sync of the replica (when it was
-- ordered): its executor syncs at once if the last sync began before.
alter table standby add column final_sync_after timestamptz;

-- A protected VM's standbys keep room for it (plans leave it free), so
-- that it can always restart there.
alter table vm add column protected boolean not null default false;

-- A lost site's VM, handed to its standby (its record moved there) and
-- then running or failed: `recovered` news for the event stream, naming
-- the recovery point and the data known lost. Payloads stay well under
-- NOTIFY's 8000 bytes.
create function notify_recovered() returns trigger as $$
begin
    perform pg_notify('heliotrope_events', json_build_object(
        'kind', 'recovered',
        'recovery', new.recovery_id,
        'vm', (select name from vm where vm_id = new.vm_id),
        'from', (select name from site where site_id = new.from_site_id),
        'to', (select name from site where site_id = new.to_site_id),
        'state', new.state,
        'at', now(),
        'recovery_point', new.recovery_point,
        'lost_bytes', new.lost_bytes,
        'detail', left(new.detail, 1000))::text);
    return null;
end;
$$ language plpgsql;

create trigger recovery_notify after update of state on recovery
    for each row when (old.state is distinct from new.state and new.state in ('starting', 'running', 'failed'))
    execute function notify_recovered();
