-- The libvirt driver: VMs whose domains libvirt runs, and executors that drive them.
alter table vm drop constraint vm_driver_check;
alter table vm add constraint vm_driver_check check (driver in ('sim', 'qemu', 'libvirt'));
alter table executor drop constraint executor_driver_check;
alter table executor add constraint executor_driver_check check (driver in ('sim', 'qemu', 'libvirt'));
