-- The runs of an accelerated clock (the demo's): when each began in real
-- time, what it read then, its speed, and until when it ran (kept current
-- while it runs). A clock that starts again resumes where the last one
-- stopped, and times recorded in real time are read on it through these.
create table clock_run (
    real_from      timestamptz primary key,
    simulated_from timestamptz not null,
    speed          float8 not null check (speed > 0 and speed <= 3600),
    real_until     timestamptz not null check (real_until >= real_from)
);

-- A database the demo made. Its instance names the directory that holds
-- the demo's executors (their VMs, images and tokens): the two are kept,
-- resumed and reset together.
create table demo (
    singleton  boolean primary key default true check (singleton),
    instance   text not null check (instance ~ '^[0-9a-f]{16,64}$'),
    created_at timestamptz not null default now()
);
