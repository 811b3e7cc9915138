-- Every committed change to the inventory a scheduler replica may cache
-- (sites, links, VMs, their allowed sites, groups) notifies channel
-- `heliotrope_inventory`, whoever made it: the API, another replica, or an
-- operator with psql. NOTIFY is delivered at commit and deduplicated per
-- transaction, so a bulk change costs one notification.

create or replace function notify_inventory_changed() returns trigger as $$
begin
    perform pg_notify('heliotrope_inventory', tg_table_name);
    return null;
end;
$$ language plpgsql;

create trigger site_notify after insert or update or delete or truncate on site
    for each statement execute function notify_inventory_changed();
create trigger link_notify after insert or update or delete or truncate on link
    for each statement execute function notify_inventory_changed();
create trigger vm_notify after insert or update or delete or truncate on vm
    for each statement execute function notify_inventory_changed();
create trigger vm_allowed_site_notify after insert or update or delete or truncate on vm_allowed_site
    for each statement execute function notify_inventory_changed();
create trigger vm_group_notify after insert or update or delete or truncate on vm_group
    for each statement execute function notify_inventory_changed();
