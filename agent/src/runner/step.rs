//! One step of a unit: its protocol description turned into a load-generator plan, run, and
//! its outcome turned into the `StepResult` the coordinator stores.

use std::path::PathBuf;
use std::time::Duration;

use evalctl_proto::v1 as pb;

use evalctl_loadgen::conversation::ConversationSource;
use evalctl_loadgen::dataset::{self, LengthFilter, PrefixDistribution};
use evalctl_loadgen::trace::{self, TraceOptions};
use evalctl_loadgen::{
    Api, Arrival, DatasetPlan, DatasetSource, Load, Sampled, Slo, StepOutcome, StepPlan, Stop,
};
use evalctl_results::document::ProbeFacts;
use evalctl_results::{
    STEP_DOCUMENT_SCHEMA, STEP_DOCUMENT_SCHEMA_MINOR, StepDocument, WorkloadFacts, codec,
};
use evalctl_telemetry::RecordedTelemetry;

/// Prompts prepared for a duration-bound step (requests reuse them in turn).
const PROMPTS_FOR_DURATION: usize = 1_000;
/// Upper bound on prepared prompts.
const MAX_PROMPTS: usize = 10_000;

/// A step description the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum StepPlanError {
    /// A field is missing or holds a value the agent does not know.
    #[error("step {step}: {message}")]
    Invalid {
        /// Step label.
        step: String,
        /// What is wrong.
        message: String,
    },
    /// The dataset could not be prepared.
    #[error("step {step}: failed to prepare the dataset")]
    Dataset {
        /// Step label.
        step: String,
        /// The cause.
        #[source]
        source: dataset::DatasetError,
    },
}

impl StepPlanError {
    /// A dataset file the step could never use (see
    /// [`dataset::DatasetError::is_malformed`]).
    pub fn is_bad_dataset(&self) -> bool {
        matches!(self, StepPlanError::Dataset { source, .. } if source.is_malformed())
    }
}

/// "chat @ c=8 #0": workload, load point, repeat.
pub fn label(step: &pb::StepSpec) -> String {
    let workload = step.workload.as_ref().map_or("?", |w| w.name.as_str());
    let load = match step.load.as_ref().and_then(|l| l.kind.as_ref()) {
        Some(pb::load_point::Kind::Concurrency(c)) => format!("c={c}"),
        Some(pb::load_point::Kind::Rate(r)) if r.is_infinite() => "rate=inf".to_owned(),
        Some(pb::load_point::Kind::Rate(r)) => format!("rate={r}"),
        Some(pb::load_point::Kind::TimeScale(x)) => format!("x{x}"),
        Some(pb::load_point::Kind::Search(s)) => {
            let axis = if s.over == "concurrency" { "c" } else { "rate" };
            format!("search {axis}={}..{}", s.min, s.max)
        }
        None => "load=?".to_owned(),
    };
    format!("{workload} @ {load} #{}", step.repeat)
}

/// Where a step sends its requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server base URL.
    pub base_url: String,
    /// Model name sent in requests.
    pub served_model: String,
    /// `tokenizer.json` of the model, when the matrix names one.
    pub tokenizer_json: Option<PathBuf>,
}

/// Builds the load generator's plan for `step` (preparing its dataset). A `salt` is mixed
/// into the seed of generated prompts, so they differ from every other step's.
pub async fn plan(
    step: &pb::StepSpec,
    target: &Target,
    salt: Option<u64>,
) -> Result<StepPlan, StepPlanError> {
    let step_label = label(step);
    let invalid = |message: String| StepPlanError::Invalid {
        step: step_label.clone(),
        message,
    };
    let workload = step
        .workload
        .as_ref()
        .ok_or_else(|| invalid("the step has no workload".into()))?;
    let api = match workload.api.as_str() {
        "chat" | "" => Api::Chat,
        "completions" => Api::Completions,
        other => return Err(invalid(format!("unknown api `{other}`"))),
    };
    let spec = workload
        .dataset
        .as_ref()
        .ok_or_else(|| invalid("the workload has no dataset".into()))?;
    let output = (spec.output_tokens > 0).then_some(spec.output_tokens);
    let source = match spec.kind.as_str() {
        "random" => DatasetSource::Random {
            input_tokens: spec.input_tokens,
            output_tokens: spec.output_tokens,
        },
        "shared_prefix" => DatasetSource::SharedPrefix {
            prefixes: spec.prefixes,
            prefix_tokens: spec.prefix_tokens,
            suffix_tokens: spec.suffix_tokens,
            output_tokens: spec.output_tokens,
            distribution: match spec.distribution.as_str() {
                "uniform" | "" => PrefixDistribution::Uniform,
                "zipf" => PrefixDistribution::Zipf {
                    exponent: spec.zipf_exponent,
                },
                other => return Err(invalid(format!("unknown prefix distribution `{other}`"))),
            },
        },
        "sharegpt" => DatasetSource::Sharegpt {
            path: PathBuf::from(&spec.path),
            output_tokens: output,
        },
        "trace" => DatasetSource::Trace {
            path: PathBuf::from(&spec.path),
            options: TraceOptions {
                block_tokens: if spec.block_tokens == 0 {
                    trace::DEFAULT_BLOCK_TOKENS
                } else {
                    spec.block_tokens
                },
                window_ms: match (spec.window_start_ms, spec.window_end_ms) {
                    (0, 0) => None,
                    (start, 0) => Some((start as f64, f64::INFINITY)),
                    (start, end) => Some((start as f64, end as f64)),
                },
            },
        },
        "jsonl" => DatasetSource::Jsonl {
            path: PathBuf::from(&spec.path),
            output_tokens: output,
        },
        "conversations" => conversations(spec).map_err(invalid)?,
        other => return Err(invalid(format!("unknown dataset kind `{other}`"))),
    };
    let load = load(step.load.as_ref()).map_err(invalid)?;
    let stop = match (workload.requests, workload.duration_ms) {
        (0, 0) => {
            return Err(invalid(
                "the workload sets neither requests nor duration".into(),
            ));
        }
        (0, ms) => Stop::Duration(Duration::from_millis(ms)),
        (n, _) => Stop::Requests(n),
    };
    let count = match stop {
        Stop::Requests(n) => n.saturating_add(workload.warmup) as usize,
        // A trace's prompt i is its request i: all of it, up to the bound.
        Stop::Duration(_) if matches!(source, DatasetSource::Trace { .. }) => MAX_PROMPTS,
        Stop::Duration(_) => PROMPTS_FOR_DURATION,
    }
    .clamp(1, MAX_PROMPTS);
    // A conversation sends at least its shortest turn count of requests.
    let count = match &source {
        DatasetSource::Conversations {
            source: ConversationSource::Synthetic { turns, .. },
            ..
        } => count.div_ceil(turns.min().max(1.0) as usize),
        _ => count,
    };
    if let DatasetSource::SharedPrefix {
        prefixes,
        prefix_tokens,
        suffix_tokens,
        ..
    } = &source
        && (*prefixes == 0 || *prefix_tokens == 0 || *suffix_tokens == 0)
    {
        return Err(invalid(
            "a shared-prefix dataset needs at least 1 prefix and prefixes and suffixes of at least 1 token".into(),
        ));
    }
    let dataset = dataset::prepare(&DatasetPlan {
        source,
        count,
        seed: spec.seed ^ salt.unwrap_or(0),
        filter: LengthFilter::default(),
        server_url: Some(target.base_url.clone()),
        model: Some(target.served_model.clone()),
        tokenizer_json: target.tokenizer_json.clone(),
    })
    .await
    .map_err(|source| StepPlanError::Dataset {
        step: step_label.clone(),
        source,
    })?;
    let mut plan = StepPlan::new(
        target.base_url.clone(),
        api,
        target.served_model.clone(),
        dataset,
        load,
        stop,
    );
    plan.warmup = workload.warmup;
    plan.seed = spec.seed.wrapping_add(u64::from(step.repeat));
    let objective = |ms: f64| (ms > 0.0).then_some(ms);
    if let Some(slo) = &workload.slo {
        plan.slo = Slo {
            ttft_ms: objective(slo.ttft_ms),
            tpot_ms: objective(slo.tpot_ms),
            e2el_ms: objective(slo.e2el_ms),
        };
    }
    Ok(plan)
}

/// A conversations dataset: from its file when it names one, else synthetic.
fn conversations(spec: &pb::DatasetSpec) -> Result<DatasetSource, String> {
    let think_time_s = match &spec.think_time_s {
        Some(s) => sampled("think_time", s)?,
        None => Sampled::fixed(0.0),
    };
    let optional =
        |name: &str, s: &Option<pb::Sampled>| s.as_ref().map(|s| sampled(name, s)).transpose();
    let source = if spec.path.is_empty() {
        let required = |name: &str, s: &Option<pb::Sampled>| {
            optional(name, s)?.ok_or_else(|| format!("synthetic conversations need `{name}`"))
        };
        ConversationSource::Synthetic {
            turns: required("turns", &spec.turns)?,
            input_tokens: required("input_tokens", &spec.turn_input_tokens)?,
            first_input_tokens: optional("first_input_tokens", &spec.first_input_tokens)?,
            output_tokens: required("output_tokens", &spec.turn_output_tokens)?,
        }
    } else {
        ConversationSource::File {
            path: PathBuf::from(&spec.path),
            max_turns: (spec.max_turns > 0).then_some(spec.max_turns),
            output_tokens: optional("output_tokens", &spec.turn_output_tokens)?,
        }
    };
    Ok(DatasetSource::Conversations {
        source,
        think_time_s,
    })
}

/// A sampled value from the protocol, checked as the matrix checks it.
fn sampled(name: &str, s: &pb::Sampled) -> Result<Sampled, String> {
    let value = match s.distribution.as_str() {
        "fixed" | "" => Sampled::Fixed { value: s.value },
        "uniform" => Sampled::Uniform {
            min: s.min,
            max: s.max,
        },
        "normal" => Sampled::Normal {
            mean: s.mean,
            stddev: s.stddev,
        },
        "exponential" => Sampled::Exponential { mean: s.mean },
        other => return Err(format!("`{name}`: unknown distribution `{other}`")),
    };
    let floor = if name == "think_time" { 0.0 } else { 1.0 };
    value
        .validate(floor)
        .map_err(|m| format!("`{name}`: {m}"))?;
    Ok(value)
}

/// Whether a dataset's prompts are generated (and so can be salted), not read from a file.
pub fn is_generated(spec: &pb::DatasetSpec) -> bool {
    match spec.kind.as_str() {
        "random" | "shared_prefix" | "trace" => true,
        "conversations" => spec.path.is_empty(),
        _ => false,
    }
}

fn load(point: Option<&pb::LoadPoint>) -> Result<Load, String> {
    let point = point.ok_or("the step has no load point")?;
    match point.kind.as_ref() {
        Some(&pb::load_point::Kind::Concurrency(n)) => Ok(Load::Concurrency(n)),
        Some(&pb::load_point::Kind::Rate(rps)) => {
            let arrival = match point.arrival.as_str() {
                "poisson" | "" => Arrival::Poisson,
                "constant" => Arrival::Constant,
                "gamma" => Arrival::Gamma {
                    burstiness: point.burstiness,
                },
                other => return Err(format!("unknown arrival `{other}`")),
            };
            Ok(Load::Rate {
                rps,
                arrival,
                max_in_flight: None,
            })
        }
        Some(&pb::load_point::Kind::TimeScale(time_scale)) => Ok(Load::Trace { time_scale }),
        Some(pb::load_point::Kind::Search(_)) => {
            Err("a capacity search runs probe steps; it has no load of its own".into())
        }
        None => Err("the load point is neither a concurrency, a rate nor a time scale".into()),
    }
}

/// The step could not produce a result worth storing.
pub fn failure(outcome: &StepOutcome) -> Option<String> {
    if outcome.metrics.completed > 0 {
        return None;
    }
    let kinds: Vec<String> = outcome
        .metrics
        .errors
        .iter()
        .map(|(kind, n)| format!("{n} {}", kind.as_str()))
        .collect();
    let example = outcome
        .records
        .iter()
        .rev()
        .find_map(|r| r.error.as_ref())
        .map(|e| format!("; last error: {}", e.message))
        .unwrap_or_default();
    Some(format!(
        "every measured request failed ({}){example}",
        if kinds.is_empty() {
            "none completed".to_owned()
        } else {
            kinds.join(", ")
        }
    ))
}

/// What the step result needs besides the outcome.
#[derive(Debug, Clone)]
pub struct ResultContext<'a> {
    /// The lease the step ran under.
    pub lease: &'a pb::Lease,
    /// The step.
    pub step: &'a pb::StepSpec,
    /// This agent.
    pub agent_id: &'a str,
    /// The server was the simulator.
    pub simulated: bool,
    /// Model name the requests carried.
    pub served_model: &'a str,
    /// `environment_json`.
    pub environment_json: &'a str,
    /// Unix milliseconds at the step's start and end.
    pub started_at_ms: i64,
    /// Unix milliseconds at the step's end.
    pub finished_at_ms: i64,
}

/// The protocol's step result for a finished load-generator step, with the step's telemetry
/// when it recorded any.
pub fn result(
    ctx: &ResultContext<'_>,
    outcome: &StepOutcome,
    telemetry: Option<RecordedTelemetry>,
    workload: Option<WorkloadFacts>,
    probe: Option<ProbeFacts>,
) -> std::io::Result<pb::StepResult> {
    let (summary, telemetry_zstd) = match telemetry {
        Some(t) => (Some(t.summary), t.raw_zstd),
        None => (None, Vec::new()),
    };
    let document = StepDocument {
        schema: STEP_DOCUMENT_SCHEMA,
        schema_minor: STEP_DOCUMENT_SCHEMA_MINOR,
        simulated: ctx.simulated,
        step_label: label(ctx.step),
        metrics: Some(outcome.metrics.clone()),
        harness_metrics: Default::default(),
        scores: Vec::new(),
        tokenization: Some(outcome.tokenization),
        connections_opened: outcome.connections_opened,
        served_model: ctx.served_model.to_owned(),
        started_at_ms: ctx.started_at_ms,
        finished_at_ms: ctx.finished_at_ms,
        telemetry: summary,
        workload,
        probe,
        search: None,
    };
    let mut result = protocol_result(
        ctx,
        serde_json::to_string(&document).map_err(std::io::Error::other)?,
        codec::encode_records(&outcome.records)?,
    );
    result.telemetry_zstd = telemetry_zstd;
    Ok(result)
}

/// A step result from its document and compressed records.
pub fn protocol_result(
    ctx: &ResultContext<'_>,
    result_json: String,
    records_zstd: Vec<u8>,
) -> pb::StepResult {
    pb::StepResult {
        campaign: ctx.lease.campaign.clone(),
        unit_id: ctx.lease.unit_id.clone(),
        step_id: ctx.step.step_id.clone(),
        step_index: ctx.step.index,
        unit: None,
        step: None,
        result_json,
        environment_json: ctx.environment_json.to_owned(),
        records_zstd,
        agent_id: ctx.agent_id.to_owned(),
        attempt: ctx.lease.attempt,
        finished_at_ms: ctx.finished_at_ms,
        telemetry_zstd: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: pb::load_point::Kind, requests: u64) -> pb::StepSpec {
        pb::StepSpec {
            step_id: "s-1".into(),
            index: 0,
            workload: Some(pb::WorkloadSpec {
                name: "chat".into(),
                api: "chat".into(),
                dataset: Some(pb::DatasetSpec {
                    kind: "random".into(),
                    input_tokens: 8,
                    output_tokens: 4,
                    seed: 7,
                    ..Default::default()
                }),
                requests,
                warmup: 2,
                slo: Some(pb::Slo {
                    ttft_ms: 100.0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            load: Some(pb::LoadPoint {
                kind: Some(kind),
                arrival: "constant".into(),
                burstiness: 0.0,
            }),
            repeat: 1,
        }
    }

    fn target() -> Target {
        // Nothing listens on port 9: the dataset falls back to whitespace counting.
        Target {
            base_url: "http://127.0.0.1:9".into(),
            served_model: "m".into(),
            tokenizer_json: None,
        }
    }

    #[tokio::test]
    async fn a_step_becomes_the_plan_it_describes() {
        let plan = plan(&step(pb::load_point::Kind::Rate(4.0), 10), &target(), None)
            .await
            .unwrap();
        assert_eq!(plan.stop, Stop::Requests(10));
        assert_eq!(plan.warmup, 2);
        assert_eq!(plan.seed, 8, "seed + repeat");
        assert_eq!(plan.slo.ttft_ms, Some(100.0));
        assert_eq!(plan.slo.tpot_ms, None, "0 means no objective");
        assert!(
            matches!(plan.load, Load::Rate { rps, arrival: Arrival::Constant, .. } if rps == 4.0)
        );
        assert_eq!(plan.dataset.prompts.len(), 12, "measured + warmup prompts");
    }

    #[tokio::test]
    async fn a_step_without_a_stop_condition_is_refused_by_name() {
        let err = plan(
            &step(pb::load_point::Kind::Concurrency(2), 0),
            &target(),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("chat @ c=2 #1"), "{err}");
        assert!(err.contains("neither requests nor duration"), "{err}");
    }
}
