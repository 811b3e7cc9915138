-- How far `heliotrope signals backfill` got through a feed's history for a
-- range asked: a run over the same range resumes after the last window stored.
create table feed_backfill (
    feed_id     bigint not null references feed (feed_id) on delete cascade,
    range_from  timestamptz not null,
    range_to    timestamptz not null check (range_to > range_from),
    done_until  timestamptz not null check (done_until between range_from and range_to),
    points      bigint not null default 0 check (points >= 0),
    updated_at  timestamptz not null default now(),
    primary key (feed_id, range_from, range_to)
);
