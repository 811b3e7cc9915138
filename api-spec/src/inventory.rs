//! The operator's inventory: sites, the WAN links between them, the VMs
//! they host, VM groups, and (read-only) the executors at each site.
//!
//! Each resource has a `*Spec` (what a client sends to create or replace
//! it) and a response type that adds the server's fields (`id`,
//! timestamps). References between resources use names, since those are
//! what operators know; ids appear in paths.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whether a site takes work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    /// Hosts VMs and accepts new ones.
    #[default]
    Active,
    /// Keeps what it hosts until moved away; accepts nothing new.
    Draining,
    /// Out of service: everything should leave.
    Down,
}

/// Resources a site offers to VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Capacity {
    #[schema(minimum = 0, maximum = 100000000)]
    pub vcpus: u32,
    #[schema(minimum = 0, maximum = 1.0e9)]
    pub memory_gib: f64,
    #[schema(minimum = 0, maximum = 1.0e12)]
    pub disk_gib: f64,
}

/// Linear power model of the servers at a site (before PUE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PowerModel {
    /// Watts drawn per allocated vCPU.
    #[schema(minimum = 0, maximum = 1000)]
    pub watts_per_vcpu: f64,
    /// Watts drawn per allocated GiB of memory.
    #[schema(minimum = 0, maximum = 100)]
    pub watts_per_gib: f64,
}

/// What a client sends to create or replace a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SiteSpec {
    /// Unique name, 1-64 of `A-Za-z0-9._-`, starting with a letter or digit.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub name: String,
    /// Grid region label (e.g. an Electricity Maps zone such as `DE-LU`).
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub region: String,
    #[schema(minimum = -90, maximum = 90)]
    pub latitude: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub longitude: f64,
    /// IANA time zone, e.g. `Europe/Berlin`.
    #[schema(min_length = 1, max_length = 64, example = "Europe/Berlin")]
    pub timezone: String,
    pub capacity: Capacity,
    /// Power usage effectiveness: facility power / IT power, at least 1.0.
    #[schema(minimum = 1.0, maximum = 5.0)]
    pub pue: f64,
    pub power_model: PowerModel,
    #[serde(default)]
    pub state: SiteState,
    /// What all the site's outgoing WAN links together can send, megabits per
    /// second, where they share one uplink; absent for no shared limit.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 100000000)]
    pub uplink_mbps: Option<f64>,
    /// The same for what the site can receive.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 100000000)]
    pub downlink_mbps: Option<f64>,
}

/// A site as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Site {
    pub id: i64,
    #[serde(flatten)]
    pub spec: SiteSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a client sends to create or replace a directed WAN link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LinkSpec {
    /// Name of the sending site.
    #[schema(min_length = 1, max_length = 64)]
    pub from_site: String,
    /// Name of the receiving site.
    #[schema(min_length = 1, max_length = 64)]
    pub to_site: String,
    /// Capacity of the link in megabits per second.
    #[schema(exclusive_minimum = 0, maximum = 10000000)]
    pub bandwidth_mbps: f64,
    /// Round-trip time in milliseconds.
    #[schema(minimum = 0, maximum = 10000)]
    pub rtt_ms: f64,
    /// Share of the bandwidth kept for other traffic, 0 to 95 percent.
    #[schema(minimum = 0, maximum = 95)]
    pub background_reserve_pct: f64,
    /// What the provider charges per GB sent over this link, in the price
    /// currency (0 on your own WAN).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    pub egress_cost_per_gb: f64,
    /// On create only: also create the reverse link with the same figures.
    #[serde(default, skip_serializing)]
    pub symmetric: bool,
}

/// A directed link as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Link {
    pub id: i64,
    #[serde(flatten)]
    pub spec: LinkSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Answer to `POST /v1/links`: one link, or two when `symmetric` was set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedLinks {
    pub links: Vec<Link>,
}

/// The hypervisor driver that runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// A synthetic VM (memory and disk image files and a page-dirtying task):
    /// real bytes, simulated guest. Labelled as simulated wherever it shows.
    Sim,
    /// A real QEMU driven over QMP.
    Qemu,
    /// A domain run by libvirt, driven through libvirt's API.
    Libvirt,
}

/// A `qemu` VM's `driver_spec`: what QEMU it is, so that the destination
/// executor can start the matching one to migrate into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuSpec {
    /// Machine type (default `q35`).
    #[serde(default = "default_machine")]
    pub machine: String,
    /// `tcg` (no KVM needed, the default) or `kvm`.
    #[serde(default = "default_accel")]
    pub accel: String,
    #[schema(minimum = 16, maximum = 1048576)]
    pub memory_mib: u64,
    /// Disks that move with the VM (mirrored over NBD). At the destination
    /// each lands in the VM's directory, named after its node.
    #[serde(default)]
    pub disks: Vec<QemuDisk>,
    /// A read-only raw boot image every site holds at this path (shared storage: never copied).
    #[serde(default)]
    pub boot_image: Option<String>,
    /// A Linux kernel booted directly (`-kernel`), from files every site holds at these paths.
    #[serde(default)]
    pub kernel: Option<QemuKernel>,
    /// The QMP socket of the VM as it runs now, for the executor to adopt
    /// (default: `qmp.sock` in the VM's directory under the executor's data dir).
    #[serde(default)]
    pub qmp_socket: Option<String>,
}

/// A kernel a `qemu` VM boots directly, without a boot disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuKernel {
    /// The kernel image (`-kernel`).
    pub path: String,
    /// Its initramfs (`-initrd`).
    #[serde(default)]
    pub initrd: Option<String>,
    /// Its command line (`-append`): printable ASCII.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub append: String,
}

/// One disk of a `qemu` VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuDisk {
    /// Its block node name, the same at both ends.
    pub node: String,
    /// Its file at the VM's current site.
    pub path: String,
    /// `qcow2` (the default) or `raw`.
    #[serde(default = "default_format")]
    pub format: String,
    /// Its virtual size, for the empty target disk at the destination.
    #[schema(minimum = 1)]
    pub size_bytes: u64,
}

/// A `libvirt` VM's `driver_spec`: the domain libvirt runs it as, and
/// its disks, which the destination executor creates empty at the same
/// paths for libvirt to copy into (libvirt's storage copy needs them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LibvirtSpec {
    /// The domain's name at its site's libvirt; it keeps it at the destination.
    #[schema(min_length = 1, max_length = 64)]
    pub domain: String,
    /// How its disks move: `all` copies each whole (`VIR_MIGRATE_NON_SHARED_DISK`);
    /// `incremental` copies only each disk's top image, its backing image
    /// being at every site already (`VIR_MIGRATE_NON_SHARED_INC`).
    #[serde(default)]
    pub copy_storage: CopyStorage,
    /// The disks that move with the domain (its other disks are on storage every site shares).
    #[serde(default)]
    #[schema(max_items = 16)]
    pub disks: Vec<LibvirtDisk>,
}

/// How a `libvirt` VM's disks move (see [`LibvirtSpec::copy_storage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CopyStorage {
    #[default]
    All,
    Incremental,
}

/// One disk of a `libvirt` VM, as its domain's XML has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LibvirtDisk {
    /// Its target device (`vda`).
    pub target: String,
    /// Its file: the same path at every site.
    pub path: String,
    /// `qcow2` (the default) or `raw`.
    #[serde(default = "default_format")]
    pub format: String,
    /// Its virtual size, for the empty disk at the destination.
    #[schema(minimum = 1)]
    pub size_bytes: u64,
    /// Its backing image (a qcow2 overlay's), at the same path at every site.
    #[serde(default)]
    pub backing: Option<String>,
}

fn default_machine() -> String {
    "q35".into()
}

fn default_accel() -> String {
    "tcg".into()
}

fn default_format() -> String {
    "qcow2".into()
}

/// What a client sends to create or replace a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmSpec {
    /// Unique name, 1-64 of `A-Za-z0-9._-`, starting with a letter or digit.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1024)]
    pub vcpus: u32,
    #[schema(exclusive_minimum = 0, maximum = 65536)]
    pub memory_gib: f64,
    #[schema(minimum = 0, maximum = 1000000)]
    pub disk_gib: f64,
    /// Rate at which the guest dirties memory, measured or estimated.
    #[schema(minimum = 0, maximum = 1000000)]
    pub dirty_rate_mbps: f64,
    /// Name of the site the VM runs at now.
    #[schema(min_length = 1, max_length = 64)]
    pub site: String,
    /// Sites the VM may run at (by name). Give this or `allowed_regions`, not both;
    /// neither means anywhere.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub allowed_sites: Option<Vec<String>>,
    /// Region labels the VM may run in.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub allowed_regions: Option<Vec<String>>,
    /// A pinned VM never moves.
    #[serde(default)]
    pub pinned: bool,
    /// Its standbys keep room for it: plans leave that room free, and
    /// standbys are chosen for it only where there is room, so that it can
    /// restart there if its site is lost; recovery places it before the
    /// VMs that are not protected.
    #[serde(default)]
    pub protected: bool,
    /// Name of the VM group the VM belongs to.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub group: Option<String>,
    /// 0 (lowest) to 100; higher goes first in evacuations.
    #[serde(default = "default_priority")]
    #[schema(minimum = 0, maximum = 100)]
    pub priority: u8,
    /// Longest pause the VM tolerates at cutover.
    #[serde(default = "default_max_downtime_ms")]
    #[schema(minimum = 1, maximum = 3600000)]
    pub max_downtime_ms: u32,
    pub driver: Driver,
    /// Driver-specific settings (a JSON object), checked by the driver when it runs the VM.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub driver_spec: serde_json::Value,
    /// The VM's own IP addresses (each an IPv4 /32 or IPv6 /128), which
    /// follow it from site to site; stored in canonical form, each held by
    /// one VM at most.
    #[serde(default)]
    #[schema(max_items = 16, example = json!(["192.0.2.10", "2001:db8::10"]))]
    pub addresses: Vec<String>,
    /// Sites where the VM's disk should be kept warm (replicated in the
    /// background), by name, beside those the scheduler chooses from its
    /// plans: a migration to a standby sends only what was written since
    /// the last sync. Never the VM's own site while it runs there.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub standby_sites: Vec<String>,
}

fn default_priority() -> u8 {
    50
}

fn default_max_downtime_ms() -> u32 {
    300
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A VM as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub id: i64,
    #[serde(flatten)]
    pub spec: VmSpec,
    /// The standbys in force: where its disk is replicated now, and how fresh each replica is.
    #[serde(default)]
    pub standbys: Vec<Standby>,
    /// The guest's dirty rate as its executors measured it while migrating it, smoothed,
    /// Mbit/s; absent until one did. Once known, the planner and the dispatcher use it in
    /// place of the declared `dirty_rate_mbps`.
    #[serde(default)]
    pub measured_dirty_rate_mbps: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Who made a site a VM's standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StandbyChoice {
    /// Named in the VM's `standby_sites`.
    Operator,
    /// Chosen by the scheduler: a destination its recent or forecast plans favour.
    Plans,
}

/// A site holding a replica of a VM's disk, as its source executor last reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Standby {
    pub site: String,
    pub chosen_by: StandbyChoice,
    pub chosen_at: DateTime<Utc>,
    /// When the last sync completed: the replica holds the disk as it was then
    /// (absent until the first full sync completes).
    pub synced_at: Option<DateTime<Utc>>,
    /// Bytes of the disk the replica holds as of `synced_at`.
    pub synced_bytes: u64,
    /// Bytes the VM wrote since `synced_at` (what a migration there still sends of the disk).
    pub written_bytes: u64,
    /// When its source executor last reported a change in it.
    pub reported_at: Option<DateTime<Utc>>,
}

/// How the members of a multi-site virtual cluster must be placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GroupPolicy {
    /// Members span at least `min_sites` sites with at most `max_per_site` at each.
    Spread {
        #[schema(minimum = 1, maximum = 1000)]
        min_sites: u32,
        #[schema(minimum = 1, maximum = 100000)]
        max_per_site: u32,
    },
    /// All members run at sites within `max_rtt_ms` of each other.
    Colocate {
        #[schema(minimum = 0, maximum = 10000)]
        max_rtt_ms: f64,
    },
}

/// The kind of a [`GroupPolicy`], for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupPolicyKind {
    Spread,
    Colocate,
}

/// What a client sends to create or replace a VM group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupSpec {
    /// Unique name, 1-64 of `A-Za-z0-9._-`, starting with a letter or digit.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub name: String,
    pub policy: GroupPolicy,
}

/// A VM group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub id: i64,
    #[serde(flatten)]
    pub spec: GroupSpec,
    /// How many VMs belong to the group.
    pub members: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whether an executor is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorState {
    Online,
    Offline,
    Draining,
}

/// A registered executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Executor {
    pub id: i64,
    /// Name of the site it serves.
    pub site: String,
    /// Address its peers reach it at for transfers.
    pub address: String,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub state: ExecutorState,
    /// `sim` executors move simulated guests (real bytes); `qemu` ones real VMs.
    pub driver: Driver,
    /// Migrations it runs at once.
    pub capacity: u32,
    /// Where its network driver's tunnels end, if it said.
    pub tunnel_address: Option<String>,
    /// Its transfer listener's health, as its last heartbeat reported it.
    #[serde(default)]
    pub listener: Option<ListenerHealth>,
    /// The VMs it said it runs, with its last replication report.
    #[serde(default)]
    pub running: Vec<String>,
    /// Since when it holds its VMs stopped (its site is down, or it lost the scheduler).
    #[serde(default)]
    pub fenced_since: Option<DateTime<Utc>>,
}

/// What an executor says with its heartbeat (`POST /v1/executors/{id}/heartbeat`; the body may be left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub listener: Option<ListenerHealth>,
}

/// The health of an executor's transfer listener. An executor whose
/// listener is not accepting is handed no migration to receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerHealth {
    /// Whether it accepts connections now (false after a failed accept with no success since).
    pub accepting: bool,
    /// Accepts that failed since the executor started (out of descriptors, say).
    #[schema(minimum = 0)]
    pub accept_errors: u64,
    /// Connections closed at once for the caps (overall, per peer address).
    #[schema(minimum = 0)]
    pub refused: u64,
    /// Connections open now.
    #[schema(minimum = 0)]
    pub open: u32,
    /// The last failed accept's error.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub last_error: Option<String>,
}

/// Filters of `GET /v1/sites`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SiteFilter {
    /// Only sites with this region label.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub region: Option<String>,
    /// Only sites in this state.
    pub state: Option<SiteState>,
}

/// Filters of `GET /v1/links`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkFilter {
    /// Only links leaving this site (by name).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub from_site: Option<String>,
    /// Only links arriving at this site (by name).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub to_site: Option<String>,
}

/// Filters of `GET /v1/vms`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VmFilter {
    /// Only VMs at this site (by name).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub site: Option<String>,
    /// Only members of this group (by name).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub group: Option<String>,
    pub driver: Option<Driver>,
    pub pinned: Option<bool>,
}

/// Filters of `GET /v1/groups`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupFilter {
    /// Only groups with this kind of policy.
    pub policy: Option<GroupPolicyKind>,
}

/// Filters of `GET /v1/executors`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutorFilter {
    /// Only executors at this site (by name).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub site: Option<String>,
    pub state: Option<ExecutorState>,
}
