-- Proactive disk caching: the sites where each VM's disk is kept warm.
--
-- vm_standby_site: the standbys an operator names in the VM's spec (like
-- its allowed sites, a site named here cannot be deleted under it).
create table vm_standby_site (
    vm_id    bigint not null references vm on delete cascade,
    site_id  bigint not null references site,
    position smallint not null,
    primary key (vm_id, site_id)
);

-- standby: the standbys in force, named by the operator or chosen from the
-- plans, with each replica's freshness as the VM's executor last reported
-- it. A row's id is its replication session's number on the wire (offset,
-- see api-spec's REPLICATION_SESSION_BASE) and its secret the session's.
create table standby (
    standby_id    bigint generated always as identity primary key,
    vm_id         bigint not null references vm on delete cascade,
    site_id       bigint not null references site on delete cascade,
    chosen_by     text not null check (chosen_by in ('operator', 'plans')),
    secret        bytea not null check (length(secret) = 32),
    chosen_at     timestamptz not null default now(),
    synced_at     timestamptz,
    synced_bytes  bigint not null default 0 check (synced_bytes >= 0),
    written_bytes bigint not null default 0 check (written_bytes >= 0),
    reported_at   timestamptz,
    unique (vm_id, site_id)
);
create index standby_site on standby (site_id);

-- VMs' answers carry their standbys and standby sites: the read cache hears
-- of their changes as of the VMs' own. A freshness report that changes
-- nothing (no new sync, nothing written) drops nothing.
create trigger vm_standby_site_notify after insert or update or delete or truncate on vm_standby_site
    for each statement execute function notify_inventory_changed();
create trigger standby_notify after insert or delete or truncate on standby
    for each statement execute function notify_inventory_changed();
create trigger standby_update_notify after update on standby
    for each row when (old.* is distinct from new.*) execute function notify_inventory_changed();
