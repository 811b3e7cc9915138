-- A migration's log records the network steps its executors take after
-- the cutover (forwarding, routes, announcements, releases), with what
-- each reported: its driver, duration and outcome.
alter table migration_event add column network jsonb;
