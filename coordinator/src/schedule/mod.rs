//! Schedules (docs/schedules.md): a cron pattern in a time zone that submits a campaign of
//! its series at each firing, exactly once per firing across restarts and `kill -9`.
//!
//! - `plan`: when a pattern fires, with the daylight-saving rules;
//! - `runner`: the background task that claims due firings, applies the catch-up and
//!   overlap rules, and submits each firing's campaign; and `run-now`.

pub mod plan;
mod runner;

pub use plan::{Firing, Plan, PlanError};
pub use runner::{FireError, FireOutcome, Scheduler};

/// Firings due longer ago than this fell while the coordinator was down (or could not
/// keep up): the schedule's catch-up rule decides whether the latest of them runs.
pub const GRACE_MS: i64 = 60_000;

/// The campaign name of a firing: the schedule's name and the firing's local time.
pub fn campaign_name(schedule: &str, label: &str) -> String {
    format!("{schedule}-{label}")
}

#[cfg(test)]
mod tests;
