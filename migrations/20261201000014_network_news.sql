-- A network step's news carries the executor's report, as its log entry
-- does, so that dashboards need not read it out of the detail text.
-- Payloads stay well under NOTIFY's 8000 bytes (both texts are at most
-- 1000 characters).
create or replace function notify_migration_event() returns trigger as $$
begin
    perform pg_notify('heliotrope_events', json_build_object(
        'kind', 'state',
        'migration', new.job_id,
        'at', new.at,
        'actor', new.actor,
        'from', new.from_state,
        'to', new.to_state,
        'detail', left(new.detail, 1000),
        'network', new.network)::text);
    return null;
end;
$$ language plpgsql;
