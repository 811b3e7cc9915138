-- An executor's transfer listener's health, as its last heartbeat reported
-- it (JSON: accepting, accept_errors, refused, open, last_error). An
-- executor whose listener is not accepting receives no migration.
alter table executor add column listener jsonb;
