//! The scheduler's clock: real time, or (in the demo) time running
//! `speed` times faster, so that a newcomer watches a day of rebalancing
//! in under half an hour. Plans, signals "now" and savings read it.
//!
//! An accelerated clock that stops (the demo is stopped) and starts
//! again resumes where it stopped, so its history is a [`Timeline`] of
//! spans it ran, kept in the database (`db::clock`). Times the system records in
//! real time, such as when a migration finished, are read on the clock
//! through it.

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    speed: f64,
    /// When the clock started, in real time.
    real_origin: DateTime<Utc>,
    /// What it read then.
    origin: DateTime<Utc>,
}

impl Clock {
    /// `speed` simulated seconds per real second from `origin`, which it reads then (1: real time).
    pub fn new(speed: f64, origin: DateTime<Utc>) -> Clock {
        Clock { speed, real_origin: origin, origin }
    }

    /// A clock started at the real time `real_origin` reading `origin`.
    pub fn resumed(speed: f64, real_origin: DateTime<Utc>, origin: DateTime<Utc>) -> Clock {
        Clock { speed, real_origin, origin }
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    pub fn real_origin(&self) -> DateTime<Utc> {
        self.real_origin
    }

    pub fn origin(&self) -> DateTime<Utc> {
        self.origin
    }

    /// What this clock reads at the real time `real`.
    pub fn reading_at(&self, real: DateTime<Utc>) -> DateTime<Utc> {
        if self.speed == 1.0 {
            return self.origin + (real - self.real_origin);
        }
        let elapsed_ms = (real - self.real_origin).num_milliseconds() as f64 * self.speed;
        self.origin + Duration::milliseconds(elapsed_ms as i64)
    }

    /// The real time at which this clock reads `reading`.
    fn real_at(&self, reading: DateTime<Utc>) -> DateTime<Utc> {
        let elapsed_ms = (reading - self.origin).num_milliseconds() as f64 / self.speed;
        self.real_origin + Duration::milliseconds(elapsed_ms as i64)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.reading_at(Utc::now())
    }

    /// How long `simulated` takes in real time.
    pub fn real(&self, simulated: std::time::Duration) -> std::time::Duration {
        simulated.div_f64(self.speed)
    }
}

/// One span an accelerated clock ran, from its real origin until `until` (real time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub clock: Clock,
    pub until: DateTime<Utc>,
}

/// The spans the accelerated clock ran so far, in order. Before the first
/// span the clock is real time; between spans it stands where the earlier
/// one stopped; after the last it goes on as the last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    spans: Vec<Span>,
}

impl Timeline {
    /// `spans` in any order.
    pub fn new(mut spans: Vec<Span>) -> Timeline {
        spans.sort_by_key(|r| r.clock.real_origin);
        Timeline { spans }
    }

    /// A clock of `speed` starting at `real_now`: where the last span stopped, or at `real_now` if none ran.
    pub fn resume(&self, speed: f64, real_now: DateTime<Utc>) -> Clock {
        let origin = self.spans.last().map_or(real_now, |last| last.clock.reading_at(last.until.min(real_now)));
        Clock::resumed(speed, real_now, origin)
    }

    /// What the clock read at the real time `real`.
    pub fn reading_at(&self, real: DateTime<Utc>) -> DateTime<Utc> {
        let Some(at) = self.spans.iter().rposition(|r| r.clock.real_origin <= real) else { return real };
        let span = &self.spans[at];
        let last = at + 1 == self.spans.len();
        span.clock.reading_at(if last { real } else { real.min(span.until) })
    }

    /// The first real time at which the clock read `reading` (between
    /// spans, when the next began).
    pub fn real_at(&self, reading: DateTime<Utc>) -> DateTime<Utc> {
        for (i, span) in self.spans.iter().enumerate() {
            if reading < span.clock.origin {
                return if i == 0 { reading } else { span.clock.real_origin };
            }
            if i + 1 == self.spans.len() || reading <= span.clock.reading_at(span.until) {
                return span.clock.real_at(reading);
            }
        }
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    #[test]
    fn an_accelerated_clock_runs_speed_times_faster_from_its_origin() {
        let demo = Clock::new(60.0, t(0));
        assert_eq!(demo.reading_at(t(2)), t(120));
        assert_eq!(demo.real(std::time::Duration::from_secs(3600)), std::time::Duration::from_secs(60));
        assert_eq!(Clock::new(1.0, t(0)).reading_at(t(5)), t(5));
    }

    #[test]
    fn a_stopped_clock_resumes_where_it_stopped_and_reads_its_past_through_its_spans() {
        // Ran 10 real minutes at 60x (10 hours), stopped for an hour, resumed.
        let first = Span { clock: Clock::new(60.0, t(0)), until: t(10) };
        let timeline = Timeline::new(vec![first]);
        let second = timeline.resume(60.0, t(70));
        assert_eq!(second.reading_at(t(70)), t(600), "resumes at the stop's reading");
        let timeline = Timeline::new(vec![Span { clock: second, until: t(80) }, first]);
        assert_eq!(timeline.reading_at(t(-5)), t(-5), "before any span: real time");
        assert_eq!(timeline.reading_at(t(5)), t(300));
        assert_eq!(timeline.reading_at(t(40)), t(600), "stopped: it stands");
        assert_eq!(timeline.reading_at(t(75)), t(900));
        assert_eq!(timeline.reading_at(t(90)), t(1800), "the last span goes on");
        for real in [t(-5), t(5), t(75), t(90)] {
            assert_eq!(timeline.real_at(timeline.reading_at(real)), real);
        }
        assert_eq!(timeline.real_at(t(600)), t(10), "the first real time it read so");
    }
}
