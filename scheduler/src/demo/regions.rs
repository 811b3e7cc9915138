//! The 16 grid regions Heliotrope's demo and benchmarks use as sites.
//!
//! Facts (zone ids, names, IANA time zones, a representative city's
//! coordinates) from the region metadata that accompanies the real traces
//! in `shared/data/regions.csv` (green-dcc, MIT; Electricity Maps zone ids).
//! Built into the binary so that the demo needs nothing at run time.

/// One grid region.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// Electricity Maps zone id, used as the site name and region label.
    pub zone: &'static str,
    /// A name for people.
    pub name: &'static str,
    pub timezone: &'static str,
    pub latitude: f64,
    pub longitude: f64,
}

pub const REGIONS: [Region; 16] = [
    Region {
        zone: "US-CAL-CISO",
        name: "California (CAISO)",
        timezone: "America/Los_Angeles",
        latitude: 37.77,
        longitude: -122.42,
    },
    Region {
        zone: "US-TEX-ERCO",
        name: "Texas (ERCOT)",
        timezone: "America/Chicago",
        latitude: 32.78,
        longitude: -96.8,
    },
    Region {
        zone: "US-MIDA-PJM",
        name: "PJM / N. Virginia",
        timezone: "America/New_York",
        latitude: 38.95,
        longitude: -77.45,
    },
    Region {
        zone: "US-NY-NYIS",
        name: "New York (NYISO)",
        timezone: "America/New_York",
        latitude: 42.65,
        longitude: -73.76,
    },
    Region { zone: "CA-ON", name: "Ontario (IESO)", timezone: "America/Toronto", latitude: 43.65, longitude: -79.38 },
    Region {
        zone: "BR-SP",
        name: "Brazil South-East / Sao Paulo",
        timezone: "America/Sao_Paulo",
        latitude: -23.55,
        longitude: -46.63,
    },
    Region {
        zone: "CL-SIC",
        name: "Chile (SEN, central)",
        timezone: "America/Santiago",
        latitude: -33.45,
        longitude: -70.67,
    },
    Region { zone: "GB", name: "Great Britain", timezone: "Europe/London", latitude: 51.51, longitude: -0.13 },
    Region { zone: "DE-LU", name: "Germany-Luxembourg", timezone: "Europe/Berlin", latitude: 50.11, longitude: 8.68 },
    Region { zone: "ZA", name: "South Africa", timezone: "Africa/Johannesburg", latitude: -26.2, longitude: 28.05 },
    Region { zone: "IN-WE", name: "India West", timezone: "Asia/Kolkata", latitude: 19.08, longitude: 72.88 },
    Region { zone: "SG", name: "Singapore", timezone: "Asia/Singapore", latitude: 1.35, longitude: 103.82 },
    Region { zone: "KR", name: "South Korea", timezone: "Asia/Seoul", latitude: 37.57, longitude: 126.98 },
    Region { zone: "JP-TK", name: "Japan Tokyo area", timezone: "Asia/Tokyo", latitude: 35.68, longitude: 139.69 },
    Region {
        zone: "AU-NSW",
        name: "Australia New South Wales",
        timezone: "Australia/Sydney",
        latitude: -33.85,
        longitude: 151.21,
    },
    Region {
        zone: "AU-VIC",
        name: "Australia Victoria",
        timezone: "Australia/Melbourne",
        latitude: -37.81,
        longitude: 144.96,
    },
];

/// Great-circle distance between two regions' cities, in km.
pub fn distance_km(a: &Region, b: &Region) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (la1, la2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_well_formed() {
        for r in REGIONS {
            assert!(r.timezone.parse::<chrono_tz::Tz>().is_ok(), "{}", r.zone);
            assert!(crate::domain::inventory::check_name("zone", r.zone).is_ok());
        }
        let london_frankfurt = distance_km(&REGIONS[7], &REGIONS[8]);
        assert!((600.0..700.0).contains(&london_frankfurt), "{london_frankfurt}");
    }
}
