//! When a schedule fires: a cron pattern read in the schedule's IANA time zone, turned into
//! UTC instants with stated rules for daylight-saving changes (docs/schedules.md):
//!
//! - a **fixed-time** pattern (one second, minute and hour, e.g. `0 30 1 * * *`): a local
//!   time that occurs twice (clocks go back) fires once, at its first occurrence; a local
//!   time that does not occur (clocks go forward) fires once, at the first instant after
//!   the gap;
//! - an **interval** pattern (any wildcard, step, range or list in those fields, e.g.
//!   `*/5 * * * * *`): it follows the clock on the wall, so a repeated hour fires in both of
//!   its passes and times inside a gap do not fire.
//!
//! Matching is croner's (OCPS cron with an optional seconds field); the local-to-UTC rules
//! are here because they decide which campaigns exist.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::{Cron, JobType};

/// Daylight-saving shifts are at most this long (2 h in Antarctica's Troll; most are 1 h):
/// a search for local matches starts this far before the instant it is about.
const MAX_SHIFT: Duration = Duration::hours(3);

/// A cron pattern or time zone that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The pattern does not parse.
    #[error(
        "`{pattern}` is not a cron pattern: {reason} (expected 5 fields, minute hour day-of-month month day-of-week, or 6 with seconds first)"
    )]
    Pattern {
        /// The pattern.
        pattern: String,
        /// croner's reason.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("`{zone}` is not an IANA time zone (e.g. `UTC`, `Europe/Berlin`, `America/New_York`)")]
    Zone {
        /// The name given.
        zone: String,
    },
}

/// One firing: when it happens, and the local time that names its campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The instant, Unix ms.
    pub at_ms: i64,
    /// `2026-12-04T01.30` (with `.05` seconds when the pattern has a seconds field), then
    /// `a` or `b` for the first or second pass of a repeated local time.
    pub label: String,
}

/// A parsed cron pattern in a time zone.
#[derive(Debug, Clone)]
pub struct Plan {
    cron: Cron,
    zone: Tz,
    fixed_time: bool,
    with_seconds: bool,
}

impl Plan {
    /// Parses `pattern` (5 fields, or 6 with seconds first) in time zone `zone`.
    pub fn new(pattern: &str, zone: &str) -> Result<Plan, PlanError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| PlanError::Pattern {
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })?;
        let zone: Tz = zone.parse().map_err(|_| PlanError::Zone {
            zone: zone.to_owned(),
        })?;
        Ok(Plan {
            fixed_time: cron.determine_job_type() == JobType::FixedTime,
            with_seconds: pattern.split_whitespace().count() >= 6,
            cron,
            zone,
        })
    }

    /// The time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first firing strictly after `after_ms`, if the pattern ever fires again.
    pub fn next_after(&self, after_ms: i64) -> Option<Firing> {
        // A window growing from a minute to decades: a frequent pattern costs a few
        // matches, a yearly one a few more rounds.
        let mut window = Duration::minutes(1);
        for _ in 0..10 {
            let until = after_ms.saturating_add(window.num_milliseconds());
            if let Some(first) = self.firings(after_ms, until).into_iter().next() {
                return Some(first);
            }
            window = window * 8;
        }
        None
    }

    /// Every firing in `(after_ms, until_ms]`, in time order.
    pub fn firings(&self, after_ms: i64, until_ms: i64) -> Vec<Firing> {
        let (Some(after), Some(until)) = (utc(after_ms), utc(until_ms)) else {
            return Vec::new();
        };
        let start = self.local(after) - MAX_SHIFT;
        let end = self.local(until) + MAX_SHIFT;
        let mut out: Vec<Firing> = Vec::new();
        let mut cursor = start;
        while let Ok(local) = self.cron.find_next_occurrence(&cursor, false) {
            if local > end {
                break;
            }
            cursor = local;
            for firing in self.instants(local) {
                if firing.at_ms > after_ms && firing.at_ms <= until_ms {
                    out.push(firing);
                }
            }
        }
        out.sort_by_key(|f| f.at_ms);
        // Gap times of a fixed-time pattern all land on the gap's end: one firing.
        out.dedup_by_key(|f| f.at_ms);
        out
    }

    /// The firings of local time `local` under the daylight-saving rules.
    fn instants(&self, local: NaiveDateTime) -> Vec<Firing> {
        let label = self.label(local);
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => vec![firing(t.with_timezone(&Utc), label)],
            LocalResult::Ambiguous(first, _) if self.fixed_time => {
                vec![firing(first.with_timezone(&Utc), label)]
            }
            LocalResult::Ambiguous(first, second) => vec![
                firing(first.with_timezone(&Utc), format!("{label}a")),
                firing(second.with_timezone(&Utc), format!("{label}b")),
            ],
            LocalResult::None if self.fixed_time => self
                .gap_end(local)
                .map(|t| vec![firing(t, label)])
                .unwrap_or_default(),
            LocalResult::None => Vec::new(),
        }
    }

    /// The first instant after the gap that `local` falls into: the clocks' jump.
    fn gap_end(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        // The last local minute before `local` that exists, as an instant; minutes forward
        // until the wall clock is past `local`, then seconds back to the jump itself.
        let before = (1..=MAX_SHIFT.num_minutes())
            .map(|m| local - Duration::minutes(m))
            .find_map(|t| self.zone.from_local_datetime(&t).latest())?;
        let mut t = before.with_timezone(&Utc);
        while self.local(t) < local {
            t += Duration::minutes(1);
        }
        while self.local(t - Duration::seconds(1)) > local {
            t -= Duration::seconds(1);
        }
        Some(t)
    }

    fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.zone).naive_local()
    }

    fn label(&self, local: NaiveDateTime) -> String {
        if self.with_seconds {
            local.format("%Y-%m-%dT%H.%M.%S").to_string()
        } else {
            local.format("%Y-%m-%dT%H.%M").to_string()
        }
    }
}

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn firing(t: DateTime<Utc>, label: String) -> Firing {
    Firing {
        at_ms: t.timestamp_millis(),
        label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn utc_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .unwrap()
            .timestamp_millis()
    }

    fn fired(plan: &Plan, from: i64, until: i64) -> Vec<(i64, String)> {
        plan.firings(from, until)
            .into_iter()
            .map(|f| (f.at_ms, f.label))
            .collect()
    }

    // New York, 2026: clocks go forward on 8 March at 02:00 EST (07:00 UTC) to 03:00 EDT,
    // and back on 1 November at 02:00 EDT (06:00 UTC) to 01:00 EST.

    #[test]
    fn a_fixed_time_in_the_spring_gap_fires_once_when_the_clocks_jump() {
        let plan = Plan::new("30 2 * * *", "America/New_York").unwrap();
        let got = fired(&plan, utc_ms(2026, 3, 7, 0, 0), utc_ms(2026, 3, 10, 0, 0));
        assert_eq!(
            got,
            [
                (utc_ms(2026, 3, 7, 7, 30), "2026-03-07T02.30".to_owned()),
                (utc_ms(2026, 3, 8, 7, 0), "2026-03-08T02.30".to_owned()),
                (utc_ms(2026, 3, 9, 6, 30), "2026-03-09T02.30".to_owned()),
            ]
        );
    }

    #[test]
    fn a_fixed_time_repeated_in_the_autumn_fires_once_at_its_first_pass() {
        let plan = Plan::new("30 1 * * *", "America/New_York").unwrap();
        let got = fired(
            &plan,
            utc_ms(2026, 10, 31, 12, 0),
            utc_ms(2026, 11, 2, 12, 0),
        );
        assert_eq!(
            got,
            [
                (utc_ms(2026, 11, 1, 5, 30), "2026-11-01T01.30".to_owned()),
                (utc_ms(2026, 11, 2, 6, 30), "2026-11-02T01.30".to_owned()),
            ]
        );
    }

    #[test]
    fn an_interval_pattern_follows_the_wall_clock_through_both_changes() {
        let hourly = Plan::new("0 * * * *", "America/New_York").unwrap();
        let autumn = fired(
            &hourly,
            utc_ms(2026, 11, 1, 4, 30),
            utc_ms(2026, 11, 1, 7, 30),
        );
        assert_eq!(
            autumn,
            [
                (utc_ms(2026, 11, 1, 5, 0), "2026-11-01T01.00a".to_owned()),
                (utc_ms(2026, 11, 1, 6, 0), "2026-11-01T01.00b".to_owned()),
                (utc_ms(2026, 11, 1, 7, 0), "2026-11-01T02.00".to_owned()),
            ]
        );
        let half_hourly = Plan::new("*/30 * * * *", "America/New_York").unwrap();
        let spring = fired(
            &half_hourly,
            utc_ms(2026, 3, 8, 6, 0),
            utc_ms(2026, 3, 8, 7, 30),
        );
        // 02:00 and 02:30 do not exist: 01:30 EST, then 03:00 and 03:30 EDT.
        assert_eq!(
            spring,
            [
                (utc_ms(2026, 3, 8, 6, 30), "2026-03-08T01.30".to_owned()),
                (utc_ms(2026, 3, 8, 7, 0), "2026-03-08T03.00".to_owned()),
                (utc_ms(2026, 3, 8, 7, 30), "2026-03-08T03.30".to_owned()),
            ]
        );
    }

    #[test]
    fn a_seconds_field_fires_in_seconds_and_names_them() {
        let plan = Plan::new("*/5 * * * * *", "UTC").unwrap();
        let got = fired(&plan, 0, 20_000);
        assert_eq!(
            got.iter().map(|f| f.0).collect::<Vec<_>>(),
            [5_000, 10_000, 15_000, 20_000]
        );
        assert_eq!(got[0].1, "1970-01-01T00.00.05");
        // Strictly after `after`, up to and with `until`.
        assert_eq!(plan.next_after(5_000).unwrap().at_ms, 10_000);
    }

    #[test]
    fn a_rare_pattern_is_found_far_ahead() {
        let plan = Plan::new("0 0 1 1 *", "Europe/Berlin").unwrap();
        let next = plan.next_after(utc_ms(2026, 6, 1, 0, 0)).unwrap();
        assert_eq!(next.at_ms, utc_ms(2026, 12, 31, 23, 0));
        assert_eq!(next.label, "2027-01-01T00.00");
    }

    #[test]
    fn bad_patterns_and_zones_say_what_was_expected() {
        let err = Plan::new("61 * * * *", "UTC").unwrap_err().to_string();
        assert!(
            err.contains("`61 * * * *` is not a cron pattern") && err.contains("5 fields"),
            "{err}"
        );
        let err = Plan::new("0 1 * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`Mars/Olympus` is not an IANA time zone"),
            "{err}"
        );
    }
}
