//! A believable fleet to start from: the 16 real regions as sites, WAN
//! links between every pair, and a seeded mix of VM shapes. Used by
//! `heliotrope demo` and the benchmarks. Pure: it only builds wire values.

use heliotrope_api_spec::{
    Capacity, Driver, GroupPolicy, GroupSpec, LinkSpec, PowerModel, SiteSpec, SiteState, VmSpec,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::regions::{distance_km, Region, REGIONS};

/// What the demo stores.
pub struct Fleet {
    pub sites: Vec<SiteSpec>,
    pub links: Vec<LinkSpec>,
    pub groups: Vec<GroupSpec>,
    pub vms: Vec<VmSpec>,
}

/// What a generated fleet is made of. The default is the demo's fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// VM shapes (vcpus, memory GiB) and how common each is (weights).
    pub shapes: Vec<(u32, f64, u32)>,
    /// Disk sizes, equally likely.
    pub disk_gib: Vec<f64>,
    /// Dirty rates are drawn uniformly from this range, Mbit/s.
    pub dirty_rate_mbps: (f64, f64),
    /// Downtime limits, equally likely.
    pub max_downtime_ms: Vec<u32>,
    /// Share of VMs pinned to their site (every round(1/share)-th VM).
    pub pinned_share: f64,
    /// With the demo's two groups: a spread database cluster and a colocated analytics job.
    pub groups: bool,
    /// One bandwidth for every link, Mbit/s; `None`: 10 Gbit/s within a continent, 2.5 across.
    pub link_mbps: Option<f64>,
}

impl Default for Mix {
    /// The general purpose / memory-optimised mix typical of cloud fleets.
    fn default() -> Self {
        Mix {
            shapes: vec![(1, 2.0, 10), (2, 4.0, 25), (2, 8.0, 20), (4, 16.0, 20), (8, 32.0, 15), (16, 64.0, 10)],
            disk_gib: vec![20.0, 40.0, 80.0, 160.0, 500.0],
            dirty_rate_mbps: (5.0, 400.0),
            max_downtime_ms: vec![100, 300, 1000],
            pinned_share: 1.0 / 23.0,
            groups: true,
            link_mbps: None,
        }
    }
}

fn continent(r: &Region) -> &'static str {
    match r.zone.split('-').next().unwrap_or_default() {
        "US" | "CA" => "north-america",
        "BR" | "CL" => "south-america",
        "GB" | "DE" => "europe",
        "ZA" => "africa",
        _ => "asia-pacific",
    }
}

/// Round-trip time between two regions, estimated: light in fibre covers
/// about 100 km per ms of round trip; routes are longer than great
/// circles, hence the stretch and a fixed overhead.
fn rtt_estimate_ms(a: &Region, b: &Region) -> f64 {
    (distance_km(a, b) / 100.0 * 1.3 + 2.0).round()
}

/// All 16 regions as sites, links and `vm_count` VMs, the same for the same `seed`.
pub fn fleet(vm_count: usize, seed: u64) -> Fleet {
    fleet_in(&REGIONS, vm_count, seed)
}

/// `regions` (at least one) as sites, links between every pair and
/// `vm_count` VMs of the demo's mix spread round them, the same for the same `seed`.
pub fn fleet_in(regions: &[Region], vm_count: usize, seed: u64) -> Fleet {
    fleet_of(regions, vm_count, &Mix::default(), seed)
}

/// `regions` (at least one) as sites, links between every pair and
/// `vm_count` VMs of `mix` (shapes, disks, downtimes: at least one each)
/// spread round them, the same for the same `seed`.
pub fn fleet_of(regions: &[Region], vm_count: usize, mix: &Mix, seed: u64) -> Fleet {
    let mut rng = StdRng::seed_from_u64(seed);
    let share = regions.len().max(1);
    let mut sites: Vec<SiteSpec> = regions
        .iter()
        .map(|r| SiteSpec {
            name: r.zone.to_string(),
            region: r.zone.to_string(),
            latitude: r.latitude,
            longitude: r.longitude,
            timezone: r.timezone.to_string(),
            // Room for the fleet at about 60-85% utilisation once spread out.
            capacity: Capacity {
                vcpus: (vm_count * 6 / share).max(64) as u32 * rng.random_range(10..14) / 10,
                memory_gib: ((vm_count * 24 / share).max(256) as f64 * rng.random_range(1.0..1.4)).round(),
                disk_gib: ((vm_count * 200 / share).max(4096) as f64 * rng.random_range(1.0..1.4)).round(),
            },
            pue: (rng.random_range(1.1..1.5_f64) * 100.0).round() / 100.0,
            power_model: PowerModel {
                watts_per_vcpu: (rng.random_range(8.0..12.0_f64) * 10.0).round() / 10.0,
                watts_per_gib: (rng.random_range(0.3..0.4_f64) * 100.0).round() / 100.0,
            },
            state: SiteState::Active,
            // Each site's WAN edge carries 40 Gbit/s in all, shared by its links.
            uplink_mbps: Some(40_000.0),
            downlink_mbps: Some(40_000.0),
        })
        .collect();

    let mut links = Vec::new();
    for a in regions {
        for b in regions {
            if a.zone == b.zone {
                continue;
            }
            let same_continent = continent(a) == continent(b);
            links.push(LinkSpec {
                from_site: a.zone.to_string(),
                to_site: b.zone.to_string(),
                bandwidth_mbps: mix.link_mbps.unwrap_or(if same_continent { 10_000.0 } else { 2_500.0 }),
                rtt_ms: rtt_estimate_ms(a, b),
                background_reserve_pct: 30.0,
                egress_cost_per_gb: 0.0,
                symmetric: false,
            });
        }
    }

    let groups = if mix.groups {
        vec![
            GroupSpec {
                name: "db-cluster".into(),
                policy: GroupPolicy::Spread { min_sites: regions.len().min(3) as u32, max_per_site: 1 },
            },
            GroupSpec { name: "analytics".into(), policy: GroupPolicy::Colocate { max_rtt_ms: 40.0 } },
        ]
    } else {
        Vec::new()
    };
    let pinned_every = if mix.pinned_share > 0.0 { (1.0 / mix.pinned_share).round().max(1.0) as usize } else { 0 };

    let total_weight: u32 = mix.shapes.iter().map(|s| s.2).sum();
    let vms: Vec<VmSpec> = (0..vm_count)
        .map(|i| {
            let mut pick = rng.random_range(0..total_weight.max(1));
            let &(vcpus, memory_gib, _) = mix
                .shapes
                .iter()
                .find(|s| {
                    if pick < s.2 {
                        true
                    } else {
                        pick -= s.2;
                        false
                    }
                })
                .unwrap_or(&mix.shapes[0]);
            // The colocated group starts together at one region; everything
            // else spreads round the regions.
            let home = match i {
                3..=6 if mix.groups => &regions[0],
                _ => &regions[i % regions.len()],
            };
            let (group, pinned, allowed_regions) = match i {
                // One member per site, as its spread policy asks.
                0..=2 if mix.groups && i < regions.len() => (Some("db-cluster".to_owned()), false, None),
                3..=6 if mix.groups => (Some("analytics".to_owned()), false, None),
                0..=6 => (None, false, None),
                _ if pinned_every > 0 && i % pinned_every == 0 => (None, true, None),
                // Data-residency: some European VMs must stay in Europe.
                _ if i % 17 == 0 && continent(home) == "europe" => {
                    let europe = regions.iter().filter(|r| continent(r) == "europe").map(|r| r.zone.to_string());
                    (None, false, Some(europe.collect()))
                }
                _ => (None, false, None),
            };
            let (low, high) = mix.dirty_rate_mbps;
            VmSpec {
                name: format!("vm-{i:05}"),
                vcpus,
                memory_gib,
                disk_gib: mix.disk_gib[rng.random_range(0..mix.disk_gib.len())],
                dirty_rate_mbps: if high > low { rng.random_range(low..high).round() } else { low },
                site: home.zone.to_string(),
                allowed_sites: None,
                allowed_regions,
                pinned,
                protected: false,
                group,
                priority: rng.random_range(0..=100),
                max_downtime_ms: mix.max_downtime_ms[rng.random_range(0..mix.max_downtime_ms.len())],
                driver: Driver::Sim,
                driver_spec: serde_json::json!({}),
                addresses: Vec::new(),
                standby_sites: Vec::new(),
            }
        })
        .collect();
    // A small fleet's draws may crowd a site: each starts at most 85% full.
    for site in &mut sites {
        let here = vms.iter().filter(|v: &&VmSpec| v.site == site.name);
        let (vcpus, memory, disk) =
            here.fold((0, 0.0, 0.0), |(c, m, d), v| (c + v.vcpus, m + v.memory_gib, d + v.disk_gib));
        let c = &mut site.capacity;
        c.vcpus = c.vcpus.max((f64::from(vcpus) / 0.85).ceil() as u32);
        c.memory_gib = c.memory_gib.max((memory / 0.85).ceil());
        c.disk_gib = c.disk_gib.max((disk / 0.85).ceil());
    }
    Fleet { sites, links, groups, vms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::inventory::{parse_group, parse_link, parse_site, parse_vm};

    #[test]
    fn the_demo_fleet_passes_every_rule() {
        let fleet = fleet(300, 7);
        assert_eq!(fleet.sites.len(), 16);
        assert_eq!(fleet.links.len(), 16 * 15);
        for s in fleet.sites {
            parse_site(s).unwrap();
        }
        for l in fleet.links {
            parse_link(l).unwrap();
        }
        for g in fleet.groups {
            parse_group(g).unwrap();
        }
        for v in fleet.vms {
            parse_vm(v).unwrap();
        }
    }

    #[test]
    fn the_demo_fleet_starts_within_its_group_policies() {
        let fleet = fleet(300, 7);
        for group in &fleet.groups {
            let sites: Vec<&str> =
                fleet.vms.iter().filter(|v| v.group.as_ref() == Some(&group.name)).map(|v| v.site.as_str()).collect();
            assert!(!sites.is_empty(), "{} has members", group.name);
            match group.policy {
                GroupPolicy::Spread { min_sites, max_per_site } => {
                    let distinct: std::collections::BTreeSet<_> = sites.iter().collect();
                    assert!(distinct.len() >= min_sites as usize);
                    assert!(distinct.iter().all(|s| sites.iter().filter(|x| x == s).count() <= max_per_site as usize));
                }
                GroupPolicy::Colocate { max_rtt_ms } => {
                    for a in &sites {
                        for b in &sites {
                            let rtt = fleet
                                .links
                                .iter()
                                .find(|l| l.from_site == *a && l.to_site == *b)
                                .map_or(0.0, |l| l.rtt_ms);
                            assert!(rtt <= max_rtt_ms, "{a} -> {b}: {rtt} ms");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_fleet_on_some_regions_uses_only_those() {
        let three: Vec<Region> =
            REGIONS.iter().filter(|r| ["GB", "DE-LU", "US-CAL-CISO"].contains(&r.zone.as_ref())).cloned().collect();
        let fleet = fleet_in(&three, 60, 7);
        assert_eq!((fleet.sites.len(), fleet.links.len(), fleet.vms.len()), (3, 6, 60));
        assert!(fleet.vms.iter().all(|v| three.iter().any(|r| r.zone == v.site)));
        for v in fleet.vms {
            parse_vm(v).unwrap();
        }
    }

    #[test]
    fn same_seed_same_fleet() {
        assert_eq!(fleet(50, 1).vms, fleet(50, 1).vms);
        assert_ne!(fleet(50, 1).vms, fleet(50, 2).vms);
    }
}
