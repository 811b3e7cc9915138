-- A VM's own IP addresses, which follow it between sites (network
-- continuity). Stored in canonical text form (the domain normalises them);
-- the primary key makes an address belong to one VM at most.
create table vm_address (
    address  text primary key,
    vm_id    bigint not null references vm on delete cascade,
    position smallint not null
);
create index vm_address_vm on vm_address (vm_id, position);
