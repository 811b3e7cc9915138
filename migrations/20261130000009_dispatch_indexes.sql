-- What claims count on every call: an executor's migrations under way, as
-- source (within its capacity) and as destination (the least busy is chosen).
create index migration_job_held on migration_job (lease_holder)
    where state not in ('done', 'failed', 'cancelled', 'rolled_back');
create index migration_job_receiving on migration_job (destination_executor)
    where state not in ('done', 'failed', 'cancelled', 'rolled_back');
