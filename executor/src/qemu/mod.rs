//! The `qemu` driver: real QEMU VMs, driven over QMP, migrated live with
//! all of QEMU's traffic carried by the executors' tunnels.

pub mod export;
pub mod guest;
pub mod machine;
pub mod migrate;
pub mod pair;
pub mod qmp;
pub mod stream;
