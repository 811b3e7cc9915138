//! The fleet a `heliotrope simulate` run replays the traces through: a
//! fleet spec (JSON) or the seeded default, on the traces' regions as
//! sites (coordinates and time zones from a regions file or the built-in
//! table), turned into the planner's input through the inventory's own
//! rules and the one translation the plans service uses.

use std::collections::HashMap;

use heliotrope_api_spec::{Capacity, LinkSpec, PowerModel};
use serde::Deserialize;

use crate::domain::inventory::{check_range, parse_group, parse_link, parse_site, parse_vm};
use crate::domain::planner::inputs::{plan_input, Inventory};
use crate::domain::planner::{PlanInput, Settings};
use crate::synthetic::inventory::{fleet_of, Fleet, Mix};
use crate::synthetic::regions::{Region, REGIONS};

/// What a fleet spec file holds; every field may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSpec {
    /// VMs in the fleet.
    pub vms: usize,
    /// Seeds the draws of shapes, disks, dirty rates, downtimes and site sizes.
    pub seed: u64,
    pub shapes: Vec<ShapeShare>,
    /// Disk sizes, equally likely, GiB.
    pub disk_gib: Vec<f64>,
    /// Dirty rates are drawn uniformly between these, Mbit/s.
    pub dirty_rate_mbps: [f64; 2],
    /// Downtime limits, equally likely, ms.
    pub max_downtime_ms: Vec<u32>,
    /// Share of VMs pinned to their first site.
    pub pinned_share: f64,
    /// With a spread database cluster and a colocated analytics group.
    pub groups: bool,
    /// Bandwidth of every estimated link, Mbit/s.
    pub link_mbps: f64,
    /// Egress price per GB on every estimated link.
    pub egress_per_gb: f64,
    /// Sites whose capacity or power differ from the generated ones.
    pub sites: Vec<SiteOverride>,
    /// Links as the operator knows them; they replace the estimated ones between the same sites.
    pub links: Vec<LinkSpec>,
}

/// A VM shape and how common it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeShare {
    pub vcpus: u32,
    pub memory_gib: f64,
    pub weight: u32,
}

/// A site (a region of the traces) as the operator sizes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteOverride {
    pub name: String,
    pub capacity: Option<Capacity>,
    pub pue: Option<f64>,
    pub power_model: Option<PowerModel>,
}

/// VMs in the default fleet.
pub const DEFAULT_VMS: usize = 2000;

impl Default for FleetSpec {
    fn default() -> Self {
        let mix = Mix::default();
        FleetSpec {
            vms: DEFAULT_VMS,
            seed: 42,
            shapes: mix
                .shapes
                .iter()
                .map(|&(vcpus, memory_gib, weight)| ShapeShare { vcpus, memory_gib, weight })
                .collect(),
            disk_gib: mix.disk_gib,
            dirty_rate_mbps: [mix.dirty_rate_mbps.0, mix.dirty_rate_mbps.1],
            max_downtime_ms: mix.max_downtime_ms,
            pinned_share: mix.pinned_share,
            groups: mix.groups,
            link_mbps: 10_000.0,
            egress_per_gb: 0.0,
            sites: Vec::new(),
            links: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(pub String);

impl FleetSpec {
    /// Reads a fleet spec; the error names the offending field.
    pub fn from_json(text: &str) -> Result<FleetSpec, FleetError> {
        let mut json = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut json)
            .map_err(|e| FleetError(format!("fleet spec: {}: {}", e.path(), e.inner())))
    }

    fn check(&self) -> Result<(), FleetError> {
        let fail = |why: &str| Err(FleetError(format!("fleet spec: {why}")));
        if !(1..=200_000).contains(&self.vms) {
            return fail("vms: must be 1 to 200000");
        }
        if self.shapes.is_empty() || self.shapes.iter().all(|s| s.weight == 0) {
            return fail("shapes: name at least one, with a weight above 0");
        }
        // The inventory's rules check every VM drawn; these keep the draws themselves in range.
        for (i, shape) in self.shapes.iter().enumerate() {
            let drawable = (1..=1024).contains(&shape.vcpus)
                && shape.memory_gib > 0.0
                && shape.memory_gib <= 65_536.0
                && shape.weight <= 1_000_000;
            if !drawable {
                return Err(FleetError(format!(
                    "fleet spec: shapes[{i}]: vcpus 1 to 1024, memory_gib above 0 and at most 65536, weight at most 1000000"
                )));
            }
        }
        if self.disk_gib.is_empty() || self.max_downtime_ms.is_empty() {
            return fail("disk_gib and max_downtime_ms: name at least one value each");
        }
        let [low, high] = self.dirty_rate_mbps;
        if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
            return fail("dirty_rate_mbps: [low, high] with 0 <= low <= high");
        }
        let checked = [
            ("pinned_share", self.pinned_share, 0.0, 1.0),
            ("link_mbps", self.link_mbps, 1.0, 1e7),
            ("egress_per_gb", self.egress_per_gb, 0.0, 1000.0),
        ];
        for (field, value, min, max) in checked {
            check_range(field, value, min, max).map_err(|e| FleetError(format!("fleet spec: {e}")))?;
        }
        Ok(())
    }
}

/// Regions from a file in the format of `shared/data/regions.csv`
/// (`region,name,iana_tz,lat,lon,...`).
pub fn regions_from_csv(body: &[u8]) -> Result<Vec<Region>, FleetError> {
    #[derive(Deserialize)]
    struct Row {
        region: String,
        name: String,
        iana_tz: String,
        lat: f64,
        lon: f64,
    }
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(body);
    let mut regions = Vec::new();
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let row = row.map_err(|e| FleetError(format!("regions file, line {}: {e}", i + 2)))?;
        if row.iana_tz.parse::<chrono_tz::Tz>().is_err() {
            return Err(FleetError(format!("regions file, line {}: '{}' is not a time zone", i + 2, row.iana_tz)));
        }
        regions.push(Region {
            zone: row.region.into(),
            name: row.name.into(),
            timezone: row.iana_tz.into(),
            latitude: row.lat,
            longitude: row.lon,
        });
    }
    Ok(regions)
}

/// The fleet on the traces' regions, as the planner sees it: sites in the
/// order of `zones`, each checked by the inventory's rules.
pub fn plan_fleet(
    spec: &FleetSpec,
    zones: &[String],
    known: Option<&[Region]>,
    settings: Settings,
) -> Result<PlanInput, FleetError> {
    spec.check()?;
    let table = known.unwrap_or(&REGIONS);
    let regions = zones
        .iter()
        .map(|zone| {
            table.iter().find(|r| r.zone == zone.as_str()).cloned().ok_or_else(|| {
                FleetError(format!(
                    "region {zone} of the traces is not in the regions table: give its coordinates and time zone with --regions FILE"
                ))
            })
        })
        .collect::<Result<Vec<Region>, _>>()?;
    let mix = Mix {
        shapes: spec.shapes.iter().map(|s| (s.vcpus, s.memory_gib, s.weight)).collect(),
        disk_gib: spec.disk_gib.clone(),
        dirty_rate_mbps: (spec.dirty_rate_mbps[0], spec.dirty_rate_mbps[1]),
        max_downtime_ms: spec.max_downtime_ms.clone(),
        pinned_share: spec.pinned_share,
        groups: spec.groups,
        link_mbps: Some(spec.link_mbps),
    };
    let Fleet { mut sites, mut links, groups, vms } = fleet_of(&regions, spec.vms, &mix, spec.seed);
    for (i, o) in spec.sites.iter().enumerate() {
        let site = sites
            .iter_mut()
            .find(|s| s.name == o.name)
            .ok_or_else(|| FleetError(format!("fleet spec: sites[{i}]: no region {} in the traces", o.name)))?;
        if let Some(capacity) = &o.capacity {
            let here = vms.iter().filter(|v| v.site == o.name);
            let (vcpus, memory, disk) =
                here.fold((0u64, 0.0, 0.0), |(c, m, d), v| (c + u64::from(v.vcpus), m + v.memory_gib, d + v.disk_gib));
            if u64::from(capacity.vcpus) < vcpus || capacity.memory_gib < memory || capacity.disk_gib < disk {
                return Err(FleetError(format!(
                    "fleet spec: sites[{i}].capacity: the VMs placed at {} to start with need {vcpus} vCPUs, \
                     {memory} GiB of memory and {disk} GiB of disk",
                    o.name
                )));
            }
            site.capacity = capacity.clone();
        }
        site.pue = o.pue.unwrap_or(site.pue);
        if let Some(power_model) = &o.power_model {
            site.power_model = power_model.clone();
        }
    }
    // A symmetric link stands for both directions, as when it is created through the API.
    let given: HashMap<(String, String), LinkSpec> = spec
        .links
        .iter()
        .flat_map(|l| {
            let back = LinkSpec { from_site: l.to_site.clone(), to_site: l.from_site.clone(), ..l.clone() };
            std::iter::once(l.clone()).chain(l.symmetric.then_some(back))
        })
        .map(|l| ((l.from_site.clone(), l.to_site.clone()), LinkSpec { symmetric: false, ..l }))
        .collect();
    for link in &mut links {
        link.egress_cost_per_gb = spec.egress_per_gb;
        if let Some(known) = given.get(&(link.from_site.clone(), link.to_site.clone())) {
            *link = known.clone();
        }
    }
    if let Some(l) =
        spec.links.iter().find(|l| !links.iter().any(|k| k.from_site == l.from_site && k.to_site == l.to_site))
    {
        return Err(FleetError(format!(
            "fleet spec: links: {} -> {} joins no two regions of the traces",
            l.from_site, l.to_site
        )));
    }
    let invalid = |what: String, e: crate::domain::ValidationError| FleetError(format!("fleet spec: {what}: {e}"));
    for s in &sites {
        parse_site(s.clone()).map_err(|e| invalid(format!("site {}", s.name), e))?;
    }
    for l in &links {
        parse_link(l.clone()).map_err(|e| invalid(format!("link {} -> {}", l.from_site, l.to_site), e))?;
    }
    for g in &groups {
        parse_group(g.clone()).map_err(|e| invalid(format!("group {}", g.name), e))?;
    }
    for v in &vms {
        parse_vm(v.clone()).map_err(|e| invalid(format!("VM {}", v.name), e))?;
    }
    let vms: Vec<_> = vms.into_iter().map(|v| (v, 0)).collect();
    let inventory = Inventory { sites: &sites, links: &links, vms: &vms, groups: &groups };
    Ok(plan_input(&inventory, vec![Vec::new(); sites.len()], settings))
}

#[cfg(test)]
mod tests {
    use heliotrope_api_spec::PlanMode;

    use super::*;
    use crate::config::PlannerConfig;

    fn settings() -> Settings {
        crate::planning::settings(&PlannerConfig::default(), PlanMode::Blend, 100.0, "USD".into())
    }

    fn zones(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_spec_shapes_the_fleet_on_the_traces_regions() {
        let spec = FleetSpec::from_json(
            r#"{"vms": 30, "groups": false, "sites": [{"name": "GB", "pue": 1.05}],
                "links": [{"from_site": "GB", "to_site": "DE-LU", "bandwidth_mbps": 40000, "rtt_ms": 9,
                           "background_reserve_pct": 10, "symmetric": true}]}"#,
        )
        .unwrap();
        let input = plan_fleet(&spec, &zones(&["GB", "DE-LU"]), None, settings()).unwrap();
        assert_eq!((input.sites.len(), input.vms.len(), input.groups.len()), (2, 30, 0));
        assert_eq!((input.sites[0].name.as_str(), input.sites[0].energy.pue), ("GB", 1.05));
        assert_eq!(input.links.len(), 2);
        for link in &input.links {
            assert_eq!((link.usable_bytes_per_s, link.rtt_ms), (40_000e6 / 8.0 * 0.9, 9.0), "both ways");
        }
        // A region from a regions file.
        let regions = regions_from_csv(b"region,name,iana_tz,lat,lon\nXX,Nowhere,Europe/Oslo,60.0,10.0\n").unwrap();
        let input = plan_fleet(&FleetSpec::default(), &zones(&["XX", "GB"]), Some(&regions), settings());
        assert!(input.unwrap_err().0.contains("region GB of the traces is not in the regions table"));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let refused = |json: &str, needle: &str| {
            let why = FleetSpec::from_json(json)
                .and_then(|spec| plan_fleet(&spec, &zones(&["GB", "DE-LU"]), None, settings()))
                .unwrap_err()
                .0;
            assert!(why.contains(needle), "{json}: {why}");
        };
        refused(r#"{"vm_count": 3}"#, "unknown field `vm_count`");
        refused(r#"{"vms": 0}"#, "vms: must be 1 to 200000");
        refused(r#"{"shapes": [{"vcpus": 0, "memory_gib": 2, "weight": 1}]}"#, "shapes[0]");
        refused(r#"{"dirty_rate_mbps": [50, 5]}"#, "dirty_rate_mbps");
        refused(r#"{"sites": [{"name": "ZZ"}]}"#, "sites[0]: no region ZZ");
        refused(
            r#"{"vms": 100, "sites": [{"name": "GB", "capacity": {"vcpus": 4, "memory_gib": 8, "disk_gib": 100}}]}"#,
            "sites[0].capacity",
        );
        refused(
            r#"{"links": [{"from_site": "GB", "to_site": "ZZ", "bandwidth_mbps": 1, "rtt_ms": 1, "background_reserve_pct": 0}]}"#,
            "GB -> ZZ joins no two regions",
        );
        refused(
            r#"{"links": [{"from_site": "GB", "to_site": "DE-LU", "bandwidth_mbps": -1, "rtt_ms": 1, "background_reserve_pct": 0}]}"#,
            "link GB -> DE-LU",
        );
        assert!(regions_from_csv(b"region,name,iana_tz,lat,lon\nXX,Nowhere,Mars/Olympus,0,0\n").is_err());
    }
}
