//! The cost model, shared by the planner, the migration scheduler and the
//! simulator: what a VM costs to run at a site in an hour, and what moving
//! it costs (bytes on the wire, time, downtime, money and emissions).
//!
//! Units are explicit in names: `_kw`, `_kwh`, `_kg`, `_s`, bytes. Prices
//! are in the signal's currency per MWh; carbon in g/kWh.

/// How a site turns allocated resources into power.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteEnergy {
    /// Facility power / IT power, at least 1.
    pub pue: f64,
    pub watts_per_vcpu: f64,
    pub watts_per_gib: f64,
}

impl SiteEnergy {
    /// A site's energy model as the inventory describes it.
    pub fn of(site: &heliotrope_api_spec::SiteSpec) -> SiteEnergy {
        SiteEnergy {
            pue: site.pue,
            watts_per_vcpu: site.power_model.watts_per_vcpu,
            watts_per_gib: site.power_model.watts_per_gib,
        }
    }
}

/// What a VM holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmShape {
    pub vcpus: u32,
    pub memory_gib: f64,
}

/// A site's signals for one slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotSignal {
    /// Currency per MWh.
    pub price_per_mwh: f64,
    pub carbon_g_per_kwh: f64,
}

/// Money and emissions of some energy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// In the price currency.
    pub energy_cost: f64,
    pub emissions_kg: f64,
}

/// How money and emissions weigh in an objective: the plan's mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// 1 when money counts, 0 when only carbon does.
    pub money: f64,
    /// In the price currency.
    pub carbon_price_per_tonne: f64,
}

impl Weights {
    /// Money plus carbon at `carbon_price_per_tonne`.
    pub fn blend(carbon_price_per_tonne: f64) -> Weights {
        Weights { money: 1.0, carbon_price_per_tonne }
    }
}

impl Cost {
    /// What the cost weighs in an objective.
    pub fn weighted(&self, weights: Weights) -> f64 {
        weights.money * self.energy_cost + self.emissions_kg / 1000.0 * weights.carbon_price_per_tonne
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        Cost { energy_cost: self.energy_cost + other.energy_cost, emissions_kg: self.emissions_kg + other.emissions_kg }
    }
}

impl std::ops::Sub for Cost {
    type Output = Cost;
    fn sub(self, other: Cost) -> Cost {
        Cost { energy_cost: self.energy_cost - other.energy_cost, emissions_kg: self.emissions_kg - other.emissions_kg }
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(costs: I) -> Cost {
        costs.fold(Cost::default(), |total, cost| total + cost)
    }
}

/// Power a VM draws at a site, facility overhead included:
/// (watts_per_vcpu x vcpus + watts_per_gib x memory_gib) x PUE.
pub fn power_kw(site: &SiteEnergy, vm: &VmShape) -> f64 {
    (site.watts_per_vcpu * f64::from(vm.vcpus) + site.watts_per_gib * vm.memory_gib) * site.pue / 1000.0
}

/// The cost of `kwh` of energy under `signal`.
pub fn energy_cost(kwh: f64, signal: &SlotSignal) -> Cost {
    Cost { energy_cost: kwh * signal.price_per_mwh / 1000.0, emissions_kg: kwh * signal.carbon_g_per_kwh / 1000.0 }
}

/// The cost of running at `power_kw` for `hours` under `signal`.
pub fn running_cost(power_kw: f64, hours: f64, signal: &SlotSignal) -> Cost {
    energy_cost(power_kw * hours, signal)
}

/// One pre-copy live migration of memory over a bandwidth share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreCopyInput {
    pub memory_bytes: f64,
    /// How fast the guest dirties memory, bytes/s.
    pub dirty_bytes_per_s: f64,
    /// The migration's share of the link, bytes/s.
    pub bandwidth_bytes_per_s: f64,
    /// Longest pause the VM tolerates.
    pub max_downtime_s: f64,
    /// Most copy rounds before giving up.
    pub max_rounds: u32,
}

/// What a converging pre-copy does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreCopy {
    /// Live rounds before the final stop-and-copy round.
    pub live_rounds: u32,
    pub bytes: f64,
    pub duration_s: f64,
    pub downtime_s: f64,
}

/// Pre-copy with memory M, dirty rate D and share B: round i sends
/// M (D/B)^i; after the last live round n the VM pauses for M (D/B)^n / B.
/// n is the first round whose remainder fits the downtime. All rounds
/// together send M (1 - r^(n+1)) / (1 - r) with r = D/B. `None` when the
/// migration cannot converge: D >= B, or more rounds than allowed.
pub fn precopy(input: &PreCopyInput) -> Option<PreCopy> {
    let (m, b) = (input.memory_bytes, input.bandwidth_bytes_per_s);
    if !(m >= 0.0 && b > 0.0 && input.dirty_bytes_per_s >= 0.0 && input.max_downtime_s > 0.0) {
        return None;
    }
    let r = input.dirty_bytes_per_s / b;
    let mut last = m;
    let mut rounds = 0;
    while last / b > input.max_downtime_s {
        if r >= 1.0 || rounds >= input.max_rounds {
            return None;
        }
        last *= r;
        rounds += 1;
    }
    let bytes = if r == 1.0 { m * f64::from(rounds + 1) } else { m * (1.0 - r.powi(rounds as i32 + 1)) / (1.0 - r) };
    Some(PreCopy { live_rounds: rounds, bytes, duration_s: bytes / b, downtime_s: last / b })
}

/// Share of a VM's memory a site still holds `age_s` after the VM left
/// it, by the model: a working set that is rewritten fades within hours,
/// the rest (kernel, libraries, a cold page cache) stays. 0.35 + 0.65
/// e^(-age / 3 h) puts 2 h at 0.68 and 24 h at 0.35, inside what VeCycle
/// measured for reusable checkpoints (50-70% after 2 h, 20-50% after
/// 24 h); past [`MEMORY_KEPT_DAYS`] the site's budget is assumed to have
/// dropped it. A prediction: the executors report what a return saved
/// (`returning`), and the tests show that much (see README).
pub fn memory_kept_share(age_s: f64) -> f64 {
    if !(0.0..MEMORY_KEPT_DAYS * 86_400.0).contains(&age_s) {
        return 0.0;
    }
    0.35 + 0.65 * (-age_s / (3.0 * 3600.0)).exp()
}

/// How long the model counts on a site keeping a VM's memory after it left.
pub const MEMORY_KEPT_DAYS: f64 = 7.0;

/// A migration's disk and memory, and how the transfer stack shrinks them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationInput {
    pub memory: PreCopyInput,
    pub disk_bytes: f64,
    /// Bytes of the disk the destination already holds (proactive caching).
    pub disk_cached_bytes: f64,
    /// How fast the guest writes its disk, bytes/s (written blocks are sent again).
    pub disk_write_bytes_per_s: f64,
    /// Share of the raw bytes that actually travel after dedup and compression (0 to 1].
    pub wire_fraction: f64,
}

/// What a migration is predicted to take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationEstimate {
    /// Bytes on the wire (after dedup and compression).
    pub wire_bytes: f64,
    pub duration_s: f64,
    pub downtime_s: f64,
}

/// Disk first (what the destination lacks, plus what the guest writes
/// meanwhile), then memory by pre-copy. `None` if either cannot keep up.
pub fn estimate_migration(input: &MigrationInput) -> Option<MigrationEstimate> {
    let b = input.memory.bandwidth_bytes_per_s;
    let w = input.disk_write_bytes_per_s;
    if w >= b || !(input.wire_fraction > 0.0 && input.wire_fraction <= 1.0) {
        return None;
    }
    // Copying X bytes while w bytes/s are rewritten sends X / (1 - w/B) in all.
    let disk_bytes = (input.disk_bytes - input.disk_cached_bytes).max(0.0) / (1.0 - w / b);
    let memory = precopy(&input.memory)?;
    let raw = disk_bytes + memory.bytes;
    Some(MigrationEstimate {
        wire_bytes: raw * input.wire_fraction,
        duration_s: disk_bytes / b + memory.duration_s,
        downtime_s: memory.downtime_s,
    })
}

/// Prices that turn a migration into money.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationPrices {
    /// Network energy per GB moved (default 0.01 kWh/GB), charged at the source's signals.
    pub network_kwh_per_gb: f64,
    /// The link's egress price per GB.
    pub egress_per_gb: f64,
    /// What a second of downtime costs.
    pub downtime_penalty_per_s: f64,
}

/// What moving a VM costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationCost {
    /// Network energy plus the destination copy running while the VM moves.
    pub energy: Cost,
    pub egress_cost: f64,
    pub downtime_penalty: f64,
}

impl MigrationCost {
    /// The downtime penalty counts in every mode: it prices harm to the guest, not spending.
    pub fn weighted(&self, weights: Weights) -> f64 {
        self.energy.weighted(weights) + weights.money * self.egress_cost + self.downtime_penalty
    }
}

/// The cost of `estimate`: bytes x network energy at the source's signals,
/// egress, the VM running at both ends while it moves (the destination's
/// copy is the extra), and the downtime penalty.
pub fn migration_cost(
    estimate: &MigrationEstimate,
    destination_power_kw: f64,
    source: &SlotSignal,
    destination: &SlotSignal,
    prices: &MigrationPrices,
) -> MigrationCost {
    let gb = estimate.wire_bytes / 1e9;
    let network = energy_cost(gb * prices.network_kwh_per_gb, source);
    let double_running = running_cost(destination_power_kw, estimate.duration_s / 3600.0, destination);
    MigrationCost {
        energy: network + double_running,
        egress_cost: gb * prices.egress_per_gb,
        downtime_penalty: estimate.downtime_s * prices.downtime_penalty_per_s,
    }
}

/// A link's usable bandwidth in bytes/s: what the background reserve leaves.
pub fn usable_bytes_per_s(bandwidth_mbps: f64, background_reserve_pct: f64) -> f64 {
    bandwidth_mbps * 1e6 / 8.0 * (1.0 - background_reserve_pct / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn power_and_running_cost_by_hand() {
        let site = SiteEnergy { pue: 1.5, watts_per_vcpu: 10.0, watts_per_gib: 0.5 };
        // (10 x 4 + 0.5 x 16) x 1.5 = 72 W.
        let kw = power_kw(&site, &VmShape { vcpus: 4, memory_gib: 16.0 });
        assert!(close(kw, 0.072));
        // 0.072 kW for 10 h = 0.72 kWh; at 100/MWh = 0.072; at 400 g/kWh = 0.288 kg.
        let cost = running_cost(kw, 10.0, &SlotSignal { price_per_mwh: 100.0, carbon_g_per_kwh: 400.0 });
        assert!(close(cost.energy_cost, 0.072) && close(cost.emissions_kg, 0.288));
        // At 100 per tonne the 0.288 kg add 0.0288.
        assert!(close(cost.weighted(Weights::blend(100.0)), 0.1008));
    }

    fn memory(m: f64, d: f64, b: f64, downtime: f64) -> PreCopyInput {
        PreCopyInput {
            memory_bytes: m,
            dirty_bytes_per_s: d,
            bandwidth_bytes_per_s: b,
            max_downtime_s: downtime,
            max_rounds: 30,
        }
    }

    #[test]
    fn memory_kept_fades_to_what_a_vm_does_not_rewrite() {
        assert!(close(memory_kept_share(0.0), 1.0));
        let (two_hours, a_day) = (memory_kept_share(2.0 * 3600.0), memory_kept_share(86_400.0));
        assert!((0.5..=0.7).contains(&two_hours) && (0.2..=0.5).contains(&a_day), "{two_hours} {a_day}");
        assert_eq!(memory_kept_share(8.0 * 86_400.0), 0.0, "dropped by the site's budget by then");
        assert_eq!(memory_kept_share(-1.0), 0.0, "a departure in the future is none");
    }

    #[test]
    fn precopy_by_hand() {
        // r = 0.5; rounds send 100, 50, 25, 12.5, then 6.25 paused (0.0625 s <= 0.1 s).
        let p = precopy(&memory(100.0, 50.0, 100.0, 0.1)).unwrap();
        assert_eq!(p.live_rounds, 4);
        assert!(close(p.bytes, 193.75) && close(p.duration_s, 1.9375) && close(p.downtime_s, 0.0625));
        // Small enough to stop and copy at once.
        let p = precopy(&memory(10.0, 50.0, 100.0, 0.2)).unwrap();
        assert_eq!((p.live_rounds, p.bytes, p.downtime_s), (0, 10.0, 0.1));
        // A clean guest: one round, then nothing left.
        let p = precopy(&memory(100.0, 0.0, 100.0, 0.1)).unwrap();
        assert_eq!((p.live_rounds, p.bytes), (1, 100.0));
    }

    #[test]
    fn precopy_that_cannot_converge() {
        assert_eq!(precopy(&memory(100.0, 100.0, 100.0, 0.1)), None, "dirtying as fast as the link");
        assert_eq!(precopy(&memory(100.0, 150.0, 100.0, 0.1)), None);
        let few_rounds = PreCopyInput { max_rounds: 2, ..memory(100.0, 50.0, 100.0, 0.1) };
        assert_eq!(precopy(&few_rounds), None, "needs 4 rounds");
        assert_eq!(precopy(&memory(100.0, 10.0, 0.0, 0.1)), None, "no bandwidth");
    }

    #[test]
    fn a_migration_by_hand() {
        let input = MigrationInput {
            memory: memory(100.0, 50.0, 100.0, 0.1),
            disk_bytes: 1000.0,
            disk_cached_bytes: 800.0,
            disk_write_bytes_per_s: 20.0,
            wire_fraction: 0.5,
        };
        // Disk: 200 missing / (1 - 0.2) = 250 bytes, 2.5 s; memory 193.75 bytes, 1.9375 s.
        let e = estimate_migration(&input).unwrap();
        assert!(close(e.wire_bytes, (250.0 + 193.75) * 0.5));
        assert!(close(e.duration_s, 2.5 + 1.9375));
        assert!(close(e.downtime_s, 0.0625));
        assert_eq!(estimate_migration(&MigrationInput { disk_write_bytes_per_s: 100.0, ..input }), None);
    }

    #[test]
    fn migration_cost_by_hand() {
        // 10 GB moved in an hour; the destination copy draws 0.1 kW meanwhile.
        let estimate = MigrationEstimate { wire_bytes: 10e9, duration_s: 3600.0, downtime_s: 0.5 };
        let source = SlotSignal { price_per_mwh: 100.0, carbon_g_per_kwh: 500.0 };
        let destination = SlotSignal { price_per_mwh: 50.0, carbon_g_per_kwh: 100.0 };
        let prices = MigrationPrices { network_kwh_per_gb: 0.01, egress_per_gb: 0.02, downtime_penalty_per_s: 1.0 };
        let cost = migration_cost(&estimate, 0.1, &source, &destination, &prices);
        // Network: 0.1 kWh at the source = 0.01 money, 0.05 kg. Running: 0.1 kWh at the destination = 0.005, 0.01 kg.
        assert!(close(cost.energy.energy_cost, 0.015) && close(cost.energy.emissions_kg, 0.06));
        assert!(close(cost.egress_cost, 0.2) && close(cost.downtime_penalty, 0.5));
        assert!(close(cost.weighted(Weights::blend(100.0)), 0.015 + 0.006 + 0.2 + 0.5));
    }

    #[test]
    fn usable_bandwidth() {
        // 1 Gb/s with 20% kept back: 100 MB/s.
        assert!(close(usable_bytes_per_s(1000.0, 20.0), 100e6));
    }
}
