//! The 16 grid regions Heliotrope's demo and benchmarks use as sites.
//!
//! Facts (zone ids, names, IANA time zones, a representative city's
//! coordinates) from the region metadata that accompanies the real traces
//! in `shared/data/regions.csv` (green-dcc, MIT; Electricity Maps zone ids).
//! Built into the binary so that the demo needs nothing at run time.

use std::borrow::Cow;

/// One grid region: one of these built in, or one read from a regions
/// file (the simulator's `--regions`).
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Electricity Maps zone id, used as the site name and region label.
    pub zone: Cow<'static, str>,
    /// A name for people.
    pub name: Cow<'static, str>,
    pub timezone: Cow<'static, str>,
    pub latitude: f64,
    pub longitude: f64,
}

pub const REGIONS: [Region; 16] = [
    Region {
        zone: Cow::Borrowed("US-CAL-CISO"),
        name: Cow::Borrowed("California (CAISO)"),
        timezone: Cow::Borrowed("America/Los_Angeles"),
        latitude: 37.77,
        longitude: -122.42,
    },
    Region {
        zone: Cow::Borrowed("US-TEX-ERCO"),
        name: Cow::Borrowed("Texas (ERCOT)"),
        timezone: Cow::Borrowed("America/Chicago"),
        latitude: 32.78,
        longitude: -96.8,
    },
    Region {
        zone: Cow::Borrowed("US-MIDA-PJM"),
        name: Cow::Borrowed("PJM / N. Virginia"),
        timezone: Cow::Borrowed("America/New_York"),
        latitude: 38.95,
        longitude: -77.45,
    },
    Region {
        zone: Cow::Borrowed("US-NY-NYIS"),
        name: Cow::Borrowed("New York (NYISO)"),
        timezone: Cow::Borrowed("America/New_York"),
        latitude: 42.65,
        longitude: -73.76,
    },
    Region {
        zone: Cow::Borrowed("CA-ON"),
        name: Cow::Borrowed("Ontario (IESO)"),
        timezone: Cow::Borrowed("America/Toronto"),
        latitude: 43.65,
        longitude: -79.38,
    },
    Region {
        zone: Cow::Borrowed("BR-SP"),
        name: Cow::Borrowed("Brazil South-East / Sao Paulo"),
        timezone: Cow::Borrowed("America/Sao_Paulo"),
        latitude: -23.55,
        longitude: -46.63,
    },
    Region {
        zone: Cow::Borrowed("CL-SIC"),
        name: Cow::Borrowed("Chile (SEN, central)"),
        timezone: Cow::Borrowed("America/Santiago"),
        latitude: -33.45,
        longitude: -70.67,
    },
    Region {
        zone: Cow::Borrowed("GB"),
        name: Cow::Borrowed("Great Britain"),
        timezone: Cow::Borrowed("Europe/London"),
        latitude: 51.51,
        longitude: -0.13,
    },
    Region {
        zone: Cow::Borrowed("DE-LU"),
        name: Cow::Borrowed("Germany-Luxembourg"),
        timezone: Cow::Borrowed("Europe/Berlin"),
        latitude: 50.11,
        longitude: 8.68,
    },
    Region {
        zone: Cow::Borrowed("ZA"),
        name: Cow::Borrowed("South Africa"),
        timezone: Cow::Borrowed("Africa/Johannesburg"),
        latitude: -26.2,
        longitude: 28.05,
    },
    Region {
        zone: Cow::Borrowed("IN-WE"),
        name: Cow::Borrowed("India West"),
        timezone: Cow::Borrowed("Asia/Kolkata"),
        latitude: 19.08,
        longitude: 72.88,
    },
    Region {
        zone: Cow::Borrowed("SG"),
        name: Cow::Borrowed("Singapore"),
        timezone: Cow::Borrowed("Asia/Singapore"),
        latitude: 1.35,
        longitude: 103.82,
    },
    Region {
        zone: Cow::Borrowed("KR"),
        name: Cow::Borrowed("South Korea"),
        timezone: Cow::Borrowed("Asia/Seoul"),
        latitude: 37.57,
        longitude: 126.98,
    },
    Region {
        zone: Cow::Borrowed("JP-TK"),
        name: Cow::Borrowed("Japan Tokyo area"),
        timezone: Cow::Borrowed("Asia/Tokyo"),
        latitude: 35.68,
        longitude: 139.69,
    },
    Region {
        zone: Cow::Borrowed("AU-NSW"),
        name: Cow::Borrowed("Australia New South Wales"),
        timezone: Cow::Borrowed("Australia/Sydney"),
        latitude: -33.85,
        longitude: 151.21,
    },
    Region {
        zone: Cow::Borrowed("AU-VIC"),
        name: Cow::Borrowed("Australia Victoria"),
        timezone: Cow::Borrowed("Australia/Melbourne"),
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
            assert!(crate::domain::inventory::check_name("zone", &r.zone).is_ok());
        }
        let london_frankfurt = distance_km(&REGIONS[7], &REGIONS[8]);
        assert!((600.0..700.0).contains(&london_frankfurt), "{london_frankfurt}");
    }
}
