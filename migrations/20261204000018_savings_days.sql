-- What the migrations saved on each finished UTC day, kept once priced:
-- `GET /v1/savings?days=366` used to price a year of VM-hours on every
-- request. A day's figures depend on nothing after its end but the
-- signals of that day, so a write to a day's signals forgets it.
create table savings_day (
    day         date primary key,
    cost_saved  double precision not null,
    kg_saved    double precision not null,
    migrations  bigint not null,
    vm_hours    bigint not null,
    synthetic   boolean not null,
    -- The price currency, when the day had prices.
    currency    text,
    priced_at   timestamptz not null default now()
);

create function forget_savings_days() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        delete from savings_day where day in (select distinct (ts at time zone 'UTC')::date from changed_new);
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        delete from savings_day where day in (select distinct (ts at time zone 'UTC')::date from changed_old);
    end if;
    return null;
end $$;

create trigger signal_point_forgets_savings_on_insert after insert on signal_point
    referencing new table as changed_new for each statement execute function forget_savings_days();
create trigger signal_point_forgets_savings_on_update after update on signal_point
    referencing old table as changed_old new table as changed_new
    for each statement execute function forget_savings_days();
create trigger signal_point_forgets_savings_on_delete after delete on signal_point
    referencing old table as changed_old for each statement execute function forget_savings_days();
