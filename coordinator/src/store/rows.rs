//! What the store hands out: states, counts and rows of campaigns, units and steps.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::domain::{AgentGpu, AgentId, CampaignId, LeaseId, StepId, StepSpec, UnitConfig, UnitId};

/// A state string the store does not know (the CHECK constraints keep these out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{0}`")]
pub struct UnknownState(pub String);

macro_rules! state_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),*
        }

        impl $name {
            /// Every state, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(UnknownState(other.to_owned())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

state_enum! {
    /// What a schedule does when it fires while a campaign of its series still runs.
    Overlap {
        /// Record the firing as skipped.
        Skip => "skip",
        /// Submit anyway: the new campaign's units queue behind the running one's.
        Queue => "queue",
        /// Cancel the running campaign, then submit.
        Cancel => "cancel",
    }
}

state_enum! {
    /// What a schedule does with firings that fell while the coordinator was down.
    CatchUp {
        /// Run the latest of them once; record the others as missed.
        Once => "once",
        /// Record them all as missed.
        Skip => "skip",
    }
}

state_enum! {
    /// How a schedule's firing ended.
    FiringOutcome {
        /// Claimed; its campaign is being submitted (or was, before a crash).
        Claimed => "claimed",
        /// Its campaign was submitted.
        Submitted => "submitted",
        /// Not run: a campaign of the series was still running.
        SkippedOverlap => "skipped_overlap",
        /// Not run: it fell while the coordinator was down, and the catch-up rule did not
        /// run it.
        Missed => "missed",
        /// Its campaign could not be submitted (the stored matrix no longer expands).
        Failed => "failed",
    }
}

state_enum! {
    /// State of a campaign, derived from its units and whether it was cancelled.
    CampaignState {
        /// Some unit is pending or leased.
        Active => "active",
        /// Every unit succeeded (also a campaign without units).
        Succeeded => "succeeded",
        /// Nothing left to run and some unit failed.
        Failed => "failed",
        /// Cancelled by an operator (or nothing left to run and some unit cancelled).
        Cancelled => "cancelled",
    }
}

state_enum! {
    /// State of a unit; the values of the `units.state` CHECK constraint.
    UnitState {
        /// Waiting for an agent.
        Pending => "pending",
        /// Held by an agent under a live lease.
        Leased => "leased",
        /// Every step succeeded.
        Succeeded => "succeeded",
        /// Out of attempts; carries its last error.
        Failed => "failed",
        /// Cancelled with its campaign.
        Cancelled => "cancelled",
    }
}

state_enum! {
    /// State of a step; the values of the `steps.state` CHECK constraint.
    StepState {
        /// Not run yet (or running under the unit's lease).
        Pending => "pending",
        /// Its result is stored.
        Succeeded => "succeeded",
        /// It ran and failed.
        Failed => "failed",
        /// Cancelled with its campaign before it ran.
        Cancelled => "cancelled",
    }
}

state_enum! {
    /// State of an agent as listed.
    AgentState {
        /// Heartbeating and taking work.
        Active => "active",
        /// Heartbeating, takes no new work (drained by an operator or draining itself),
        /// still runs leases.
        Draining => "draining",
        /// Draining with no lease left: can be stopped.
        Drained => "drained",
        /// No heartbeat within the lease TTL.
        Lost => "lost",
    }
}

state_enum! {
    /// How a lease (and the unit's attempt under it) ended; the values of the
    /// `leases.end_reason` and `unit_history.outcome` CHECK constraints.
    LeaseEnd {
        /// Every step stored; the unit succeeded.
        Succeeded => "succeeded",
        /// The unit failed on its own account (counts against `max_attempts`).
        Failed => "failed",
        /// No heartbeat renewed it within the TTL.
        Expired => "expired",
        /// The agent was preempted and gave the lease back.
        Preempted => "preempted",
        /// The agent gave the lease back (drain, shutdown, partition).
        Released => "released",
        /// The campaign was cancelled.
        Cancelled => "cancelled",
    }
}

impl CampaignState {
    /// Derives a campaign's state from its unit counts and its cancelled flag.
    ///
    /// Pending or leased units make it active (the store never leaves such units in a
    /// cancelled campaign); otherwise a cancelled campaign is cancelled, any failed unit
    /// makes it failed, any cancelled unit cancelled, and else it succeeded.
    pub fn derive(units: &StateCounts, cancelled: bool) -> CampaignState {
        if units.pending + units.leased > 0 {
            CampaignState::Active
        } else if cancelled {
            CampaignState::Cancelled
        } else if units.failed > 0 {
            CampaignState::Failed
        } else if units.cancelled > 0 {
            CampaignState::Cancelled
        } else {
            CampaignState::Succeeded
        }
    }
}

/// Numbers of units or steps in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Pending.
    pub pending: u64,
    /// Leased (always 0 for steps).
    pub leased: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// All of them.
    pub total: u64,
}

impl StateCounts {
    /// Adds `n` to the counter of the state named `state` (a unit or step state).
    pub(crate) fn add(&mut self, state: &str, n: u64) -> Result<(), UnknownState> {
        let counter = match state {
            "pending" => &mut self.pending,
            "leased" => &mut self.leased,
            "succeeded" => &mut self.succeeded,
            "failed" => &mut self.failed,
            "cancelled" => &mut self.cancelled,
            other => return Err(UnknownState(other.to_owned())),
        };
        *counter += n;
        self.total += n;
        Ok(())
    }
}

/// A campaign with its progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignInfo {
    /// Id (UUID).
    pub id: CampaignId,
    /// Unique name.
    pub name: String,
    /// Free text from the matrix.
    pub description: Option<String>,
    /// Derived state.
    pub state: CampaignState,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts a unit gets for its own failures.
    pub max_attempts: u32,
    /// First submission, Unix ms.
    pub created_at_ms: i64,
    /// Last change of the campaign row (submission, cancel, retry), Unix ms.
    pub updated_at_ms: i64,
    /// Units by state.
    pub units: StateCounts,
    /// Steps by state.
    pub steps: StateCounts,
    /// Combinations the latest expansion dropped.
    pub dropped: u64,
    /// Who submitted it first.
    pub submitted_by: String,
    /// Attempts that ended in a preemption.
    pub preemptions: u64,
    /// Work lost to preemptions, in ms: per preempted attempt, the time from its last stored
    /// step result (or its start) to the preemption.
    pub preemption_lost_ms: u64,
}

/// A unit with its progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitRow {
    /// Id (hash of the config).
    pub id: UnitId,
    /// Human label.
    pub label: String,
    /// Server configuration.
    pub config: UnitConfig,
    /// State.
    pub state: UnitState,
    /// Attempts spent on the unit's own failures.
    pub attempts: u32,
    /// Attempts made: leases granted since the unit was (re)queued, the current one
    /// included.
    pub tries: u32,
    /// Last error, kept across retries.
    pub last_error: Option<String>,
    /// End of the server log that went with the last error, when the server was the cause.
    pub log_tail: Option<String>,
    /// Steps of the unit.
    pub steps_total: u32,
    /// Steps with a stored result.
    pub steps_succeeded: u32,
    /// Agent holding the live lease, if any.
    pub agent_id: Option<String>,
    /// Fencing token of the latest lease (0 before the first).
    pub epoch: u64,
    /// How the agent classified the last failure, when it did.
    pub failure_kind: Option<FailureKind>,
}

/// A step with its state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    /// The step as expanded.
    pub spec: StepSpec,
    /// State.
    pub state: StepState,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Its position in the log: larger is newer.
    pub audit_id: i64,
    /// When, Unix ms.
    pub at_ms: i64,
    /// Who (operator or agent identity).
    pub actor: String,
    /// What, e.g. `submit`, `resubmit`, `cancel`, `retry_failed`.
    pub action: String,
    /// On what, e.g. `campaign/nightly-h100`.
    pub target: String,
    /// Details as a compact JSON object.
    pub detail: String,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubmitOutcome {
    /// The campaign (new or existing).
    pub campaign_id: CampaignId,
    /// True when the campaign did not exist before.
    pub created: bool,
    /// Units of the expansion that were new.
    pub units_added: u64,
    /// Units of the expansion that existed already and were kept as they were.
    pub units_kept: u64,
    /// Steps of the expansion that were new (also new steps of existing units).
    pub steps_added: u64,
    /// Steps of the expansion that existed already.
    pub steps_kept: u64,
}

/// Which unit an operation touched, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitRef {
    /// Its campaign.
    pub campaign: CampaignId,
    /// The unit.
    pub unit: UnitId,
    /// Its human label.
    pub label: String,
}

/// A lease just granted: everything an agent needs to run the unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrantedLease {
    /// The lease id (UUID v4).
    pub lease: LeaseId,
    /// The agent holding it.
    pub agent: AgentId,
    /// The unit, its campaign and label.
    pub unit: UnitRef,
    /// Fencing token: the unit's epoch, one more than under its previous lease.
    pub epoch: u64,
    /// The server configuration.
    pub config: UnitConfig,
    /// Every step of the unit, in run order.
    pub steps: Vec<StepSpec>,
    /// Steps that already have a stored result; the agent skips them.
    pub finished_steps: Vec<StepId>,
    /// The stored runs of the unit's capacity searches' probes.
    pub probe_runs: Vec<StoredProbeRun>,
    /// GPU indices on the agent assigned to the lease (empty for a CPU unit).
    pub gpu_indices: Vec<u32>,
    /// When the lease expires unless a heartbeat renews it, Unix ms.
    pub expires_at_ms: i64,
    /// Attempt number of the unit, from 1: own failures + infrastructure endings + 1.
    pub attempt: u32,
}

/// A stored run of a capacity search's probe, as a lease carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredProbeRun {
    /// The search step.
    pub search_step: StepId,
    /// The run's own step.
    pub step: StepId,
    /// The run's `probe` facts (JSON) from its step document.
    pub facts_json: String,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeartbeatReply {
    /// Reported leases that are still the agent's own; renewed.
    pub valid: Vec<LeaseId>,
    /// Reported leases the agent must stop: ended, re-leased, someone else's, unknown.
    pub revoked: Vec<LeaseId>,
    /// An operator drained the agent.
    pub drain: bool,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registered {
    /// The agent was not known before.
    pub new: bool,
    /// An operator drained it earlier (kept across registrations).
    pub drain_requested: bool,
    /// Its live leases, kept: the agent resumes them through heartbeats.
    pub live_leases: Vec<LeaseId>,
}

/// A step whose result a batch stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredStep {
    /// The step.
    pub step: StepId,
    /// Its position in the unit's run order.
    pub index: u32,
}

/// What storing a result batch did. A refused batch is an error instead
/// ([`StoreError::StaleEpoch`](super::StoreError::StaleEpoch) and friends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchOutcome {
    /// The unit the batch was for.
    pub unit: UnitRef,
    /// The agent holding the batch's lease.
    pub agent: AgentId,
    /// Every idempotency key of the batch had been applied before: nothing was done.
    pub duplicate: bool,
    /// Results stored by this batch.
    pub stored: Vec<StoredStep>,
    /// Results skipped because their step already had a stored result.
    pub already_stored: usize,
    /// Steps of the unit with a stored result, after the batch.
    pub steps_done: u64,
    /// Steps of the unit.
    pub steps_total: u64,
}

/// How the agent classified a unit's failure (the wire contract's `FailureClass`, as the
/// store keeps it). It decides the coordinator's reaction; see [`Reaction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Not recognised: the unit's retry budget applies.
    Unrecognised,
    /// The engine refused its command line; it would on any agent.
    BadArgument,
    /// The server could not bind its port.
    PortInUse,
    /// The model does not fit: the server ran out of memory loading it or sizing its cache.
    OutOfMemory,
    /// The model's files are not on the agent's host.
    MissingModel,
    /// The engine's program is not installed on the agent's host.
    MissingEngine,
    /// The framework's container image could not be had on the agent's host (a failed
    /// pull, `pull: never` without the image, no container runtime).
    ImageUnavailable,
    /// A workload's dataset file is malformed; it would be on every attempt.
    BadDataset,
}

impl FailureKind {
    /// Every kind (the `units.failure_kind` column's CHECK lists each).
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Unrecognised,
        FailureKind::BadArgument,
        FailureKind::PortInUse,
        FailureKind::OutOfMemory,
        FailureKind::MissingModel,
        FailureKind::MissingEngine,
        FailureKind::ImageUnavailable,
        FailureKind::BadDataset,
    ];

    /// The `units.failure_kind` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unrecognised => "unrecognised",
            FailureKind::BadArgument => "bad_argument",
            FailureKind::PortInUse => "port_in_use",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::MissingModel => "missing_model",
            FailureKind::MissingEngine => "missing_engine",
            FailureKind::ImageUnavailable => "image_unavailable",
            FailureKind::BadDataset => "bad_dataset",
        }
    }

    /// Reads the `units.failure_kind` spelling.
    pub fn parse(text: &str) -> Option<FailureKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// What the coordinator did about a failure, which follows its [`FailureKind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    /// Counted against the campaign's `max_attempts`: tried again while they allow
    /// (unrecognised failures, a port in use).
    Counted,
    /// Failed at once: the engine refused its command line, as it would on any agent.
    FailedAtOnce,
    /// Stored as "does not fit" and not tried again: the model ran out of memory.
    DoesNotFit,
    /// A fault of the agent's host (its engine, image or model files are missing): the agent is
    /// given no unit needing them until it registers again, and the unit waits for
    /// another agent, counted as an infrastructure ending. When no other active agent
    /// could take it, the unit fails, and so does every pending unit needing what is
    /// missing (`also_failed`), rather than waiting for an agent that is not there.
    HostFault {
        /// The units failed with it for want of an agent, besides this one.
        also_failed: Vec<UnitRef>,
    },
}

/// What a `fail` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailOutcome {
    /// The unit.
    pub unit: UnitRef,
    /// The unit is pending again; false when it failed.
    pub will_retry: bool,
    /// Attempts spent on the unit's own failures, this one included when it counted.
    pub attempts: u32,
    /// The campaign's `max_attempts`.
    pub max_attempts: u32,
    /// What was done about the failure.
    pub reaction: Reaction,
}

/// What an agent's host lacks (see [`Reaction::HostFault`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentFault {
    /// `framework` or `model`.
    pub kind: String,
    /// The framework's or model's name.
    pub name: String,
    /// The failure that showed it.
    pub error: String,
    /// When, Unix ms.
    pub found_at_ms: i64,
}

/// What a `release` (or an expiry) did to the unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseOutcome {
    /// The unit.
    pub unit: UnitRef,
    /// How the lease ended: [`LeaseEnd::Preempted`] or [`LeaseEnd::Released`].
    pub end: LeaseEnd,
    /// The unit reached the infrastructure cap and failed instead of going back to the
    /// queue.
    pub gave_up: bool,
}

/// A lease the expiry sweep ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredLease {
    /// The lease.
    pub lease: LeaseId,
    /// The agent that held it.
    pub agent: AgentId,
    /// Its epoch.
    pub epoch: u64,
    /// The unit.
    pub unit: UnitRef,
    /// Why, as recorded in the unit's history (e.g. `lease expired: agent a1 sent no
    /// heartbeat for 31.0s`).
    pub error: String,
    /// The unit reached the infrastructure cap and failed instead of going back to the
    /// queue.
    pub gave_up: bool,
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    /// Id.
    pub id: AgentId,
    /// Host name.
    pub hostname: String,
    /// GPUs.
    pub gpus: Vec<AgentGpu>,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Frameworks it can launch; empty = any.
    pub frameworks: Vec<String>,
    /// Agent version.
    pub version: String,
    /// Driver version ('' when unknown).
    pub driver_version: String,
    /// CUDA version ('' when unknown).
    pub cuda_version: String,
    /// Derived state.
    pub state: AgentState,
    /// An operator drained it.
    pub drain_requested: bool,
    /// Latest registration, Unix ms.
    pub registered_at_ms: i64,
    /// Latest heartbeat (or registration), Unix ms.
    pub last_heartbeat_ms: i64,
    /// Its live leases.
    pub leases: Vec<LeaseId>,
    /// What its host lacks, found by failures since it last registered.
    pub faults: Vec<AgentFault>,
}

/// A stored step result with what it was a result of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredResult {
    /// The unit, its campaign and label.
    pub unit: UnitRef,
    /// The unit's configuration.
    pub config: UnitConfig,
    /// The step.
    pub step: StepSpec,
    /// Step metrics (JSON).
    pub result_json: String,
    /// Environment (JSON).
    pub environment_json: String,
    /// zstd-compressed JSON Lines of per-request records (all chunks, concatenated, which
    /// is one valid zstd stream); `None` when not asked for or none were sent.
    pub records_zstd: Option<Vec<u8>>,
    /// zstd-compressed JSON Lines of the step's raw telemetry (its chunks concatenated);
    /// `None` when not asked for (with the records) or none were sent.
    pub telemetry_zstd: Option<Vec<u8>>,
    /// Agent that produced it.
    pub agent: AgentId,
    /// Attempt it was produced in.
    pub attempt: u32,
    /// Epoch of the lease it was produced under.
    pub epoch: u64,
    /// When the step finished, Unix ms.
    pub finished_at_ms: i64,
}

/// One attempt of a unit: a lease from grant to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryRow {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The lease's epoch.
    pub epoch: u64,
    /// The lease.
    pub lease: Option<LeaseId>,
    /// The agent.
    pub agent: AgentId,
    /// Grant time, Unix ms.
    pub started_at_ms: i64,
    /// End time, Unix ms; `None` while the lease is live.
    pub ended_at_ms: Option<i64>,
    /// How it ended; `None` while the lease is live.
    pub outcome: Option<LeaseEnd>,
    /// The error of a failed, expired or abandoned attempt.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in UnitState::ALL {
            assert_eq!(s.as_str().parse::<UnitState>(), Ok(*s));
        }
        for s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>(), Ok(*s));
        }
        for s in CampaignState::ALL {
            assert_eq!(s.as_str().parse::<CampaignState>(), Ok(*s));
        }
        assert_eq!(
            "running".parse::<UnitState>(),
            Err(UnknownState("running".into()))
        );
    }

    #[test]
    fn state_names_are_the_values_the_check_constraints_allow() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrations::SCHEMA.migrate(&mut conn).unwrap();
        // Only the CHECKs are under test here.
        conn.pragma_update(None, "foreign_keys", false).unwrap();
        let unit = |key: i64, state: &str| {
            conn.execute(
                "INSERT INTO units (unit_key, campaign_key, unit_id, position, label,
                     model_spec, gpu_spec, framework_spec, quantization_spec, extra_args,
                     labels_json, state, created_at_ms, updated_at_ms)
                 VALUES (?1, 1, ?1, ?1, '', 1, 1, 1, 1, '', '{}', ?2, 0, 0)",
                (key, state),
            )
        };
        for (key, s) in UnitState::ALL.iter().enumerate() {
            unit(key as i64, s.as_str()).unwrap();
        }
        assert!(unit(99, "running").is_err());
        let step = |id: &str, state: &str| {
            conn.execute(
                "INSERT INTO steps (unit_key, step_id, idx, workload_spec, load_spec, repeat,
                     state)
                 VALUES (1, ?1, 0, 1, 1, 0, ?2)",
                (id, state),
            )
        };
        for s in StepState::ALL {
            step(s.as_str(), s.as_str()).unwrap();
        }
        assert!(step("x", "leased").is_err());
    }

    #[test]
    fn campaign_state_derivation() {
        let counts = |pending, leased, succeeded, failed, cancelled| StateCounts {
            pending,
            leased,
            succeeded,
            failed,
            cancelled,
            total: pending + leased + succeeded + failed + cancelled,
        };
        use CampaignState::*;
        assert_eq!(CampaignState::derive(&counts(1, 0, 5, 1, 0), false), Active);
        assert_eq!(CampaignState::derive(&counts(0, 1, 0, 0, 0), false), Active);
        assert_eq!(
            CampaignState::derive(&counts(0, 0, 5, 0, 0), false),
            Succeeded
        );
        assert_eq!(
            CampaignState::derive(&counts(0, 0, 0, 0, 0), false),
            Succeeded
        );
        assert_eq!(CampaignState::derive(&counts(0, 0, 5, 1, 0), false), Failed);
        assert_eq!(
            CampaignState::derive(&counts(0, 0, 5, 0, 2), true),
            Cancelled
        );
        assert_eq!(
            CampaignState::derive(&counts(0, 0, 5, 1, 2), true),
            Cancelled
        );
        assert_eq!(
            CampaignState::derive(&counts(0, 0, 5, 0, 2), false),
            Cancelled
        );
    }
}
