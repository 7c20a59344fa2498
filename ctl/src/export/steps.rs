//! One row per stored step: the unit's full configuration, the workload and load point,
//! where it ran, every load-generator metric, the derived per-GPU and cost figures, and
//! the step's telemetry. docs/results.md lists the columns.

use evalctl_proto::v1 as pb;
use evalctl_results::{Environment, StepDocument};
use evalctl_results::{StepMetrics, Summary};
use evalctl_results::{TelemetrySummary, WorkloadFacts};

use super::{Kind, RowBuilder};
use crate::commands::results::unit_label;

/// Everything a step row is built from.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The campaign's name (results carry its id).
    pub campaign_name: &'a str,
    /// The stored result as the coordinator streamed it.
    pub result: &'a pb::StepResult,
    /// Its parsed result document.
    pub document: &'a StepDocument,
    /// Its parsed environment, when readable.
    pub environment: Option<&'a Environment>,
    /// Price per GPU-hour: from a price file, else the matrix; `None` when neither gives one.
    pub price_per_gpu_hour: Option<f64>,
}

/// "c=8", "rate=2.5", "rate=inf".
pub fn load_label(load: Option<&pb::LoadPoint>) -> String {
    match load.and_then(|l| l.kind.as_ref()) {
        Some(pb::load_point::Kind::Concurrency(c)) => format!("c={c}"),
        Some(pb::load_point::Kind::Rate(r)) if r.is_infinite() => "rate=inf".to_owned(),
        Some(pb::load_point::Kind::Rate(r)) => format!("rate={r}"),
        Some(pb::load_point::Kind::TimeScale(x)) => format!("x{x}"),
        Some(pb::load_point::Kind::Search(s)) => {
            let axis = if s.over == "concurrency" { "c" } else { "rate" };
            format!("search {axis}={}..{}", s.min, s.max)
        }
        None => "load=?".to_owned(),
    }
}

/// Output tokens per second per GPU of the unit (a CPU unit counts as one).
pub fn per_gpu(output_tok_s: f64, gpu_count: u32) -> f64 {
    output_tok_s / f64::from(gpu_count.max(1))
}

/// Cost of a million output tokens at `price_per_gpu_hour` for `gpu_count` GPUs producing
/// `output_tok_s`; `None` without throughput.
pub fn cost_per_million_tokens(
    price_per_gpu_hour: f64,
    gpu_count: u32,
    output_tok_s: f64,
) -> Option<f64> {
    (output_tok_s > 0.0)
        .then(|| price_per_gpu_hour * f64::from(gpu_count.max(1)) / 3600.0 / output_tok_s * 1e6)
}

/// Zero means "not set" in the protocol.
fn nonzero(v: f64) -> Option<f64> {
    (v != 0.0).then_some(v)
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A serde enum's wire name ("server_tokenize").
fn wire_name<T: serde::Serialize>(value: &T) -> Option<String> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
}

/// Fills `row` with the cells of one step.
pub fn build(input: StepInput<'_>, row: &mut RowBuilder) {
    identity(input, row);
    unit(input.result.unit.as_ref(), input.price_per_gpu_hour, row);
    workload(input.result.step.as_ref(), row);
    run(input, row);
    metrics(input.document.metrics.as_ref(), row);
    derived(input, row);
    telemetry(input.document, row);
    workload_facts(input.document.workload.as_ref(), row);
    capacity_search(input, row);
}

fn identity(input: StepInput<'_>, row: &mut RowBuilder) {
    let r = input.result;
    row.put("campaign", Kind::Str, input.campaign_name);
    row.put("campaign_id", Kind::Str, r.campaign.as_str());
    row.put("unit_id", Kind::Str, r.unit_id.as_str());
    row.put(
        "unit",
        Kind::Str,
        r.unit.as_ref().map(unit_label).unwrap_or_default(),
    );
    row.put("step_id", Kind::Str, r.step_id.as_str());
    row.put("step_index", Kind::U64, r.step_index);
    row.put("step_label", Kind::Str, input.document.step_label.as_str());
}

fn unit(config: Option<&pb::UnitConfig>, price: Option<f64>, row: &mut RowBuilder) {
    let model = config.and_then(|c| c.model.as_ref());
    let gpu = config.and_then(|c| c.gpu.as_ref());
    let framework = config.and_then(|c| c.framework.as_ref());
    let quant = config.and_then(|c| c.quantization.as_ref());
    row.put("model", Kind::Str, model.map(|m| m.name.as_str()));
    row.put("model_path", Kind::Str, model.map(|m| m.path.as_str()));
    row.put(
        "model_params_b",
        Kind::F64,
        model.and_then(|m| nonzero(m.params_b)),
    );
    row.put(
        "gpu_type",
        Kind::Str,
        gpu.map(|g| nonempty(&g.gpu_type).unwrap_or("cpu")),
    );
    row.put("gpu_count", Kind::U64, gpu.map(|g| g.count.max(1)));
    let layout = gpu.and_then(|g| g.layout.as_ref());
    row.put("tp", Kind::U64, layout.map(|l| u64::from(l.tp)));
    row.put("pp", Kind::U64, layout.map(|l| u64::from(l.pp)));
    row.put("dp", Kind::U64, layout.map(|l| u64::from(l.dp)));
    row.put("ep", Kind::U64, layout.map(|l| u64::from(l.ep)));
    let setting = |v: u32| (v > 0).then_some(u64::from(v));
    row.put(
        "max_num_seqs",
        Kind::U64,
        layout.and_then(|l| setting(l.max_num_seqs)),
    );
    row.put(
        "max_model_len",
        Kind::U64,
        layout.and_then(|l| setting(l.max_model_len)),
    );
    row.put(
        "kv_cache_dtype",
        Kind::Str,
        layout.and_then(|l| nonempty(&l.kv_cache_dtype)),
    );
    row.put(
        "gpu_memory_gb",
        Kind::F64,
        gpu.and_then(|g| nonzero(g.memory_gb)),
    );
    row.put("price_per_gpu_hour", Kind::F64, price);
    row.put("framework", Kind::Str, framework.map(|f| f.name.as_str()));
    row.put(
        "framework_image",
        Kind::Str,
        framework.and_then(|f| nonempty(&f.image)),
    );
    row.put("quantization", Kind::Str, quant.map(|q| q.name.as_str()));
    row.put(
        "quantization_bits",
        Kind::F64,
        quant.and_then(|q| nonzero(q.bits)),
    );
    row.put(
        "quantization_args",
        Kind::Str,
        quant.and_then(|q| nonempty(&q.args)),
    );
    row.put(
        "extra_args",
        Kind::Str,
        config.and_then(|c| nonempty(&c.extra_args)),
    );
    let labels = config.map(|c| {
        let mut pairs: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.join(",")
    });
    row.put("labels", Kind::Str, labels.filter(|l| !l.is_empty()));
}

fn workload(step: Option<&pb::StepSpec>, row: &mut RowBuilder) {
    let w = step.and_then(|s| s.workload.as_ref());
    let d = w.and_then(|w| w.dataset.as_ref());
    let slo = w.and_then(|w| w.slo.as_ref());
    let load = step.and_then(|s| s.load.as_ref());
    row.put("workload", Kind::Str, w.map(|w| w.name.as_str()));
    row.put("api", Kind::Str, w.map(|w| w.api.as_str()));
    row.put("dataset_kind", Kind::Str, d.map(|d| d.kind.as_str()));
    row.put("dataset_path", Kind::Str, d.and_then(|d| nonempty(&d.path)));
    row.put(
        "dataset_input_tokens",
        Kind::U64,
        d.map(|d| d.input_tokens).filter(|n| *n > 0),
    );
    row.put(
        "dataset_output_tokens",
        Kind::U64,
        d.map(|d| d.output_tokens).filter(|n| *n > 0),
    );
    row.put(
        "dataset_prefixes",
        Kind::U64,
        d.map(|d| d.prefixes).filter(|n| *n > 0),
    );
    row.put(
        "dataset_prefix_tokens",
        Kind::U64,
        d.map(|d| d.prefix_tokens).filter(|n| *n > 0),
    );
    row.put(
        "dataset_suffix_tokens",
        Kind::U64,
        d.map(|d| d.suffix_tokens).filter(|n| *n > 0),
    );
    row.put(
        "dataset_distribution",
        Kind::Str,
        d.and_then(|d| nonempty(&d.distribution)),
    );
    row.put(
        "dataset_zipf_exponent",
        Kind::F64,
        d.and_then(|d| nonzero(d.zipf_exponent)),
    );
    row.put(
        "dataset_block_tokens",
        Kind::U64,
        d.map(|d| d.block_tokens).filter(|n| *n > 0),
    );
    row.put(
        "requests",
        Kind::U64,
        w.map(|w| w.requests).filter(|n| *n > 0),
    );
    row.put(
        "duration_limit_ms",
        Kind::U64,
        w.map(|w| w.duration_ms).filter(|n| *n > 0),
    );
    row.put("warmup", Kind::U64, w.map(|w| w.warmup));
    row.put(
        "slo_ttft_ms",
        Kind::F64,
        slo.and_then(|s| nonzero(s.ttft_ms)),
    );
    row.put(
        "slo_tpot_ms",
        Kind::F64,
        slo.and_then(|s| nonzero(s.tpot_ms)),
    );
    row.put(
        "slo_e2el_ms",
        Kind::F64,
        slo.and_then(|s| nonzero(s.e2el_ms)),
    );
    row.put("load", Kind::Str, load_label(load));
    let (concurrency, rate, time_scale) = match load.and_then(|l| l.kind.as_ref()) {
        Some(&pb::load_point::Kind::Concurrency(c)) => (Some(c), None, None),
        Some(&pb::load_point::Kind::Rate(r)) => (None, Some(r), None),
        Some(&pb::load_point::Kind::TimeScale(x)) => (None, None, Some(x)),
        Some(pb::load_point::Kind::Search(_)) | None => (None, None, None),
    };
    row.put("concurrency", Kind::U64, concurrency);
    row.put("rate_rps", Kind::F64, rate);
    row.put("time_scale", Kind::F64, time_scale);
    row.put(
        "arrival",
        Kind::Str,
        load.and_then(|l| nonempty(&l.arrival)),
    );
    row.put(
        "burstiness",
        Kind::F64,
        load.and_then(|l| nonzero(l.burstiness)),
    );
    row.put("repeat", Kind::U64, step.map(|s| s.repeat));
}

fn run(input: StepInput<'_>, row: &mut RowBuilder) {
    let (r, d, env) = (input.result, input.document, input.environment);
    row.put("simulated", Kind::Bool, d.simulated);
    row.put("served_model", Kind::Str, d.served_model.as_str());
    row.put("agent_id", Kind::Str, r.agent_id.as_str());
    row.put("attempt", Kind::U64, r.attempt);
    row.put("started_at_ms", Kind::I64, d.started_at_ms);
    row.put("finished_at_ms", Kind::I64, r.finished_at_ms);
    row.put(
        "tokenization",
        Kind::Str,
        d.tokenization.as_ref().and_then(wire_name),
    );
    row.put("connections_opened", Kind::U64, d.connections_opened);
    row.put("host", Kind::Str, env.map(|e| e.host.as_str()));
    row.put(
        "agent_version",
        Kind::Str,
        env.map(|e| e.agent_version.as_str()),
    );
    row.put("gpu_source", Kind::Str, env.map(|e| e.gpu_source.as_str()));
    row.put(
        "gpu_names",
        Kind::Str,
        env.map(|e| {
            e.gpus
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty()),
    );
    row.put(
        "driver_version",
        Kind::Str,
        env.and_then(|e| e.driver_version.as_deref()),
    );
    row.put(
        "cuda_version",
        Kind::Str,
        env.and_then(|e| e.cuda_version.as_deref()),
    );
    row.put(
        "framework_version",
        Kind::Str,
        env.and_then(|e| e.framework_version.as_deref()),
    );
    row.put(
        "launch_command",
        Kind::Str,
        env.map(|e| e.launch_command.as_str()),
    );
    row.put(
        "image_id",
        Kind::Str,
        env.and_then(|e| e.image_id.as_deref()),
    );
    row.put(
        "image_digest",
        Kind::Str,
        env.and_then(|e| e.image_digest.as_deref()),
    );
    row.put(
        "container_runtime",
        Kind::Str,
        env.and_then(|e| e.container_runtime.as_deref()),
    );
}

/// Reads one latency summary of a step.
type LatencyOf = fn(&StepMetrics) -> Option<Summary>;

/// The latency summaries, in the order of [`LATENCY_COLUMNS`].
const LATENCIES: [LatencyOf; 5] = [
    |m| m.ttft_ms,
    |m| m.tpot_ms,
    |m| m.itl_ms,
    |m| m.e2el_ms,
    |m| m.ttfa_ms,
];

/// Column names of the latency statistics, `{metric}_{stat}_ms`; fixed strings so the
/// schema is `'static`.
const LATENCY_COLUMNS: [[&str; 6]; 5] = [
    [
        "ttft_mean_ms",
        "ttft_p50_ms",
        "ttft_p90_ms",
        "ttft_p95_ms",
        "ttft_p99_ms",
        "ttft_max_ms",
    ],
    [
        "tpot_mean_ms",
        "tpot_p50_ms",
        "tpot_p90_ms",
        "tpot_p95_ms",
        "tpot_p99_ms",
        "tpot_max_ms",
    ],
    [
        "itl_mean_ms",
        "itl_p50_ms",
        "itl_p90_ms",
        "itl_p95_ms",
        "itl_p99_ms",
        "itl_max_ms",
    ],
    [
        "e2el_mean_ms",
        "e2el_p50_ms",
        "e2el_p90_ms",
        "e2el_p95_ms",
        "e2el_p99_ms",
        "e2el_max_ms",
    ],
    [
        "ttfa_mean_ms",
        "ttfa_p50_ms",
        "ttfa_p90_ms",
        "ttfa_p95_ms",
        "ttfa_p99_ms",
        "ttfa_max_ms",
    ],
];

fn metrics(m: Option<&StepMetrics>, row: &mut RowBuilder) {
    row.put("completed", Kind::U64, m.map(|m| m.completed));
    row.put("failed", Kind::U64, m.map(|m| m.failed));
    row.put(
        "errors",
        Kind::Str,
        m.map(|m| {
            m.errors
                .iter()
                .map(|(kind, n)| format!("{}={n}", kind.as_str()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty()),
    );
    row.put("duration_s", Kind::F64, m.map(|m| m.duration_s));
    row.put(
        "request_throughput_rps",
        Kind::F64,
        m.map(|m| m.request_throughput),
    );
    row.put(
        "output_token_throughput_tok_s",
        Kind::F64,
        m.map(|m| m.output_token_throughput),
    );
    row.put(
        "total_token_throughput_tok_s",
        Kind::F64,
        m.map(|m| m.total_token_throughput),
    );
    row.put("goodput_rps", Kind::F64, m.and_then(|m| m.goodput));
    row.put(
        "interactivity_tok_s",
        Kind::F64,
        m.and_then(|m| m.interactivity_tok_s),
    );
    row.put(
        "total_input_tokens",
        Kind::U64,
        m.map(|m| m.total_input_tokens),
    );
    row.put(
        "total_output_tokens",
        Kind::U64,
        m.map(|m| m.total_output_tokens),
    );
    row.put(
        "reasoning_tokens",
        Kind::U64,
        m.and_then(|m| m.reasoning_tokens),
    );
    row.put("answer_tokens", Kind::U64, m.and_then(|m| m.answer_tokens));
    row.put(
        "output_tokens_from_usage",
        Kind::U64,
        m.map(|m| m.output_tokens_from_usage),
    );
    row.put(
        "output_tokens_counted",
        Kind::U64,
        m.map(|m| m.output_tokens_counted),
    );
    row.put("warmup_excluded", Kind::U64, m.map(|m| m.warmup_excluded));
    let turns = m.and_then(|m| m.turns.as_ref());
    row.put("conversations", Kind::U64, turns.map(|t| t.conversations));
    row.put("mean_turns", Kind::F64, turns.map(|t| t.mean_turns));
    let first = turns.map(|t| &t.first);
    let later = turns.and_then(|t| t.later.as_ref());
    row.put(
        "first_turn_ttft_p50_ms",
        Kind::F64,
        first.and_then(|f| f.ttft_ms).map(|s| s.p50),
    );
    row.put(
        "later_turns_ttft_p50_ms",
        Kind::F64,
        later.and_then(|f| f.ttft_ms).map(|s| s.p50),
    );
    row.put(
        "first_turn_itl_p50_ms",
        Kind::F64,
        first.and_then(|f| f.itl_ms).map(|s| s.p50),
    );
    row.put(
        "later_turns_itl_p50_ms",
        Kind::F64,
        later.and_then(|f| f.itl_ms).map(|s| s.p50),
    );
    let lag = m.and_then(|m| m.client_lag_ms);
    row.put("client_lag_p50_ms", Kind::F64, lag.map(|l| l.p50));
    row.put("client_lag_p99_ms", Kind::F64, lag.map(|l| l.p99));
    row.put("client_lag_max_ms", Kind::F64, lag.map(|l| l.max));
    row.put(
        "client_fell_behind",
        Kind::Bool,
        m.map(|m| m.client_fell_behind),
    );
    for (get, names) in LATENCIES.iter().zip(LATENCY_COLUMNS) {
        let s = m.and_then(get);
        let stats = [
            s.map(|s| s.mean),
            s.map(|s| s.p50),
            s.map(|s| s.p90),
            s.map(|s| s.p95),
            s.map(|s| s.p99),
            s.map(|s| s.max),
        ];
        for (name, value) in names.into_iter().zip(stats) {
            row.put(name, Kind::F64, value);
        }
    }
}

fn derived(input: StepInput<'_>, row: &mut RowBuilder) {
    let gpus = input
        .result
        .unit
        .as_ref()
        .and_then(|u| u.gpu.as_ref())
        .map_or(1, |g| g.count.max(1));
    let tput = input
        .document
        .metrics
        .as_ref()
        .map(|m| m.output_token_throughput);
    row.put(
        "output_tok_s_per_gpu",
        Kind::F64,
        tput.map(|t| per_gpu(t, gpus)),
    );
    row.put(
        "cost_per_million_output_tokens",
        Kind::F64,
        tput.zip(input.price_per_gpu_hour)
            .and_then(|(t, p)| cost_per_million_tokens(p, gpus, t)),
    );
}

fn telemetry(d: &StepDocument, row: &mut RowBuilder) {
    let t: Option<&TelemetrySummary> = d.telemetry.as_ref();
    let host = t.and_then(|t| t.host.as_ref());
    row.put("telemetry_source", Kind::Str, t.map(|t| t.source.as_str()));
    row.put("telemetry_rate_hz", Kind::F64, t.map(|t| t.rate_hz));
    row.put("telemetry_gpu_count", Kind::U64, t.map(|t| t.gpu_count));
    row.put("energy_j", Kind::F64, t.and_then(|t| t.energy_j));
    row.put(
        "energy_method",
        Kind::Str,
        t.and_then(|t| t.energy_method.as_ref()).and_then(wire_name),
    );
    row.put("mean_power_w", Kind::F64, t.and_then(|t| t.mean_power_w));
    row.put("max_power_w", Kind::F64, t.and_then(|t| t.max_power_w));
    row.put(
        "mean_sm_util_pct",
        Kind::F64,
        t.and_then(|t| t.mean_sm_util_pct),
    );
    row.put(
        "peak_mem_used_mib",
        Kind::U64,
        t.and_then(|t| t.peak_mem_used_mib),
    );
    row.put(
        "max_temperature_c",
        Kind::U64,
        t.and_then(|t| t.max_temperature_c),
    );
    row.put("throttled", Kind::Bool, t.and_then(|t| t.throttled));
    row.put(
        "throttle_reasons",
        Kind::Str,
        t.and_then(|t| t.throttle_reasons_seen.as_ref())
            .map(|r| r.join(","))
            .filter(|s| !s.is_empty()),
    );
    row.put("power_valid", Kind::Bool, t.and_then(|t| t.power_valid));
    row.put(
        "joules_per_output_token",
        Kind::F64,
        t.and_then(|t| t.joules_per_output_token),
    );
    row.put(
        "output_tok_s_per_kw",
        Kind::F64,
        t.and_then(|t| t.output_tok_s_per_kw),
    );
    row.put(
        "host_mean_cpu_pct",
        Kind::F64,
        host.and_then(|h| h.mean_cpu_pct),
    );
    row.put(
        "host_max_cpu_pct",
        Kind::F64,
        host.and_then(|h| h.max_cpu_pct),
    );
    row.put(
        "host_peak_mem_used_mib",
        Kind::U64,
        host.and_then(|h| h.peak_mem_used_mib),
    );
    row.put(
        "host_max_load_1m",
        Kind::F64,
        host.and_then(|h| h.max_load_1m),
    );
    // Nested figures as JSON text: per-GPU summaries, the server's own metrics, and the
    // values a harness workload reported.
    row.put(
        "gpus_json",
        Kind::Str,
        t.filter(|t| !t.gpus.is_empty())
            .and_then(|t| serde_json::to_string(&t.gpus).ok()),
    );
    row.put(
        "server_metrics_json",
        Kind::Str,
        t.and_then(|t| t.server.as_ref())
            .and_then(|s| serde_json::to_string(s).ok()),
    );
    row.put(
        "harness_metrics_json",
        Kind::Str,
        (!d.harness_metrics.is_empty())
            .then(|| serde_json::to_string(&d.harness_metrics).ok())
            .flatten(),
    );
}

/// What the workload did: prompt length misses and the prefix cache (schema 1.3).
fn workload_facts(w: Option<&WorkloadFacts>, row: &mut RowBuilder) {
    let cache = w.and_then(|w| w.prefix_cache.as_ref());
    row.put(
        "prompt_texts",
        Kind::U64,
        w.and_then(|w| w.lengths).map(|l| l.texts),
    );
    row.put(
        "prompt_length_misses",
        Kind::U64,
        w.and_then(|w| w.lengths).map(|l| l.missed),
    );
    row.put(
        "prefix_cache_policy",
        Kind::Str,
        cache.map(|c| c.policy.as_str()),
    );
    row.put(
        "prefix_cache_reset_by",
        Kind::Str,
        cache.and_then(|c| c.reset_by.as_deref()),
    );
    row.put("prefix_cache_salted", Kind::Bool, cache.map(|c| c.salted));
    row.put(
        "expected_prefix_hit_rate",
        Kind::F64,
        cache.and_then(|c| c.expected_hit_rate),
    );
    row.put(
        "server_prefix_hit_rate",
        Kind::F64,
        cache.and_then(|c| c.server_hit_rate),
    );
}

/// The step columns, from a row built of an empty result.
pub fn columns() -> Vec<super::Column> {
    let result = pb::StepResult::default();
    let document = empty_document();
    let mut row = RowBuilder::default();
    build(
        StepInput {
            campaign_name: "",
            result: &result,
            document: &document,
            environment: None,
            price_per_gpu_hour: None,
        },
        &mut row,
    );
    row.columns().to_vec()
}

fn empty_document() -> StepDocument {
    StepDocument {
        schema: 0,
        schema_minor: 0,
        simulated: false,
        step_label: String::new(),
        metrics: None,
        harness_metrics: Default::default(),
        scores: Vec::new(),
        tokenization: None,
        connections_opened: 0,
        served_model: String::new(),
        started_at_ms: 0,
        finished_at_ms: 0,
        telemetry: None,
        workload: None,
        probe: None,
        search: None,
    }
}

/// A capacity search's probe run, or its verdict (schema 1.5; docs/capacity.md): both
/// rows carry `search_step`, so a search's probes group under it.
fn capacity_search(input: StepInput<'_>, row: &mut RowBuilder) {
    let probe = input.document.probe.as_ref();
    let search = input.document.search.as_ref();
    let judgment = probe.map(|p| &p.run.judgment);
    let verdict = search.map(|s| &s.verdict);
    let search_step = probe
        .map(|p| p.search_step.as_str())
        .or_else(|| search.map(|_| input.result.step_id.as_str()));
    row.put("search_step", Kind::Str, search_step);
    row.put("probe_run", Kind::U64, probe.map(|p| p.run.run));
    // Snake case like the other enum columns: `server_failed`.
    row.put(
        "probe_outcome",
        Kind::Str,
        judgment.map(|j| j.outcome.word().replace(' ', "_")),
    );
    row.put(
        "probe_score",
        Kind::F64,
        judgment.and_then(|j| j.outcome.score()),
    );
    row.put("probe_sent_rps", Kind::F64, judgment.map(|j| j.sent_rps));
    row.put(
        "probe_completed_rps",
        Kind::F64,
        judgment.map(|j| j.completed_rps),
    );
    row.put(
        "probe_reason",
        Kind::Str,
        judgment.and_then(|j| j.reason.as_deref()),
    );
    row.put(
        "search_goal",
        Kind::Str,
        search.map(|s| crate::analysis::capacity::describe_goal(&s.goal)),
    );
    row.put(
        "search_capacity",
        Kind::F64,
        verdict.and_then(|v| v.capacity),
    );
    row.put(
        "search_first_failing",
        Kind::F64,
        verdict.and_then(|v| v.first_failing),
    );
    row.put("search_probes", Kind::U64, verdict.map(|v| v.probes));
    row.put("search_runs", Kind::U64, verdict.map(|v| v.runs));
    row.put(
        "search_stopped",
        Kind::Str,
        verdict.and_then(|v| wire_name(&v.stopped)),
    );
}

#[cfg(test)]
mod tests {
    use super::super::Value;
    use super::*;

    fn full_document() -> StepDocument {
        let summary = Summary {
            mean: 1.0,
            p50: 2.0,
            p90: 3.0,
            p95: 4.0,
            p99: 5.0,
            max: 6.0,
        };
        let mut metrics = crate::analysis::fixtures::no_metrics();
        metrics.ttft_ms = Some(summary);
        metrics.tpot_ms = Some(summary);
        metrics.output_token_throughput = 400.0;
        StepDocument {
            metrics: Some(metrics),
            telemetry: Some(TelemetrySummary {
                source: "nvml".into(),
                energy_j: Some(10.0),
                ..Default::default()
            }),
            step_label: "chat @ c=1 #0".into(),
            ..empty_document()
        }
    }

    #[test]
    fn every_row_has_the_schema_columns_with_their_types() {
        let columns = columns();
        let mut names: Vec<&str> = columns.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), columns.len(), "duplicate column names");

        let result = pb::StepResult {
            unit: Some(pb::UnitConfig {
                gpu: Some(pb::GpuRequirement {
                    gpu_type: "H100-80GB".into(),
                    count: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let document = full_document();
        let mut row = RowBuilder::default();
        build(
            StepInput {
                campaign_name: "c",
                result: &result,
                document: &document,
                environment: None,
                price_per_gpu_hour: Some(2.0),
            },
            &mut row,
        );
        assert_eq!(row.columns(), columns.as_slice());
        for (column, value) in row.columns().iter().zip(row.values()) {
            let fits = matches!(
                (column.kind, value),
                (_, Value::Null)
                    | (Kind::Str, Value::Str(_))
                    | (Kind::F64, Value::F64(_))
                    | (Kind::U64, Value::U64(_))
                    | (Kind::I64, Value::I64(_))
                    | (Kind::Bool, Value::Bool(_))
            );
            assert!(fits, "column {} holds {value:?}", column.name);
        }
        let cell = |name: &str| {
            let i = columns.iter().position(|c| c.name == name).unwrap();
            row.values()[i].clone()
        };
        assert_eq!(cell("ttft_p90_ms"), Value::F64(3.0));
        assert_eq!(cell("output_tok_s_per_gpu"), Value::F64(200.0));
        // 2 GPUs at 2/h = 4/h for 400 tok/s * 3600 s = 1.44 M tokens: 2.777…/M.
        let Value::F64(cost) = cell("cost_per_million_output_tokens") else {
            panic!("no cost")
        };
        assert!((cost - 4.0 / 1.44).abs() < 1e-9, "{cost}");
        assert_eq!(cell("energy_j"), Value::F64(10.0));
        assert_eq!(cell("ttfa_p50_ms"), Value::Null);
    }

    /// The cells of `document`'s row, by column name.
    fn cells(document: &StepDocument, step_id: &str) -> Vec<(&'static str, Value)> {
        let result = pb::StepResult {
            step_id: step_id.into(),
            ..Default::default()
        };
        let mut row = RowBuilder::default();
        build(
            StepInput {
                campaign_name: "c",
                result: &result,
                document,
                environment: None,
                price_per_gpu_hour: None,
            },
            &mut row,
        );
        row.columns()
            .iter()
            .map(|c| c.name)
            .zip(row.values().iter().cloned())
            .collect()
    }

    fn cell(cells: &[(&str, Value)], name: &str) -> Value {
        cells.iter().find(|(n, _)| *n == name).unwrap().1.clone()
    }

    #[test]
    fn probe_and_search_rows_carry_their_facts_under_the_search_step() {
        use evalctl_results::document::{ProbeFacts, SearchFacts};
        use evalctl_results::probe::{Goal, ProbeJudgment};
        use evalctl_results::search::{
            ProbeOutcome, SearchAxis, SearchSpec, SearchVerdict, StopReason,
        };
        use evalctl_results::settle::ProbeRun;
        let probe = StepDocument {
            probe: Some(ProbeFacts {
                search_step: "s".into(),
                axis: SearchAxis::Rate,
                run: ProbeRun {
                    load: 40.5,
                    run: 1,
                    judgment: ProbeJudgment {
                        outcome: ProbeOutcome::Fail { score: Some(1.3) },
                        window_ns: (0, 1),
                        requests: 80,
                        sent_rps: 40.4,
                        completed_rps: 38.0,
                        reason: Some("p90 ttft 78 ms > 60 ms".into()),
                        tallies: Vec::new(),
                    },
                },
            }),
            ..full_document()
        };
        let row = cells(&probe, "s~rate=40.5#1");
        assert_eq!(cell(&row, "search_step"), Value::Str("s".into()));
        assert_eq!(cell(&row, "probe_run"), Value::U64(1));
        assert_eq!(cell(&row, "probe_outcome"), Value::Str("fail".into()));
        assert_eq!(cell(&row, "probe_score"), Value::F64(1.3));
        assert_eq!(cell(&row, "probe_completed_rps"), Value::F64(38.0));
        assert_eq!(cell(&row, "search_capacity"), Value::Null);

        let search = StepDocument {
            search: Some(SearchFacts {
                spec: SearchSpec {
                    axis: SearchAxis::Rate,
                    min: 1.0,
                    max: 100.0,
                    max_probes: 8,
                    precision: 0.05,
                    max_repeats: 2,
                },
                goal: Goal::Percentile {
                    percentile: 90.0,
                    limits: evalctl_results::Slo {
                        ttft_ms: Some(60.0),
                        tpot_ms: None,
                        e2el_ms: None,
                    },
                },
                verdict: SearchVerdict {
                    capacity: Some(39.0),
                    first_failing: Some(40.5),
                    probes: 7,
                    runs: 8,
                    stopped: StopReason::PrecisionReached,
                },
                probes: Vec::new(),
                runs: Vec::new(),
            }),
            metrics: None,
            ..empty_document()
        };
        let row = cells(&search, "s");
        assert_eq!(cell(&row, "search_step"), Value::Str("s".into()));
        assert_eq!(
            cell(&row, "search_goal"),
            Value::Str("p90 ttft ≤ 60 ms".into())
        );
        assert_eq!(cell(&row, "search_capacity"), Value::F64(39.0));
        assert_eq!(cell(&row, "search_first_failing"), Value::F64(40.5));
        assert_eq!(cell(&row, "search_runs"), Value::U64(8));
        assert_eq!(
            cell(&row, "search_stopped"),
            Value::Str("precision_reached".into())
        );
        assert_eq!(cell(&row, "probe_outcome"), Value::Null);
        // An ordinary step belongs to no search.
        assert_eq!(
            cell(&cells(&full_document(), "x"), "search_step"),
            Value::Null
        );
    }

    #[test]
    fn load_labels() {
        let point = |kind| pb::LoadPoint {
            kind: Some(kind),
            ..Default::default()
        };
        assert_eq!(
            load_label(Some(&point(pb::load_point::Kind::Concurrency(8)))),
            "c=8"
        );
        assert_eq!(
            load_label(Some(&point(pb::load_point::Kind::Rate(f64::INFINITY)))),
            "rate=inf"
        );
        assert_eq!(
            load_label(Some(&point(pb::load_point::Kind::Rate(2.5)))),
            "rate=2.5"
        );
    }
}
