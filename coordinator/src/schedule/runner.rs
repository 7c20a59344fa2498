//! The scheduler task: every second (and once at start, after finishing any firing a
//! stopped coordinator left claimed) it looks at each schedule that is not paused, claims
//! its due firings, and submits the campaign of the one that runs; then it judges the
//! series' campaigns that have ended (`crate::series`).
//!
//! Exactly one campaign per firing: claiming inserts the firing's row (keyed by schedule
//! and instant) in the transaction that moves the schedule's `fired_through_ms`, so a
//! firing is claimed once; its campaign's name comes from the firing, and submitting a
//! name again adds nothing; the row then records the outcome. A firing left `claimed` by
//! a stopped coordinator is finished when it starts again.
//!
//! Due firings, when more than one is due at once (the coordinator was down, or a tick
//! came late): the latest runs if it is on time (within [`GRACE_MS`](super::GRACE_MS)) or
//! the schedule's catch-up is `once`; every other one is recorded `missed`. So missed
//! firings never become several runs.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::plan::Plan;
use super::{GRACE_MS, campaign_name};
use crate::domain::CampaignId;
use crate::matrix;
use crate::store::{
    CatchUp, Clock, FiringOutcome, NewFiring, Overlap, ScheduleRow, Store, StoreError,
};
use crate::work::WorkSignal;

/// How often the scheduler looks for due firings.
const TICK: Duration = Duration::from_secs(1);

/// How a firing ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// Its campaign was submitted.
    Submitted {
        /// The campaign's name.
        campaign: String,
    },
    /// Skipped: a campaign of the series still runs and the overlap rule is `skip`.
    SkippedOverlap {
        /// The running campaign.
        running: String,
    },
    /// The stored matrix did not give a campaign.
    Failed {
        /// Why.
        error: String,
    },
}

/// `run-now` could not fire.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// No such schedule.
    #[error("no schedule is named `{0}`")]
    NotFound(String),
    /// A firing of this schedule was recorded in the same millisecond.
    #[error("schedule `{0}` fired in this very millisecond; try again")]
    Busy(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The scheduler; see the module docs.
#[derive(Debug, Clone)]
pub struct Scheduler {
    store: Store,
    work: WorkSignal,
    clock: Clock,
}

impl Scheduler {
    /// A scheduler submitting through `store`, waking agents through `work`.
    pub fn new(store: Store, work: WorkSignal) -> Scheduler {
        Scheduler {
            store,
            work,
            clock: Clock::system(),
        }
    }

    /// The same reading time from `clock` (tests drive a simulated month with it).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Scheduler {
        self.clock = clock;
        self
    }

    /// Runs until `stop`: finishes firings left claimed, then ticks every second.
    pub async fn run(self, stop: CancellationToken) {
        let mut interval = crate::ticker::every(TICK);
        while crate::ticker::next(&mut interval, &stop).await {
            if let Err(err) = self.tick().await {
                warn!(error = %crate::grpc::status::chain(&err), "the scheduler could not look at the schedules");
            }
            if let Err(err) = crate::series::judge_ended(&self.store).await {
                warn!(error = %crate::grpc::status::chain(&err), "the scheduler could not judge the series' campaigns");
            }
        }
    }

    /// One pass: finishes firings left claimed, then claims and runs what is due.
    pub async fn tick(&self) -> Result<(), StoreError> {
        for firing in self.store.unfinished_firings().await? {
            if let Some(schedule) = self.store.schedule_by_key(firing.schedule_key).await? {
                self.fire(&schedule, firing.fire_at_ms, &firing.campaign_name)
                    .await?;
            }
        }
        let now_ms = self.clock.now_ms();
        for schedule in self.store.schedules().await? {
            if schedule.paused {
                continue;
            }
            let plan = match Plan::new(&schedule.cron, &schedule.timezone) {
                Ok(plan) => plan,
                Err(err) => {
                    warn!(schedule = %schedule.name, error = %err, "a stored schedule does not parse");
                    continue;
                }
            };
            let due = plan.firings(schedule.fired_through_ms, now_ms);
            let Some(latest) = due.last() else {
                continue;
            };
            let runs = now_ms - latest.at_ms <= GRACE_MS || schedule.catch_up == CatchUp::Once;
            let mut firings: Vec<NewFiring> = due[..due.len() - 1]
                .iter()
                .map(|f| NewFiring {
                    fire_at_ms: f.at_ms,
                    campaign_name: campaign_name(&schedule.name, &f.label),
                    outcome: FiringOutcome::Missed,
                    detail: Some("a later firing was due at the same time".to_owned()),
                })
                .collect();
            firings.push(NewFiring {
                fire_at_ms: latest.at_ms,
                campaign_name: campaign_name(&schedule.name, &latest.label),
                outcome: if runs {
                    FiringOutcome::Claimed
                } else {
                    FiringOutcome::Missed
                },
                detail: (!runs).then(|| {
                    "it fell while the coordinator was down, and catch-up is skip".to_owned()
                }),
            });
            let claimed = self
                .store
                .claim_firings(schedule.key, firings, now_ms)
                .await?;
            for firing in claimed
                .iter()
                .filter(|f| f.outcome == FiringOutcome::Claimed)
            {
                self.fire(&schedule, firing.fire_at_ms, &firing.campaign_name)
                    .await?;
            }
        }
        Ok(())
    }

    /// Fires schedule `name` now, whatever its pattern and even paused (`evalctl schedule
    /// run-now`); the overlap rule applies.
    pub async fn run_now(&self, name: &str, actor: &str) -> Result<FireOutcome, FireError> {
        let schedule = self
            .store
            .schedule(name)
            .await?
            .ok_or_else(|| FireError::NotFound(name.to_owned()))?;
        let now_ms = self.clock.now_ms();
        let zone = Plan::new(&schedule.cron, &schedule.timezone)
            .map(|p| p.zone())
            .unwrap_or(chrono_tz::UTC);
        let label = chrono::DateTime::from_timestamp_millis(now_ms)
            .map(|t| {
                t.with_timezone(&zone)
                    .format("%Y-%m-%dT%H.%M.%S%.3f-now")
                    .to_string()
            })
            .unwrap_or_else(|| format!("{now_ms}-now"));
        let firing = NewFiring {
            fire_at_ms: now_ms,
            campaign_name: campaign_name(&schedule.name, &label),
            outcome: FiringOutcome::Claimed,
            detail: Some("run-now".to_owned()),
        };
        if !self
            .store
            .claim_firing_now(&schedule.name, schedule.key, firing.clone(), actor)
            .await?
        {
            return Err(FireError::Busy(name.to_owned()));
        }
        Ok(self
            .fire(&schedule, firing.fire_at_ms, &firing.campaign_name)
            .await?)
    }

    /// Runs a claimed firing: the overlap rule, then its campaign; records the outcome.
    async fn fire(
        &self,
        schedule: &ScheduleRow,
        fire_at_ms: i64,
        campaign: &str,
    ) -> Result<FireOutcome, StoreError> {
        let actor = format!("schedule:{}", schedule.name);
        if let Some((id, running)) = self
            .store
            .running_in_series(&schedule.name, campaign)
            .await?
        {
            match schedule.overlap {
                Overlap::Skip => {
                    let detail = format!("campaign {running} of the series still runs");
                    self.store
                        .finish_firing(
                            schedule.key,
                            fire_at_ms,
                            FiringOutcome::SkippedOverlap,
                            Some(detail),
                        )
                        .await?;
                    info!(schedule = %schedule.name, %running, "firing skipped: the series still runs");
                    return Ok(FireOutcome::SkippedOverlap { running });
                }
                Overlap::Queue => {}
                Overlap::Cancel => {
                    let reason = format!("superseded by {campaign}");
                    self.store.cancel(&CampaignId(id), &actor, &reason).await?;
                    info!(schedule = %schedule.name, cancelled = %running, "cancelled the series' running campaign");
                }
            }
        }
        let outcome = self.submit(schedule, campaign).await?;
        let (state, detail) = match &outcome {
            FireOutcome::Submitted { .. } => (FiringOutcome::Submitted, None),
            FireOutcome::Failed { error } => (FiringOutcome::Failed, Some(error.clone())),
            FireOutcome::SkippedOverlap { .. } => return Ok(outcome),
        };
        self.store
            .finish_firing(schedule.key, fire_at_ms, state, detail)
            .await?;
        Ok(outcome)
    }

    /// Submits the schedule's matrix as campaign `campaign` of its series. A matrix that no
    /// longer gives a campaign is an outcome; a store error is returned, and the firing
    /// stays claimed for the next tick to finish.
    async fn submit(
        &self,
        schedule: &ScheduleRow,
        campaign: &str,
    ) -> Result<FireOutcome, StoreError> {
        let failed = |error: String| {
            warn!(schedule = %schedule.name, %error, "the schedule's matrix gives no campaign");
            Ok(FireOutcome::Failed { error })
        };
        let mut expansion = match matrix::expand_str(&schedule.source_name, &schedule.matrix_yaml) {
            Ok(e) => e,
            Err(err) => return failed(err.to_string()),
        };
        expansion.campaign.name = campaign.to_owned();
        if let Err(err) = expansion.check_not_empty(false) {
            return failed(err.to_string());
        }
        let actor = format!("schedule:{}", schedule.name);
        self.store
            .submit(&expansion, &schedule.matrix_yaml, &actor)
            .await?;
        self.work.notify();
        info!(schedule = %schedule.name, %campaign, "schedule fired");
        Ok(FireOutcome::Submitted {
            campaign: campaign.to_owned(),
        })
    }
}
