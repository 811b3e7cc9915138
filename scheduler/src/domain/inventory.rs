//! Checks on the operator's inventory: what makes a site, link, VM, group
//! or token acceptable. Rules that need the database (does the named site
//! exist? is the name taken?) are enforced by constraints and reported by
//! the persistence layer.

use chrono_tz::Tz;
use heliotrope_api_spec::{
    CopyStorage, Driver, GroupPolicy, GroupSpec, LibvirtSpec, LinkSpec, NewToken, QemuSpec, Role, SiteSpec, VmSpec,
};

use super::{Valid, ValidationError};

/// Longest name, region label or reference accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Most entries in a VM's allowed sites or regions.
pub const MAX_ALLOWED: usize = 256;

type Result<T> = std::result::Result<T, ValidationError>;

/// A name: 1-64 of `A-Za-z0-9._-`, starting with a letter or digit, so that
/// it is safe in URLs, logs, CSV and Prometheus labels.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(field, format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || !name.chars().all(ok_char) {
        return Err(ValidationError::new(
            field,
            "may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks names given as filters; an absent filter is fine.
pub fn check_filter_names(filters: &[(&str, Option<&str>)]) -> Result<()> {
    filters.iter().try_for_each(|(field, name)| name.map_or(Ok(()), |name| check_name(field, name)))
}

/// Postgres text and jsonb cannot hold NUL characters, so a JSON value
/// that has one anywhere (in a key or a string) is refused up front.
/// Free-form JSON that is stored and read back must hold no NUL (Postgres
/// text refuses it) and no number beyond ±2^53 (such numbers do not survive
/// the round trip through Postgres' exact decimals to a double).
fn check_storable_json(field: &str, value: &serde_json::Value) -> Result<()> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let has_nul = |s: &str| s.contains('\0');
    let why = match value {
        serde_json::Value::String(s) if has_nul(s) => "must not contain NUL characters",
        serde_json::Value::Number(n) if n.as_f64().is_none_or(|x| x.abs() > EXACT) => {
            "numbers must be within ±2^53 (9007199254740992)"
        }
        serde_json::Value::Array(items) => return items.iter().try_for_each(|v| check_storable_json(field, v)),
        serde_json::Value::Object(map) if map.keys().any(|k| has_nul(k)) => "must not contain NUL characters",
        serde_json::Value::Object(map) => return map.values().try_for_each(|v| check_storable_json(field, v)),
        _ => return Ok(()),
    };
    Err(ValidationError::new(field, why))
}

pub(crate) fn check_range(field: &str, value: f64, min: f64, max: f64) -> Result<()> {
    if !(min..=max).contains(&value) {
        return Err(ValidationError::new(field, format!("must be between {min} and {max}, got {value}")));
    }
    Ok(())
}

fn check_positive(field: &str, value: f64, max: f64) -> Result<()> {
    if !(value > 0.0 && value <= max) {
        return Err(ValidationError::new(field, format!("must be above 0 and at most {max}, got {value}")));
    }
    Ok(())
}

pub fn parse_site(spec: SiteSpec) -> Result<Valid<SiteSpec>> {
    check_name("name", &spec.name)?;
    check_name("region", &spec.region)?;
    check_range("latitude", spec.latitude, -90.0, 90.0)?;
    check_range("longitude", spec.longitude, -180.0, 180.0)?;
    if spec.timezone.parse::<Tz>().is_err() {
        return Err(ValidationError::new(
            "timezone",
            format!("'{}' is not an IANA time zone (e.g. Europe/Berlin)", spec.timezone.escape_debug()),
        ));
    }
    check_range("capacity.vcpus", f64::from(spec.capacity.vcpus), 0.0, 1.0e8)?;
    check_range("capacity.memory_gib", spec.capacity.memory_gib, 0.0, 1.0e9)?;
    check_range("capacity.disk_gib", spec.capacity.disk_gib, 0.0, 1.0e12)?;
    check_range("pue", spec.pue, 1.0, 5.0)?;
    check_range("power_model.watts_per_vcpu", spec.power_model.watts_per_vcpu, 0.0, 1000.0)?;
    check_range("power_model.watts_per_gib", spec.power_model.watts_per_gib, 0.0, 100.0)?;
    for (field, shared) in [("uplink_mbps", spec.uplink_mbps), ("downlink_mbps", spec.downlink_mbps)] {
        if let Some(mbps) = shared {
            check_positive(field, mbps, 1.0e8)?;
        }
    }
    Ok(Valid(spec))
}

pub fn parse_link(spec: LinkSpec) -> Result<Valid<LinkSpec>> {
    check_name("from_site", &spec.from_site)?;
    check_name("to_site", &spec.to_site)?;
    if spec.from_site == spec.to_site {
        return Err(ValidationError::new("to_site", "must differ from from_site"));
    }
    check_positive("bandwidth_mbps", spec.bandwidth_mbps, 1.0e7)?;
    check_range("rtt_ms", spec.rtt_ms, 0.0, 10_000.0)?;
    check_range("background_reserve_pct", spec.background_reserve_pct, 0.0, 95.0)?;
    check_range("egress_cost_per_gb", spec.egress_cost_per_gb, 0.0, 1000.0)?;
    Ok(Valid(spec))
}

pub fn parse_vm(mut spec: VmSpec) -> Result<Valid<VmSpec>> {
    check_name("name", &spec.name)?;
    spec.addresses = parse_addresses(&spec.addresses)?;
    check_range("vcpus", f64::from(spec.vcpus), 1.0, 1024.0)?;
    check_positive("memory_gib", spec.memory_gib, 65_536.0)?;
    check_range("disk_gib", spec.disk_gib, 0.0, 1.0e6)?;
    check_range("dirty_rate_mbps", spec.dirty_rate_mbps, 0.0, 1.0e6)?;
    check_name("site", &spec.site)?;
    if spec.allowed_sites.is_some() && spec.allowed_regions.is_some() {
        return Err(ValidationError::new("allowed_regions", "give allowed_sites or allowed_regions, not both"));
    }
    for (field, list) in [("allowed_sites", &spec.allowed_sites), ("allowed_regions", &spec.allowed_regions)] {
        let Some(list) = list else { continue };
        if list.len() > MAX_ALLOWED {
            return Err(ValidationError::new(field, format!("may name at most {MAX_ALLOWED} entries")));
        }
        if list.is_empty() {
            return Err(ValidationError::new(field, "must not be empty (omit it to allow anywhere)"));
        }
        for (i, name) in list.iter().enumerate() {
            check_name(&format!("{field}[{i}]"), name)?;
            if list[..i].contains(name) {
                return Err(ValidationError::new(format!("{field}[{i}]"), format!("'{name}' is listed twice")));
            }
        }
    }
    if let Some(allowed) = &spec.allowed_sites {
        if spec.pinned && !allowed.contains(&spec.site) {
            return Err(ValidationError::new("allowed_sites", "a pinned VM's own site must be allowed"));
        }
    }
    if let Some(group) = &spec.group {
        check_name("group", group)?;
    }
    if spec.standby_sites.len() > MAX_STANDBY_SITES {
        return Err(ValidationError::new("standby_sites", format!("may name at most {MAX_STANDBY_SITES} sites")));
    }
    for (i, name) in spec.standby_sites.iter().enumerate() {
        let field = format!("standby_sites[{i}]");
        check_name(&field, name)?;
        if spec.standby_sites[..i].contains(name) {
            return Err(ValidationError::new(field, format!("'{name}' is listed twice")));
        }
        if spec.allowed_sites.as_ref().is_some_and(|allowed| !allowed.contains(name)) {
            return Err(ValidationError::new(field, format!("'{name}' is not among its allowed_sites")));
        }
    }
    check_range("priority", f64::from(spec.priority), 0.0, 100.0)?;
    check_range("max_downtime_ms", f64::from(spec.max_downtime_ms), 1.0, 3_600_000.0)?;
    if !spec.driver_spec.is_object() {
        return Err(ValidationError::new("driver_spec", "must be a JSON object"));
    }
    check_storable_json("driver_spec", &spec.driver_spec)?;
    match spec.driver {
        Driver::Qemu => check_qemu_spec(&spec.driver_spec, spec.memory_gib)?,
        Driver::Libvirt => check_libvirt_spec(&spec.driver_spec)?,
        Driver::Sim => {}
    }
    Ok(Valid(spec))
}

/// A name a hypervisor takes as it is: 1-64 of `A-Za-z0-9-_.`.
fn word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A file path a hypervisor's options take as it is: absolute, without
/// the commas QEMU's options split on, and without `.` or `..` steps.
fn path(s: &str) -> bool {
    s.len() <= 4096
        && s.starts_with('/')
        && !s.contains(',')
        && !s.contains('\0')
        && s.split('/').skip(1).all(|step| !step.is_empty() && step != "." && step != "..")
}

/// A `libvirt` VM's `driver_spec` must be a [`LibvirtSpec`]: a domain
/// name and disks the destination executor can create (distinct targets
/// and paths, a backing image only under a qcow2 overlay).
fn check_libvirt_spec(value: &serde_json::Value) -> Result<()> {
    let spec: LibvirtSpec = serde_json::from_value(value.clone())
        .map_err(|e| ValidationError::new("driver_spec", format!("not a libvirt spec: {e}")))?;
    if !word(&spec.domain) {
        return Err(ValidationError::new("driver_spec.domain", "1-64 letters, digits, '-', '_', '.'"));
    }
    if spec.disks.len() > 16 {
        return Err(ValidationError::new("driver_spec.disks", "at most 16"));
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        let field = |name: &str| format!("driver_spec.disks[{i}].{name}");
        if !word(&disk.target) {
            return Err(ValidationError::new(field("target"), "a target device, like vda"));
        }
        if !path(&disk.path) {
            return Err(ValidationError::new(field("path"), "an absolute path without commas"));
        }
        if !["qcow2", "raw"].contains(&disk.format.as_str()) {
            return Err(ValidationError::new(field("format"), "qcow2 or raw"));
        }
        check_range(&field("size_bytes"), disk.size_bytes as f64, 1.0, 2f64.powi(50))?;
        match &disk.backing {
            None if spec.copy_storage == CopyStorage::Incremental => {
                return Err(ValidationError::new(
                    field("backing"),
                    "copy_storage incremental copies a disk over its backing image: name it",
                ));
            }
            Some(backing) if !path(backing) => {
                return Err(ValidationError::new(field("backing"), "an absolute path without commas"));
            }
            Some(_) if disk.format != "qcow2" => {
                return Err(ValidationError::new(field("backing"), "only a qcow2 disk has a backing image"));
            }
            _ => {}
        }
        let earlier = &spec.disks[..i];
        if earlier.iter().any(|d| d.target == disk.target || d.path == disk.path) {
            return Err(ValidationError::new(field("target"), "each disk has its own target and path"));
        }
    }
    Ok(())
}

/// The most standby sites an operator may name for one VM.
const MAX_STANDBY_SITES: usize = 8;

/// The most addresses one VM may carry.
const MAX_ADDRESSES: usize = 16;

/// A VM's addresses in canonical form: host addresses a guest can own
/// (not unspecified, loopback or multicast), each listed once.
fn parse_addresses(addresses: &[String]) -> Result<Vec<String>> {
    if addresses.len() > MAX_ADDRESSES {
        return Err(ValidationError::new("addresses", format!("at most {MAX_ADDRESSES}")));
    }
    let mut canonical: Vec<String> = Vec::with_capacity(addresses.len());
    for (i, text) in addresses.iter().enumerate() {
        let field = format!("addresses[{i}]");
        let ip: std::net::IpAddr = text
            .parse()
            .map_err(|_| ValidationError::new(&field, format!("'{text}' is not an IPv4 or IPv6 address")))?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(ValidationError::new(&field, format!("{ip} cannot be a VM's own address")));
        }
        let ip = ip.to_string();
        if canonical.contains(&ip) {
            return Err(ValidationError::new(&field, format!("{ip} is listed twice")));
        }
        canonical.push(ip);
    }
    Ok(canonical)
}

/// A `qemu` VM's `driver_spec` must be a [`QemuSpec`] an executor can
/// start: names QEMU takes, paths without the commas its options split on,
/// and as much memory as the inventory says the VM has.
fn check_qemu_spec(value: &serde_json::Value, memory_gib: f64) -> Result<()> {
    let spec: QemuSpec = serde_json::from_value(value.clone())
        .map_err(|e| ValidationError::new("driver_spec", format!("not a qemu spec: {e}")))?;
    if !word(&spec.machine) {
        return Err(ValidationError::new("driver_spec.machine", "a QEMU machine type, like q35"));
    }
    if !["tcg", "kvm"].contains(&spec.accel.as_str()) {
        return Err(ValidationError::new("driver_spec.accel", "tcg or kvm"));
    }
    check_range("driver_spec.memory_mib", spec.memory_mib as f64, 16.0, 1_048_576.0)?;
    if (spec.memory_mib as f64 / 1024.0 - memory_gib).abs() > 0.5 {
        return Err(ValidationError::new(
            "driver_spec.memory_mib",
            format!("must match memory_gib ({memory_gib} GiB)"),
        ));
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if !word(&disk.node) {
            return Err(ValidationError::new(format!("driver_spec.disks[{i}].node"), "letters, digits, '-', '_', '.'"));
        }
        if !path(&disk.path) {
            return Err(ValidationError::new(
                format!("driver_spec.disks[{i}].path"),
                "an absolute path without commas",
            ));
        }
        if !["qcow2", "raw"].contains(&disk.format.as_str()) {
            return Err(ValidationError::new(format!("driver_spec.disks[{i}].format"), "qcow2 or raw"));
        }
        check_range(&format!("driver_spec.disks[{i}].size_bytes"), disk.size_bytes as f64, 1.0, 2f64.powi(50))?;
    }
    if spec.disks.iter().enumerate().any(|(i, d)| spec.disks[..i].iter().any(|e| e.node == d.node)) {
        return Err(ValidationError::new("driver_spec.disks", "node names must differ"));
    }
    let kernel = spec.kernel.as_ref();
    let paths = [
        ("driver_spec.boot_image", spec.boot_image.as_deref()),
        ("driver_spec.qmp_socket", spec.qmp_socket.as_deref()),
        ("driver_spec.kernel.path", kernel.map(|k| k.path.as_str())),
        ("driver_spec.kernel.initrd", kernel.and_then(|k| k.initrd.as_deref())),
    ];
    for (field, value) in paths {
        if value.is_some_and(|p| !path(p)) {
            return Err(ValidationError::new(field, "an absolute path without commas"));
        }
    }
    if let Some(kernel) = kernel {
        if kernel.append.len() > 1024 || !kernel.append.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(ValidationError::new("driver_spec.kernel.append", "at most 1024 printable ASCII characters"));
        }
        if spec.boot_image.is_some() {
            return Err(ValidationError::new("driver_spec.kernel", "a VM boots a kernel or a boot image, not both"));
        }
    }
    Ok(())
}

pub fn parse_group(spec: GroupSpec) -> Result<Valid<GroupSpec>> {
    check_name("name", &spec.name)?;
    match spec.policy {
        GroupPolicy::Spread { min_sites, max_per_site } => {
            check_range("policy.min_sites", f64::from(min_sites), 1.0, 1000.0)?;
            check_range("policy.max_per_site", f64::from(max_per_site), 1.0, 100_000.0)?;
        }
        GroupPolicy::Colocate { max_rtt_ms } => check_range("policy.max_rtt_ms", max_rtt_ms, 0.0, 10_000.0)?,
    }
    Ok(Valid(spec))
}

pub fn parse_token(spec: NewToken) -> Result<Valid<NewToken>> {
    check_name("name", &spec.name)?;
    match (&spec.site, spec.role) {
        (Some(site), Role::Executor) => check_name("site", site)?,
        (None, Role::Executor) => {
            return Err(ValidationError::new("site", "an executor token names the site it serves"));
        }
        (Some(_), _) => return Err(ValidationError::new("site", "only an executor token serves a site")),
        (None, _) => {}
    }
    Ok(Valid(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliotrope_api_spec::{Capacity, Driver, PowerModel, SiteState};

    pub(crate) fn site() -> SiteSpec {
        SiteSpec {
            name: "DE-LU".into(),
            region: "DE-LU".into(),
            latitude: 50.1,
            longitude: 8.7,
            timezone: "Europe/Berlin".into(),
            capacity: Capacity { vcpus: 100, memory_gib: 400.0, disk_gib: 10_000.0 },
            pue: 1.2,
            power_model: PowerModel { watts_per_vcpu: 10.0, watts_per_gib: 0.4 },
            state: SiteState::Active,
            uplink_mbps: None,
            downlink_mbps: None,
        }
    }

    fn vm() -> VmSpec {
        serde_json::from_value(serde_json::json!({
            "name": "web-1", "vcpus": 2, "memory_gib": 4.0, "disk_gib": 40.0,
            "dirty_rate_mbps": 50.0, "site": "DE-LU", "driver": "sim"
        }))
        .unwrap()
    }

    fn field_of<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn names_follow_the_charset() {
        assert!(check_name("name", "US-CAL-CISO").is_ok());
        assert!(check_name("name", "a.b_c-9").is_ok());
        for bad in ["", "-lead", "sp ace", "ünï", &"x".repeat(65), "a/b"] {
            assert!(check_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn site_rules_name_the_field() {
        assert!(parse_site(site()).is_ok());
        assert_eq!(field_of(parse_site(SiteSpec { pue: 0.9, ..site() })), "pue");
        assert_eq!(field_of(parse_site(SiteSpec { latitude: 91.0, ..site() })), "latitude");
        assert_eq!(field_of(parse_site(SiteSpec { timezone: "Mars/Olympus".into(), ..site() })), "timezone");
        let mut s = site();
        s.capacity.memory_gib = -1.0;
        assert_eq!(field_of(parse_site(s)), "capacity.memory_gib");
    }

    #[test]
    fn link_ends_must_differ() {
        let link = LinkSpec {
            from_site: "A".into(),
            to_site: "A".into(),
            bandwidth_mbps: 1000.0,
            rtt_ms: 10.0,
            background_reserve_pct: 20.0,
            egress_cost_per_gb: 0.0,
            symmetric: false,
        };
        assert_eq!(field_of(parse_link(link.clone())), "to_site");
        let link = LinkSpec { to_site: "B".into(), bandwidth_mbps: 0.0, ..link };
        assert_eq!(field_of(parse_link(link)), "bandwidth_mbps");
    }

    #[test]
    fn vm_rules() {
        let ok = parse_vm(vm()).unwrap();
        assert_eq!(ok.priority, 50);
        assert_eq!(ok.max_downtime_ms, 300);
        assert_eq!(ok.driver, Driver::Sim);
        let standbys = |names: &[&str]| VmSpec { standby_sites: names.iter().map(|n| n.to_string()).collect(), ..vm() };
        assert!(parse_vm(standbys(&["GB", "FR"])).is_ok());
        assert_eq!(field_of(parse_vm(standbys(&["GB", "GB"]))), "standby_sites[1]");
        assert_eq!(field_of(parse_vm(standbys(&["G B"]))), "standby_sites[0]");
        assert_eq!(field_of(parse_vm(standbys(&["a"; 9]))), "standby_sites");
        let outside = VmSpec { allowed_sites: Some(vec!["DE-LU".into()]), ..standbys(&["GB"]) };
        assert_eq!(field_of(parse_vm(outside)), "standby_sites[0]");
        let both = VmSpec { allowed_sites: Some(vec!["A".into()]), allowed_regions: Some(vec!["R".into()]), ..vm() };
        assert_eq!(field_of(parse_vm(both)), "allowed_regions");
        let dup = VmSpec { allowed_sites: Some(vec!["DE-LU".into(), "DE-LU".into()]), ..vm() };
        assert_eq!(field_of(parse_vm(dup)), "allowed_sites[1]");
        let pinned_away = VmSpec { pinned: true, allowed_sites: Some(vec!["GB".into()]), ..vm() };
        assert_eq!(field_of(parse_vm(pinned_away)), "allowed_sites");
        assert_eq!(field_of(parse_vm(VmSpec { priority: 101, ..vm() })), "priority");
        assert_eq!(field_of(parse_vm(VmSpec { driver_spec: serde_json::json!([1]), ..vm() })), "driver_spec");
        assert_eq!(field_of(parse_vm(VmSpec { memory_gib: 0.0, ..vm() })), "memory_gib");
        let addresses = |list: &[&str]| VmSpec { addresses: list.iter().map(|a| a.to_string()).collect(), ..vm() };
        assert_eq!(field_of(parse_vm(addresses(&["10.0.0.1", "10.0.0.x"]))), "addresses[1]");
        assert_eq!(field_of(parse_vm(addresses(&["127.0.0.1"]))), "addresses[0]");
        assert_eq!(field_of(parse_vm(addresses(&["2001:db8::1", "2001:0db8::0001"]))), "addresses[1]");
        let canonical = parse_vm(addresses(&["2001:0DB8:0:0::10", "192.0.2.7"])).unwrap();
        assert_eq!(canonical.addresses, ["2001:db8::10", "192.0.2.7"]);
        let nul = serde_json::json!({"disks": [{"path": "a\u{0}b"}]});
        assert_eq!(field_of(parse_vm(VmSpec { driver_spec: nul, ..vm() })), "driver_spec");
        let nul_key = serde_json::json!({"a\u{0}": 1});
        assert_eq!(field_of(parse_vm(VmSpec { driver_spec: nul_key, ..vm() })), "driver_spec");
        let huge = serde_json::json!({"size": 1.7976931348623157e308});
        assert_eq!(field_of(parse_vm(VmSpec { driver_spec: huge, ..vm() })), "driver_spec");
        let fine = serde_json::json!({"size_bytes": 268435456u64, "ratio": -0.5});
        assert!(parse_vm(VmSpec { driver_spec: fine, ..vm() }).is_ok());
    }

    #[test]
    fn a_libvirt_spec_names_a_domain_and_disks_the_destination_can_make() {
        let libvirt = |spec: serde_json::Value| parse_vm(VmSpec { driver: Driver::Libvirt, driver_spec: spec, ..vm() });
        let disk = serde_json::json!({"target": "vda", "path": "/var/lib/libvirt/images/web.qcow2",
            "size_bytes": 1u64 << 30, "backing": "/srv/base.qcow2"});
        let ok = libvirt(serde_json::json!({"domain": "web-1", "copy_storage": "incremental", "disks": [disk]}));
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(field_of(libvirt(serde_json::json!({"disks": []}))), "driver_spec");
        assert_eq!(field_of(libvirt(serde_json::json!({"domain": "a b"}))), "driver_spec.domain");
        assert_eq!(field_of(libvirt(serde_json::json!({"domain": "w", "copy_storage": "some"}))), "driver_spec");
        let with = |field: &str, value: serde_json::Value| {
            let mut disk = disk.clone();
            disk[field] = value;
            libvirt(serde_json::json!({"domain": "w", "disks": [disk]}))
        };
        assert_eq!(field_of(with("path", "images/web.qcow2".into())), "driver_spec.disks[0].path");
        assert_eq!(field_of(with("path", "/a,b".into())), "driver_spec.disks[0].path");
        assert_eq!(field_of(with("target", "".into())), "driver_spec.disks[0].target");
        assert_eq!(field_of(with("format", "vmdk".into())), "driver_spec.disks[0].format");
        assert_eq!(field_of(with("size_bytes", 0.into())), "driver_spec.disks[0].size_bytes");
        assert_eq!(field_of(with("backing", "base.qcow2".into())), "driver_spec.disks[0].backing");
        assert_eq!(field_of(with("path", "/var/lib/../../etc/shadow".into())), "driver_spec.disks[0].path");
        assert_eq!(field_of(with("path", "/var//x".into())), "driver_spec.disks[0].path");
        let mut plain = disk.clone();
        plain.as_object_mut().unwrap().remove("backing");
        let incremental = libvirt(serde_json::json!({"domain": "w", "copy_storage": "incremental", "disks": [plain]}));
        assert_eq!(field_of(incremental), "driver_spec.disks[0].backing");
        let mut raw = disk.clone();
        raw["format"] = "raw".into();
        assert_eq!(
            field_of(libvirt(serde_json::json!({"domain": "w", "disks": [raw]}))),
            "driver_spec.disks[0].backing"
        );
        let twice = libvirt(serde_json::json!({"domain": "w", "disks": [disk, disk]}));
        assert_eq!(field_of(twice), "driver_spec.disks[1].target");
    }

    #[test]
    fn filters_are_names() {
        assert!(check_filter_names(&[("site", None), ("group", Some("db"))]).is_ok());
        let nul = check_filter_names(&[("site", Some("A")), ("region", Some("x\0y"))]);
        assert_eq!(field_of(nul), "region");
    }

    #[test]
    fn group_policies() {
        let spread = GroupSpec { name: "db".into(), policy: GroupPolicy::Spread { min_sites: 0, max_per_site: 1 } };
        assert_eq!(field_of(parse_group(spread)), "policy.min_sites");
        let colo = GroupSpec { name: "db".into(), policy: GroupPolicy::Colocate { max_rtt_ms: 5.0 } };
        assert!(parse_group(colo).is_ok());
    }
}
