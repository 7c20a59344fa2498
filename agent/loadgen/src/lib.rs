//! Load generator: the measuring instrument. A step plan goes in; per-request records and the
//! step's metrics come out, with progress reported while it runs.
//!
//! | module | job |
//! |---|---|
//! | [`sse`] | incremental server-sent events parser over raw bytes |
//! | [`chunk`] | which streamed chunks carry output tokens |
//! | [`client`] | streaming HTTP/1.1 client: pool, request exchange, timeouts, errors |
//! | `timed_io` | the TCP stream wrapper that stamps every read and write (kernel receive stamps on Linux) |
//! | `clock` | the monotonic nanosecond clock every record is measured on |
//! | [`load`] | concurrency, rate and trace-replay load patterns |
//! | `multi_turn` | conversations held turn by turn under a concurrency or a rate |
//! | [`dataset`] | prompts: random exact-length, shared-prefix, ShareGPT, JSON Lines, trace blocks |
//! | [`conversation`] | multi-turn conversations: from files (checked line by line) or synthetic |
//! | [`trace`] | timestamped traces to replay (Mooncake, plain CSV/JSON Lines), checked line by line |
//! | [`request`] | request bodies |
//!
//! What comes out is the result contract's (`evalctl-results`): the per-request record and the
//! step metrics computed from records (vLLM definitions, numpy percentiles). Definitions of
//! every figure are in `docs/metrics.md`.
//!
//! Architecture invariant: this crate stands alone. It depends on the result contract and the
//! word tokenizer and on no other evalctl crate: not the coordinator, not the simulator, not
//! NVML or SQLite. `evalctl bench` is this crate and a command line.

pub mod chunk;
pub mod client;
mod clock;
pub mod conversation;
pub mod dataset;
pub mod load;
mod multi_turn;
pub mod request;
pub mod sse;
mod timed_io;
pub mod trace;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientConfig, ClientError, SendOptions};
pub use dataset::{Dataset, DatasetPlan, DatasetSource, Prompt, PromptInput};
/// The result contract's types this crate's API speaks in.
pub use evalctl_results::{
    ErrorKind, RequestError, RequestRecord, Sampled, Slo, StepMetrics, Summary, TokenSource,
    Tokenization,
};
pub use load::{Arrival, Load};
pub use request::{Api, RequestOptions};

use evalctl_results::metrics;
use load::{Counters, PhaseStop, Shared};

/// When a step stops sending measured requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this many measured requests.
    Requests(u64),
    /// After this long; requests in flight at the end still finish (bounded by the timeouts).
    Duration(Duration),
}

/// Everything one step needs.
#[derive(Debug, Clone)]
pub struct StepPlan {
    /// Server base URL, `http://host:port` (a trailing `/v1` is accepted).
    pub base_url: String,
    /// Endpoint to drive.
    pub api: Api,
    /// Model name sent in every request.
    pub model: String,
    /// Prompts; request `i` sends prompt `i mod len`.
    pub dataset: Dataset,
    /// Load pattern.
    pub load: Load,
    /// When to stop.
    pub stop: Stop,
    /// Requests sent (at the same load) and awaited before measuring; excluded from metrics.
    pub warmup: u64,
    /// Objectives for goodput.
    pub slo: Slo,
    /// Seed for arrivals.
    pub seed: u64,
    /// Timeouts and credentials.
    pub client: ClientConfig,
    /// Body options.
    pub request: RequestOptions,
    /// In rate mode, the p99 client lag (ms) above which the step says the client fell behind.
    pub lag_tolerance_ms: f64,
    /// How often progress is reported.
    pub progress_interval: Duration,
}

impl StepPlan {
    /// A plan with default timeouts, options and no warmup or SLO.
    pub fn new(
        base_url: impl Into<String>,
        api: Api,
        model: impl Into<String>,
        dataset: Dataset,
        load: Load,
        stop: Stop,
    ) -> StepPlan {
        StepPlan {
            base_url: base_url.into(),
            api,
            model: model.into(),
            dataset,
            load,
            stop,
            warmup: 0,
            slo: Slo::default(),
            seed: 0,
            client: ClientConfig::default(),
            request: RequestOptions::default(),
            lag_tolerance_ms: metrics::DEFAULT_LAG_TOLERANCE_MS,
            progress_interval: Duration::from_millis(500),
        }
    }

    fn validate(&self) -> Result<(), StepError> {
        let invalid = |m: String| Err(StepError::InvalidPlan(m));
        if let Err(m) = self.load.validate() {
            return invalid(m);
        }
        if self.dataset.prompts.is_empty() {
            return invalid("the dataset has no prompts".into());
        }
        match self.stop {
            Stop::Requests(0) => return invalid("a step needs at least one request".into()),
            Stop::Duration(d) if d.is_zero() => return invalid("the duration must be > 0".into()),
            Stop::Duration(_) => {
                if let Load::Rate { rps, .. } = self.load
                    && rps.is_infinite()
                {
                    return invalid(
                        "rate inf sends everything at once: stop by request count".into(),
                    );
                }
            }
            Stop::Requests(_) => {}
        }
        if self.dataset.conversations.is_some() && matches!(self.load, Load::Trace { .. }) {
            return invalid(
                "conversations run under a concurrency or a rate of new conversations, not a trace's clock"
                    .into(),
            );
        }
        if let Load::Trace { .. } = self.load {
            match &self.dataset.arrivals_ms {
                None => return invalid("trace replay needs a trace dataset".into()),
                Some(arrivals) if arrivals.len() != self.dataset.prompts.len() => {
                    return invalid("a trace needs one arrival per prompt".into());
                }
                Some(_) => {}
            }
            if self.warmup > 0 {
                return invalid(
                    "a trace replays its requests as recorded: warmup requests are not part of it"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Which part of a step is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Warmup requests, not measured.
    Warmup,
    /// Measured requests.
    Measure,
    /// Every request has finished.
    Done,
}

/// A progress report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The running phase.
    pub phase: Phase,
    /// Requests of this phase sent so far.
    pub sent: u64,
    /// Requests of this phase that succeeded.
    pub completed: u64,
    /// Requests of this phase that failed.
    pub failed: u64,
    /// Requests of this phase the stop condition asks for, when it is a count.
    pub target: Option<u64>,
    /// Time since the phase began.
    pub elapsed: Duration,
}

impl Progress {
    /// Requests sent and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.completed + self.failed)
    }
}

/// A finished step.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// Every request, warmup included (flagged), in index order.
    pub records: Vec<RequestRecord>,
    /// The step's metrics (warmup excluded).
    pub metrics: StepMetrics,
    /// How prompt lengths were counted.
    pub tokenization: Tokenization,
    /// Connections the client opened.
    pub connections_opened: u64,
    /// The step's epoch on the load generator's clock ([`client::now_ns`]): record instants
    /// are nanoseconds after it.
    pub epoch_ns: u64,
}

/// A step could not run.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The plan asks for something impossible.
    #[error("invalid step plan: {0}")]
    InvalidPlan(String),
    /// The client could not be set up.
    #[error("failed to set up the HTTP client")]
    Client(#[source] ClientError),
}

/// Runs one step: the warmup phase, then the measured phase, at the plan's load; calls
/// `progress` every `progress_interval` and once at each phase's end.
///
/// Failed requests are part of the outcome, not an error: a step fails only when it cannot
/// start.
pub async fn run_step(
    plan: StepPlan,
    progress: impl Fn(Progress),
) -> Result<StepOutcome, StepError> {
    plan.validate()?;
    let client = Client::new(&plan.base_url, plan.client.clone()).map_err(StepError::Client)?;
    let bodies = plan
        .dataset
        .prompts
        .iter()
        .map(|p| request::body(plan.api, &plan.model, p, &plan.request))
        .collect();
    let shared = Arc::new(Shared {
        client,
        path: plan.api.path(),
        prompts: Arc::clone(&plan.dataset.prompts),
        bodies,
        arrivals_ms: plan.dataset.arrivals_ms.clone(),
        epoch_ns: client::now_ns(),
        counters: Counters::default(),
        conversations: plan.dataset.conversations.clone().map(|conversations| {
            multi_turn::ConversationRun {
                conversations,
                api: plan.api,
                model: plan.model.clone(),
                options: plan.request.clone(),
                started: AtomicU64::new(0),
            }
        }),
    });

    let mut records = Vec::new();
    if plan.warmup > 0 {
        let stop = PhaseStop::Requests(plan.warmup);
        let phase = load::run_phase(&shared, plan.load, stop, 0, true, plan.seed ^ WARMUP_SEED);
        records = with_progress(
            &shared,
            Phase::Warmup,
            Some(plan.warmup),
            &plan,
            phase,
            &progress,
        )
        .await;
    }

    let (stop, target) = match plan.stop {
        Stop::Requests(n) => (PhaseStop::Requests(n), Some(n)),
        Stop::Duration(d) => (
            PhaseStop::Until(client::now_ns().saturating_add(clock::nanos(d))),
            None,
        ),
    };
    let phase = load::run_phase(&shared, plan.load, stop, plan.warmup, false, plan.seed);
    records.extend(with_progress(&shared, Phase::Measure, target, &plan, phase, &progress).await);

    let lag = match plan.load {
        Load::Concurrency(_) => metrics::LagPolicy {
            report: false,
            tolerance_ms: None,
        },
        Load::Rate { rps, .. } => metrics::LagPolicy {
            report: true,
            tolerance_ms: rps.is_finite().then_some(plan.lag_tolerance_ms),
        },
        Load::Trace { .. } => metrics::LagPolicy {
            report: true,
            tolerance_ms: Some(plan.lag_tolerance_ms),
        },
    };
    let metrics = metrics::compute(&records, &plan.slo, lag);
    progress(Progress {
        phase: Phase::Done,
        sent: metrics.completed + metrics.failed,
        completed: metrics.completed,
        failed: metrics.failed,
        target,
        elapsed: Duration::from_secs_f64(metrics.duration_s),
    });
    Ok(StepOutcome {
        records,
        metrics,
        tokenization: plan.dataset.tokenization,
        connections_opened: shared.client.connections_opened(),
        epoch_ns: shared.epoch_ns,
    })
}

/// Seed offset of the warmup phase's arrivals, so they differ from the measured phase's.
const WARMUP_SEED: u64 = 0x5eed_0f3a_53a5;

/// Awaits `phase`, reporting progress on the side; counters are reset at the phase's start.
async fn with_progress(
    shared: &Shared,
    phase_name: Phase,
    target: Option<u64>,
    plan: &StepPlan,
    phase: impl Future<Output = Vec<RequestRecord>>,
    progress: &impl Fn(Progress),
) -> Vec<RequestRecord> {
    let counters = &shared.counters;
    for c in [&counters.sent, &counters.completed, &counters.failed] {
        c.store(0, Ordering::Relaxed);
    }
    let started = tokio::time::Instant::now();
    let report = || Progress {
        phase: phase_name,
        sent: counters.sent.load(Ordering::Relaxed),
        completed: counters.completed.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        target,
        elapsed: started.elapsed(),
    };
    let mut ticks =
        tokio::time::interval_at(started + plan.progress_interval, plan.progress_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut phase = std::pin::pin!(phase);
    let records = loop {
        tokio::select! {
            records = &mut phase => break records,
            _ = ticks.tick() => progress(report()),
        }
    };
    progress(report());
    records
}
