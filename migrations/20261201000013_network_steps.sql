-- A migration's log records the network steps its executors take after
-- the cutover (forwarding, routes, announcements, releases), with what
-- each reported: its driver, duration and outcome.
alter table migration_event add column network jsonb;

-- Where an executor's network driver ends its tunnels (the VXLAN endpoint),
-- when it moves VMs' networks and that is not its transfer address.
alter table executor add column tunnel_address text;
