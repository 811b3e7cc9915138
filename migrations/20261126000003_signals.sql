-- Carbon intensity and price points per site, with provenance. One row per
-- (site, signal, timestamp, source, issue time): re-fetching the same data
-- updates it in place; a newer forecast of the same hour is another row.
create table signal_point (
    site_id      bigint not null references site (site_id) on delete cascade,
    signal       text not null check (signal in ('carbon', 'price')),
    ts           timestamptz not null,
    value        double precision not null check (value = value), -- not NaN
    -- Currency of a price (ISO 4217); carbon has none.
    currency     text check ((signal = 'price') = (currency is not null)),
    basis        text not null check (basis in ('marginal', 'average-lifecycle', 'average-direct',
                     'market-day-ahead', 'market-real-time', 'tariff', 'synthetic')),
    resolution_s integer not null check (resolution_s > 0),
    -- `push`, `feed:<id>` or `synthetic`.
    source       text not null,
    forecast     boolean not null,
    -- When a forecast was issued; null for actuals.
    issued_at    timestamptz check (forecast = (issued_at is not null)),
    estimated    boolean not null default false,
    fetched_at   timestamptz not null default now(),
    constraint signal_point_key unique nulls not distinct (site_id, signal, ts, source, issued_at)
);
