//! Made-up inputs that look like the real ones: the 16 grid regions as
//! sites, a seeded fleet on them, and carbon and price signals generated
//! from per-region hour-of-day profiles. The demo seeds from them, the
//! benchmarks measure on them and the what-if replay defaults to them.
//! Pure: no IO, so any layer may use them.

pub mod inventory;
pub mod profiles;
pub mod regions;
pub mod signals;
