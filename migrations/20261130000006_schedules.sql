-- Shared site uplinks and downlinks (what all of a site's WAN links
-- together can carry), and each plan's migration schedule.

alter table site
    add column uplink_mbps float8 check (uplink_mbps > 0 and uplink_mbps <= 1e8),
    add column downlink_mbps float8 check (downlink_mbps > 0 and downlink_mbps <= 1e8);

-- The schedule of the plan's moves, with the baselines' figures, as served.
alter table plan add column schedule jsonb;
