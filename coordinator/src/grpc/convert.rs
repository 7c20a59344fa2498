//! Conversions between domain/store types and `evalctl.v1` messages. With
//! `agent_convert` (the checks of what agents send), this is the only place in the
//! coordinator that knows both.

use evalctl_proto::v1 as pb;
use evalctl_results::probe::Goal;

use crate::domain::{
    AgentGpu, Api, Arrival, ContainerNetwork, ContainerSpec, DatasetSpec, Dropped, FrameworkSpec,
    GpuRequirement, LoadPoint, ModelSpec, PrefixDistribution, PullPolicy, QuantizationSpec,
    Sampled, Slo, StepSpec, StopCondition, UnitConfig, WorkloadSpec,
};
use crate::store::{
    AgentRow, CampaignInfo, CampaignState, FailureKind, GrantedLease, StateCounts, StoredResult,
    UnitRow, UnitState,
};

/// Campaign state to its wire enum.
pub fn campaign_state(state: CampaignState) -> pb::CampaignState {
    match state {
        CampaignState::Active => pb::CampaignState::Active,
        CampaignState::Succeeded => pb::CampaignState::Succeeded,
        CampaignState::Failed => pb::CampaignState::Failed,
        CampaignState::Cancelled => pb::CampaignState::Cancelled,
    }
}

/// Unit state to its wire enum.
pub fn unit_state(state: UnitState) -> pb::UnitState {
    match state {
        UnitState::Pending => pb::UnitState::Pending,
        UnitState::Leased => pb::UnitState::Leased,
        UnitState::Succeeded => pb::UnitState::Succeeded,
        UnitState::Failed => pb::UnitState::Failed,
        UnitState::Cancelled => pb::UnitState::Cancelled,
    }
}

/// State counts to the wire.
pub fn counts(c: &StateCounts) -> pb::StateCounts {
    pb::StateCounts {
        pending: c.pending,
        leased: c.leased,
        succeeded: c.succeeded,
        failed: c.failed,
        cancelled: c.cancelled,
        total: c.total,
    }
}

/// A campaign with its counts to the wire.
pub fn campaign_info(c: &CampaignInfo) -> pb::CampaignInfo {
    pb::CampaignInfo {
        campaign_id: c.id.to_string(),
        name: c.name.clone(),
        state: campaign_state(c.state) as i32,
        priority: c.priority,
        created_at_ms: c.created_at_ms,
        updated_at_ms: c.updated_at_ms,
        units: Some(counts(&c.units)),
        steps: Some(counts(&c.steps)),
        dropped: c.dropped,
        submitted_by: c.submitted_by.clone(),
        preemptions: c.preemptions,
        preemption_lost_ms: c.preemption_lost_ms,
    }
}

/// A dropped combination to the wire.
pub fn dropped(d: &Dropped) -> pb::DroppedCombination {
    pb::DroppedCombination {
        label: d.label.clone(),
        kind: d.kind.to_string(),
        reason: d.reason.clone(),
    }
}

/// A stored unit to its wire summary.
pub fn unit_row(u: &UnitRow) -> pb::UnitSummary {
    pb::UnitSummary {
        unit_id: u.id.to_string(),
        label: u.label.clone(),
        config: Some(unit_config(&u.config)),
        steps: u.steps_total,
        state: unit_state(u.state) as i32,
        attempts: u.attempts,
        tries: u.tries,
        last_error: u.last_error.clone().unwrap_or_default(),
        log_tail: u.log_tail.clone().unwrap_or_default(),
        steps_succeeded: u.steps_succeeded,
        agent_id: u.agent_id.clone().unwrap_or_default(),
        failure_class: u
            .failure_kind
            .map_or(pb::FailureClass::Unspecified, failure_class) as i32,
    }
}

/// The store's failure kind to the wire.
pub fn failure_class(kind: FailureKind) -> pb::FailureClass {
    match kind {
        FailureKind::Unrecognised => pb::FailureClass::Unspecified,
        FailureKind::BadArgument => pb::FailureClass::BadArgument,
        FailureKind::PortInUse => pb::FailureClass::PortInUse,
        FailureKind::OutOfMemory => pb::FailureClass::OutOfMemory,
        FailureKind::MissingModel => pb::FailureClass::MissingModel,
        FailureKind::MissingEngine => pb::FailureClass::MissingEngine,
        FailureKind::ImageUnavailable => pb::FailureClass::ImageUnavailable,
        FailureKind::BadDataset => pb::FailureClass::BadDataset,
    }
}

/// A unit configuration to the wire.
pub fn unit_config(c: &UnitConfig) -> pb::UnitConfig {
    pb::UnitConfig {
        model: Some(model(&c.model)),
        gpu: Some(gpu(&c.gpu)),
        framework: Some(framework(&c.framework)),
        quantization: Some(quantization(&c.quantization)),
        extra_args: c.extra_args.clone(),
        labels: c.labels.clone().into_iter().collect(),
    }
}

fn model(m: &ModelSpec) -> pb::ModelSpec {
    pb::ModelSpec {
        name: m.name.clone(),
        path: m.path.clone(),
        params_b: m.params_b.unwrap_or(0.0),
        tokenizer: m.tokenizer.clone().unwrap_or_default(),
    }
}

fn gpu(g: &GpuRequirement) -> pb::GpuRequirement {
    pb::GpuRequirement {
        gpu_type: g.gpu_type.clone(),
        memory_gb: g.memory_gb,
        count: g.count,
        price_per_hour: g.price_per_hour.unwrap_or(0.0),
        layout: g.layout.as_ref().map(|l| pb::Layout {
            tp: l.tp,
            pp: l.pp,
            dp: l.dp,
            ep: l.ep,
            max_num_seqs: l.max_num_seqs.unwrap_or(0),
            max_model_len: l.max_model_len.unwrap_or(0),
            kv_cache_dtype: l
                .kv_cache_dtype
                .map(|k| k.as_str().to_owned())
                .unwrap_or_default(),
            speculative_method: l
                .speculative
                .as_ref()
                .map(|s| s.method.as_str().to_owned())
                .unwrap_or_default(),
            speculative_draft_model: l
                .speculative
                .as_ref()
                .and_then(|s| s.draft_model.clone())
                .unwrap_or_default(),
            speculative_tokens: l.speculative.as_ref().map_or(0, |s| s.tokens),
        }),
    }
}

fn framework(f: &FrameworkSpec) -> pb::FrameworkSpec {
    pb::FrameworkSpec {
        name: f.name.clone(),
        command: f.command.clone(),
        health_path: f.health_path.clone(),
        metrics_path: f.metrics_path.clone().unwrap_or_default(),
        startup_timeout_ms: f.startup_timeout_ms,
        env: f.env.clone().into_iter().collect(),
        image: f.image.clone().unwrap_or_default(),
        container: f.container.as_ref().map(container),
    }
}

fn container(c: &ContainerSpec) -> pb::ContainerSpec {
    pb::ContainerSpec {
        pull: match c.pull {
            PullPolicy::Always => pb::PullPolicy::Always,
            PullPolicy::IfMissing => pb::PullPolicy::IfMissing,
            PullPolicy::Never => pb::PullPolicy::Never,
        } as i32,
        pull_timeout_ms: c.pull_timeout_ms,
        network: match c.network {
            ContainerNetwork::Host => pb::ContainerNetwork::Host,
            ContainerNetwork::Publish => pb::ContainerNetwork::Publish,
        } as i32,
        shm_size: c.shm_size.clone().unwrap_or_default(),
        run_options: c.run_options.clone(),
    }
}

fn quantization(q: &QuantizationSpec) -> pb::QuantizationSpec {
    pb::QuantizationSpec {
        name: q.name.clone(),
        bits: q.bits,
        args: q.args.clone(),
    }
}

/// A step to the wire.
pub fn step(s: &StepSpec) -> pb::StepSpec {
    pb::StepSpec {
        step_id: s.id.to_string(),
        index: s.index,
        workload: Some(workload(&s.workload)),
        load: Some(load_point(&s.load)),
        repeat: s.repeat,
    }
}

fn workload(w: &WorkloadSpec) -> pb::WorkloadSpec {
    let (requests, duration_ms) = match w.stop {
        StopCondition::Requests(n) => (n, 0),
        StopCondition::DurationMs(ms) => (0, ms),
    };
    pb::WorkloadSpec {
        name: w.name.clone(),
        api: match w.api {
            Api::Chat => "chat",
            Api::Completions => "completions",
            Api::Command => "command",
        }
        .to_owned(),
        dataset: w.dataset.as_ref().map(|d| dataset(d, w.seed)),
        requests,
        duration_ms,
        warmup: w.warmup,
        slo: Some(slo(&w.slo)),
        command: w.command.clone().unwrap_or_default(),
        metrics: w.metrics.clone().into_iter().collect(),
        prefix_cache: w
            .prefix_cache
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        harness: w.harness.map(|h| h.as_str().to_owned()).unwrap_or_default(),
    }
}

/// A sampled value in the protocol's shape.
fn sampled(s: &Sampled) -> pb::Sampled {
    let mut out = pb::Sampled::default();
    match *s {
        Sampled::Fixed { value } => {
            out.distribution = "fixed".into();
            out.value = value;
        }
        Sampled::Uniform { min, max } => {
            out.distribution = "uniform".into();
            out.min = min;
            out.max = max;
        }
        Sampled::Normal { mean, stddev } => {
            out.distribution = "normal".into();
            out.mean = mean;
            out.stddev = stddev;
        }
        Sampled::Exponential { mean } => {
            out.distribution = "exponential".into();
            out.mean = mean;
        }
    }
    out
}

fn dataset(d: &DatasetSpec, seed: u64) -> pb::DatasetSpec {
    let mut spec = pb::DatasetSpec {
        kind: d.kind().into(),
        seed,
        ..Default::default()
    };
    match d {
        DatasetSpec::Random {
            input_tokens,
            output_tokens,
        } => {
            spec.input_tokens = *input_tokens;
            spec.output_tokens = *output_tokens;
        }
        DatasetSpec::SharedPrefix {
            prefixes,
            prefix_tokens,
            suffix_tokens,
            output_tokens,
            distribution,
        } => {
            spec.prefixes = *prefixes;
            spec.prefix_tokens = *prefix_tokens;
            spec.suffix_tokens = *suffix_tokens;
            spec.output_tokens = *output_tokens;
            match distribution {
                PrefixDistribution::Uniform => spec.distribution = "uniform".into(),
                PrefixDistribution::Zipf { exponent } => {
                    spec.distribution = "zipf".into();
                    spec.zipf_exponent = *exponent;
                }
            }
        }
        DatasetSpec::Trace {
            path,
            block_tokens,
            start_ms,
            end_ms,
        } => {
            spec.path = path.clone();
            spec.block_tokens = *block_tokens;
            spec.window_start_ms = start_ms.unwrap_or(0);
            spec.window_end_ms = end_ms.unwrap_or(0);
        }
        DatasetSpec::Conversations {
            path,
            max_turns,
            turns,
            input_tokens,
            first_input_tokens,
            output_tokens,
            think_time_s,
        } => {
            spec.path = path.clone().unwrap_or_default();
            spec.max_turns = max_turns.unwrap_or(0);
            spec.turns = turns.as_ref().map(sampled);
            spec.turn_input_tokens = input_tokens.as_ref().map(sampled);
            spec.first_input_tokens = first_input_tokens.as_ref().map(sampled);
            spec.turn_output_tokens = output_tokens.as_ref().map(sampled);
            spec.think_time_s = Some(sampled(think_time_s));
        }
        DatasetSpec::Sharegpt {
            path,
            output_tokens,
        }
        | DatasetSpec::Jsonl {
            path,
            output_tokens,
        } => {
            spec.path = path.clone();
            spec.output_tokens = output_tokens.unwrap_or(0);
        }
    }
    spec
}

fn slo(s: &Slo) -> pb::Slo {
    pb::Slo {
        ttft_ms: s.ttft_ms.unwrap_or(0.0),
        tpot_ms: s.tpot_ms.unwrap_or(0.0),
        e2el_ms: s.e2el_ms.unwrap_or(0.0),
    }
}

fn arrival_name(arrival: Arrival) -> String {
    match arrival {
        Arrival::Poisson => "poisson",
        Arrival::Gamma => "gamma",
        Arrival::Constant => "constant",
    }
    .to_owned()
}

/// A search's goal on the wire.
fn search_goal(goal: &Goal) -> pb::SearchGoal {
    let (percentile, fraction, limits) = match goal {
        Goal::Percentile { percentile, limits } => (*percentile, 0.0, limits),
        Goal::Attainment { fraction, slo } => (0.0, *fraction, slo),
    };
    pb::SearchGoal {
        percentile,
        fraction,
        limits: Some(pb::Slo {
            ttft_ms: limits.ttft_ms.unwrap_or(0.0),
            tpot_ms: limits.tpot_ms.unwrap_or(0.0),
            e2el_ms: limits.e2el_ms.unwrap_or(0.0),
        }),
    }
}

fn load_point(l: &LoadPoint) -> pb::LoadPoint {
    match l {
        LoadPoint::Search(search) => pb::LoadPoint {
            kind: Some(pb::load_point::Kind::Search(pb::SearchLoad {
                over: search.spec.axis.name().to_owned(),
                min: search.spec.min,
                max: search.spec.max,
                max_probes: search.spec.max_probes,
                precision: search.spec.precision,
                max_repeats: search.spec.max_repeats,
                goal: Some(search_goal(&search.goal)),
            })),
            arrival: arrival_name(search.arrival),
            burstiness: search.burstiness.unwrap_or(0.0),
        },
        LoadPoint::Concurrency(n) => pb::LoadPoint {
            kind: Some(pb::load_point::Kind::Concurrency(*n)),
            arrival: String::new(),
            burstiness: 0.0,
        },
        LoadPoint::Rate {
            rps,
            arrival,
            burstiness,
        } => pb::LoadPoint {
            kind: Some(pb::load_point::Kind::Rate(*rps)),
            arrival: arrival_name(*arrival),
            burstiness: burstiness.unwrap_or(0.0),
        },
        LoadPoint::TimeScale(x) => pb::LoadPoint {
            kind: Some(pb::load_point::Kind::TimeScale(*x)),
            arrival: String::new(),
            burstiness: 0.0,
        },
    }
}

/// A GPU as an agent reports it, from the wire.
pub fn agent_gpu(g: pb::GpuInfo) -> AgentGpu {
    AgentGpu {
        index: g.index,
        uuid: g.uuid,
        gpu_type: g.gpu_type,
        name: g.name,
        memory_gb: g.memory_gb,
    }
}

fn gpu_info(g: &AgentGpu) -> pb::GpuInfo {
    pb::GpuInfo {
        index: g.index,
        uuid: g.uuid.clone(),
        gpu_type: g.gpu_type.clone(),
        name: g.name.clone(),
        memory_gb: g.memory_gb,
    }
}

/// A granted lease to the wire.
pub fn lease(l: &GrantedLease) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease.to_string(),
        campaign: l.unit.campaign.to_string(),
        unit_id: l.unit.unit.to_string(),
        epoch: l.epoch,
        config: Some(unit_config(&l.config)),
        steps: l.steps.iter().map(step).collect(),
        finished_step_ids: l.finished_steps.iter().map(ToString::to_string).collect(),
        probe_runs: l
            .probe_runs
            .iter()
            .map(|p| pb::StoredProbeRun {
                search_step_id: p.search_step.to_string(),
                step_id: p.step.to_string(),
                facts_json: p.facts_json.clone(),
            })
            .collect(),
        gpu_indices: l.gpu_indices.clone(),
        expires_at_ms: l.expires_at_ms,
        attempt: l.attempt,
        // The unit id is the hash of its configuration.
        config_hash: l.unit.unit.to_string(),
    }
}

/// A registered agent to the wire.
pub fn agent_info(a: &AgentRow) -> pb::AgentInfo {
    pb::AgentInfo {
        agent_id: a.id.to_string(),
        hostname: a.hostname.clone(),
        gpus: a.gpus.iter().map(gpu_info).collect(),
        labels: a.labels.clone().into_iter().collect(),
        frameworks: a.frameworks.clone(),
        state: a.state.to_string(),
        last_heartbeat_ms: a.last_heartbeat_ms,
        lease_ids: a.leases.iter().map(ToString::to_string).collect(),
        version: a.version.clone(),
        faults: a
            .faults
            .iter()
            .map(|f| pb::AgentFault {
                kind: f.kind.clone(),
                name: f.name.clone(),
                error: f.error.clone(),
                found_at_ms: f.found_at_ms,
            })
            .collect(),
    }
}

/// A stored step result to the wire.
pub fn step_result(r: StoredResult) -> pb::StepResult {
    pb::StepResult {
        campaign: r.unit.campaign.to_string(),
        unit_id: r.unit.unit.to_string(),
        step_id: r.step.id.to_string(),
        step_index: r.step.index,
        unit: Some(unit_config(&r.config)),
        step: Some(step(&r.step)),
        result_json: r.result_json,
        environment_json: r.environment_json,
        records_zstd: r.records_zstd.unwrap_or_default(),
        telemetry_zstd: r.telemetry_zstd.unwrap_or_default(),
        agent_id: r.agent.to_string(),
        attempt: r.attempt,
        finished_at_ms: r.finished_at_ms,
    }
}

/// The store's health on the wire.
pub fn store_health(health: &crate::store::HealthSnapshot) -> pb::StoreHealth {
    pb::StoreHealth {
        writable: health.writable,
        failing_since_ms: health.failing_since_ms.unwrap_or(0),
        last_error: health.last_error.clone().unwrap_or_default(),
        write_failures: health.write_failures,
    }
}

/// What a campaign of a series knows of it, on the wire.
pub fn series_facts(f: &crate::store::series::SeriesFacts) -> pb::SeriesFacts {
    pb::SeriesFacts {
        series: f.series.clone(),
        predecessor: f.predecessor.clone().unwrap_or_default(),
        baseline: f.baseline.clone().unwrap_or_default(),
        baseline_pinned: f.pinned,
        verdict: f.verdict.as_ref().map(|v| pb::SeriesVerdict {
            outcome: v.outcome.clone(),
            baseline: v.baseline.clone().unwrap_or_default(),
            regressions: v.regressions,
            improvements: v.improvements,
            matched_steps: v.matched_steps,
            worst: v
                .worst
                .iter()
                .map(|c| pb::VerdictChange {
                    config: c.config.clone(),
                    workload: c.workload.clone(),
                    load: c.load.clone(),
                    metric: c.metric.clone(),
                    change: c.change,
                })
                .collect(),
            judged_at_ms: v.judged_at_ms,
        }),
    }
}
