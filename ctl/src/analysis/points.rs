//! The measured steps of a campaign as points for analysis: one per step with load
//! metrics, keyed by server configuration, workload and load point.

use std::fmt;

use evalctl_proto::v1 as pb;
use evalctl_results::StepDocument;
use evalctl_results::StepMetrics;
use evalctl_results::compare::{Key, Metric, Observation};
use evalctl_results::{TelemetrySummary, WorkloadFacts};
use futures::StreamExt;

use super::cost::Prices;
use crate::client::Client;
use crate::error::CliError;
use crate::export::steps::load_label;

/// A server configuration: what a unit is, less its campaign.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Config {
    /// Model name.
    pub model: String,
    /// GPU type, "cpu" for CPU units.
    pub gpu_type: String,
    /// GPUs of the unit (1 for CPU units).
    pub gpu_count: u32,
    /// Its parallelism layout, `tp4 pp2`; empty for tensor parallelism over all GPUs.
    pub layout: String,
    /// Framework name.
    pub framework: String,
    /// Quantization name.
    pub quantization: String,
}

impl Config {
    /// The configuration of a unit.
    pub fn of(unit: Option<&pb::UnitConfig>) -> Config {
        let name = |s: Option<&String>| s.cloned().unwrap_or_else(|| "?".to_owned());
        let gpu = unit.and_then(|u| u.gpu.clone()).unwrap_or_default();
        Config {
            model: name(unit.and_then(|u| u.model.as_ref()).map(|m| &m.name)),
            gpu_type: if gpu.gpu_type.is_empty() {
                "cpu".to_owned()
            } else {
                gpu.gpu_type
            },
            gpu_count: gpu.count.max(1),
            layout: gpu.layout.map(layout_text).unwrap_or_default(),
            framework: name(unit.and_then(|u| u.framework.as_ref()).map(|f| &f.name)),
            quantization: name(unit.and_then(|u| u.quantization.as_ref()).map(|q| &q.name)),
        }
    }

    /// The server part without the model: "H100-80GB x2 / vllm / fp8", or with a layout
    /// "H100-80GB x8 (tp4 pp2) / vllm / fp8", as the coordinator labels units.
    pub fn server(&self) -> String {
        let layout = if self.layout.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.layout)
        };
        format!(
            "{} x{}{layout} / {} / {}",
            self.gpu_type, self.gpu_count, self.framework, self.quantization
        )
    }
}

/// `tp4 pp2 seqs256 kv-fp8`: the tensor-parallel size, the other sizes above 1 and the
/// engine settings given, as the coordinator labels units.
pub fn layout_text(l: pb::Layout) -> String {
    let mut text = format!("tp{}", l.tp);
    for (name, size) in [("pp", l.pp), ("dp", l.dp), ("ep", l.ep)] {
        if size > 1 {
            text.push_str(&format!(" {name}{size}"));
        }
    }
    for (name, value) in [("seqs", l.max_num_seqs), ("len", l.max_model_len)] {
        if value > 0 {
            text.push_str(&format!(" {name}{value}"));
        }
    }
    if !l.kv_cache_dtype.is_empty() {
        text.push_str(&format!(" kv-{}", l.kv_cache_dtype));
    }
    if !l.speculative_method.is_empty() {
        text.push_str(&format!(
            " spec-{}x{}",
            l.speculative_method, l.speculative_tokens
        ));
    }
    text
}

impl fmt::Display for Config {
    /// "llama-3.1-8b / H100-80GB x2 / vllm / fp8", as `evalctl results` labels units.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} / {}", self.model, self.server())
    }
}

/// One measured step.
#[derive(Debug, Clone)]
pub struct Point {
    /// The unit's configuration.
    pub config: Config,
    /// Unit id.
    pub unit_id: String,
    /// Workload name.
    pub workload: String,
    /// Load point label, "c=8".
    pub load: String,
    /// Concurrency or rate, to order load points (rate `inf` sorts last).
    pub load_value: f64,
    /// Repeat number.
    pub repeat: u32,
    /// Measured by evalctl's simulator.
    pub simulated: bool,
    /// Load generator metrics.
    pub metrics: StepMetrics,
    /// Telemetry, when sampled.
    pub telemetry: Option<TelemetrySummary>,
    /// What the workload did (prefix cache, prompt lengths), in documents of schema 1.3+.
    pub workload_facts: Option<WorkloadFacts>,
    /// Price of one GPU-hour, when known.
    pub price_per_gpu_hour: Option<f64>,
}

impl Point {
    /// The step as a comparison sees it: its configuration, workload and load point, and
    /// its figures.
    pub fn observation(&self) -> Observation<'_> {
        Observation {
            key: Key {
                config: self.config.to_string(),
                workload: self.workload.clone(),
                load: self.load.clone(),
            },
            metrics: &self.metrics,
            joules_per_output_token: self.joules_per_output_token(),
        }
    }

    /// The value of `metric` at this step; `None` when the step has no such figure.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        metric.value(&self.metrics, self.joules_per_output_token())
    }

    fn joules_per_output_token(&self) -> Option<f64> {
        self.telemetry
            .as_ref()
            .and_then(|t| t.joules_per_output_token)
    }

    /// Output tokens/s per GPU of the unit.
    pub fn output_per_gpu(&self) -> f64 {
        crate::export::steps::per_gpu(self.metrics.output_token_throughput, self.config.gpu_count)
    }

    /// Cost of a million output tokens, when priced.
    pub fn cost_per_million(&self) -> Option<f64> {
        self.price_per_gpu_hour.and_then(|p| {
            crate::export::steps::cost_per_million_tokens(
                p,
                self.config.gpu_count,
                self.metrics.output_token_throughput,
            )
        })
    }

    /// Output tokens per joule of GPU energy, when measured.
    pub fn tokens_per_joule(&self) -> Option<f64> {
        self.telemetry
            .as_ref()
            .and_then(|t| t.joules_per_output_token)
            .filter(|j| *j > 0.0)
            .map(|j| 1.0 / j)
    }
}

/// Reads every step of `campaign` that has load metrics (harness steps have none), in
/// unit and step order, pricing them with `prices`.
pub async fn fetch(
    client: &mut Client,
    campaign: &str,
    prices: &Prices,
) -> Result<Vec<Point>, CliError> {
    Ok(fetch_measured(client, campaign, prices).await?.points)
}

/// What a campaign measured: its load steps, capacity searches and accuracy scores.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Steps with load metrics.
    pub points: Vec<Point>,
    /// Capacity search verdicts.
    pub searches: Vec<super::capacity::Search>,
    /// Scores of harness steps.
    pub scores: Vec<super::accuracy::Scored>,
    /// Every cold start of the campaign's servers, once each.
    pub starts: Vec<ColdStart>,
}

/// One server start a unit paid for (not a warm server reused from an earlier unit).
#[derive(Debug, Clone, PartialEq)]
pub struct ColdStart {
    /// The unit's configuration.
    pub config: Config,
    /// The agent that started it.
    pub agent_id: String,
    /// Its phases.
    pub start: evalctl_results::ServerStart,
}

/// [`fetch`], with the campaign's capacity search verdicts and accuracy scores from the
/// same stream.
pub async fn fetch_measured(
    client: &mut Client,
    campaign: &str,
    prices: &Prices,
) -> Result<Measured, CliError> {
    let mut stream = client
        .results(pb::ResultsRequest {
            campaign: campaign.to_owned(),
            include_records: false,
        })
        .await
        .map_err(CliError::rpc("results"))?
        .into_inner();
    let mut measured = Measured::default();
    while let Some(result) = stream.next().await {
        let result = result.map_err(CliError::rpc("results"))?;
        let mut document = document(&result)?;
        measured
            .scores
            .extend(super::accuracy::of_result(&result, &document));
        if let Some(start) = cold_start(&result)
            && !measured.starts.contains(&start)
        {
            measured.starts.push(start);
        }
        if let Some(search) = document.search.take() {
            let search = super::capacity::search(&result, &document, search, prices);
            measured.searches.push(search);
        } else if let Some(point) = point(&result, document, prices) {
            measured.points.push(point);
        }
    }
    Ok(measured)
}

/// The server start a result's step ran after, when its unit paid for one (every step of
/// the unit carries the same start; the caller keeps one).
fn cold_start(result: &pb::StepResult) -> Option<ColdStart> {
    let environment: evalctl_results::Environment =
        serde_json::from_str(&result.environment_json).ok()?;
    let start = environment.server_start.filter(|s| !s.reused)?;
    Some(ColdStart {
        config: Config::of(result.unit.as_ref()),
        agent_id: environment.agent_id,
        start,
    })
}

/// The step document of a stored result.
pub fn document(result: &pb::StepResult) -> Result<StepDocument, CliError> {
    serde_json::from_str(&result.result_json).map_err(|source| CliError::BadResult {
        step_id: result.step_id.clone(),
        source,
    })
}

/// The price of one GPU-hour of a result's unit: from `prices`, else the matrix's.
pub fn unit_price(result: &pb::StepResult, prices: &Prices) -> Option<f64> {
    let gpu = result
        .unit
        .as_ref()
        .and_then(|u| u.gpu.clone())
        .unwrap_or_default();
    prices.per_gpu_hour(&gpu.gpu_type, gpu.price_per_hour)
}

/// The workload name of a result's step.
pub fn workload_name(result: &pb::StepResult) -> String {
    result
        .step
        .as_ref()
        .and_then(|s| s.workload.as_ref())
        .map(|w| w.name.clone())
        .unwrap_or_default()
}

/// The point of one stored result with its `document`, `None` for a step without load
/// metrics.
fn point(result: &pb::StepResult, document: StepDocument, prices: &Prices) -> Option<Point> {
    let metrics = document.metrics?;
    let step = result.step.as_ref();
    let load = step.and_then(|s| s.load.as_ref());
    let load_value = match load.and_then(|l| l.kind.as_ref()) {
        Some(&pb::load_point::Kind::Concurrency(c)) => f64::from(c),
        Some(&pb::load_point::Kind::Rate(r)) => r,
        Some(&pb::load_point::Kind::TimeScale(x)) => x,
        Some(pb::load_point::Kind::Search(_)) | None => 0.0,
    };
    Some(Point {
        config: Config::of(result.unit.as_ref()),
        unit_id: result.unit_id.clone(),
        workload: workload_name(result),
        load: load_label(load),
        load_value,
        repeat: step.map_or(0, |s| s.repeat),
        simulated: document.simulated,
        metrics,
        telemetry: document.telemetry,
        workload_facts: document.workload,
        price_per_gpu_hour: unit_price(result, prices),
    })
}
