//! `evalctl bench`: the load generator standalone against any OpenAI-compatible server,
//! with a live progress bar and a summary table. No coordinator is involved.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use evalctl_loadgen::dataset::{self, LengthFilter};
use evalctl_loadgen::{
    Api, Arrival, DatasetPlan, DatasetSource, Load, Phase, Progress, Slo, StepMetrics, StepPlan,
    Stop, Summary, run_step,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::render;

/// `evalctl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub url: String,
    /// Model name sent in every request.
    #[arg(long)]
    pub model: String,
    /// Endpoint flavour.
    #[arg(long, value_enum, default_value_t = ApiArg::Chat)]
    pub api: ApiArg,
    /// Requests kept in flight; a list ("1,8,64") runs a sweep, one step per value
    /// [default: 1].
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    pub concurrency: Vec<u32>,
    /// Requests per second ("inf" sends everything at once); a list ("2,8,inf") runs a sweep.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Arrival process in rate mode.
    #[arg(long, value_enum, default_value_t = ArrivalArg::Poisson)]
    pub arrival: ArrivalArg,
    /// Gamma shape for `--arrival gamma` (1.0 = Poisson, below 1 burstier).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Measured requests (default 100 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Measure for this long, e.g. "60s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests sent first and left out of the metrics.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Prompt length in tokens for random prompts.
    #[arg(long, default_value_t = 128)]
    pub input_tokens: u32,
    /// Output tokens asked for (`max_tokens`); for file datasets, overrides their lengths.
    #[arg(long)]
    pub output_tokens: Option<u32>,
    /// Prompts from a file: ShareGPT JSON (`.json`) or JSON Lines (`.jsonl`).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// A tokenizer.json to count prompt tokens when the server has no /tokenize.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Objectives for goodput, e.g. "ttft_ms=500,tpot_ms=50,e2el_ms=10000".
    #[arg(long, value_parser = parse_slo)]
    pub slo: Option<Slo>,
    /// Seed for prompts and arrivals, so a run can be repeated.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per-request timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub request_timeout: Duration,
    /// Longest silence allowed inside one stream.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub stall_timeout: Duration,
    /// Bearer token for servers that need one.
    #[arg(long, env = "EVALCTL_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Also write the result document (with per-request records) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Endpoint flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiArg {
    /// /v1/chat/completions
    Chat,
    /// /v1/completions
    Completions,
}

/// Arrival processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArrivalArg {
    /// Exponential gaps.
    Poisson,
    /// Gamma gaps with --burstiness as shape.
    Gamma,
    /// Equal gaps.
    Constant,
}

/// Parses `ttft_ms=500,tpot_ms=50` into objectives.
fn parse_slo(text: &str) -> Result<Slo, String> {
    let mut slo = Slo::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=MS, got `{part}`"))?;
        let ms: f64 = value
            .trim()
            .trim_end_matches("ms")
            .parse()
            .map_err(|_| format!("`{value}` is not a number of milliseconds"))?;
        match key.trim() {
            "ttft_ms" | "ttft" => slo.ttft_ms = Some(ms),
            "tpot_ms" | "tpot" => slo.tpot_ms = Some(ms),
            "e2el_ms" | "e2el" => slo.e2el_ms = Some(ms),
            other => {
                return Err(format!(
                    "unknown objective `{other}`; expected ttft_ms, tpot_ms or e2el_ms"
                ));
            }
        }
    }
    Ok(slo)
}

impl BenchArgs {
    /// The load points to run, in order: the rates, else the concurrencies, else c=1.
    fn loads(&self) -> Vec<Load> {
        let arrival = match self.arrival {
            ArrivalArg::Poisson => Arrival::Poisson,
            ArrivalArg::Gamma => Arrival::Gamma {
                burstiness: self.burstiness,
            },
            ArrivalArg::Constant => Arrival::Constant,
        };
        if !self.rate.is_empty() {
            self.rate
                .iter()
                .map(|&rps| Load::Rate {
                    rps,
                    arrival,
                    max_in_flight: None,
                })
                .collect()
        } else if !self.concurrency.is_empty() {
            self.concurrency
                .iter()
                .map(|&n| Load::Concurrency(n))
                .collect()
        } else {
            vec![Load::Concurrency(1)]
        }
    }

    fn stop(&self) -> Stop {
        match (self.requests, self.duration) {
            (_, Some(d)) => Stop::Duration(d),
            (Some(n), None) => Stop::Requests(n),
            (None, None) => Stop::Requests(100),
        }
    }

    fn source(&self) -> DatasetSource {
        match &self.dataset {
            Some(path) if path.extension().is_some_and(|e| e == "jsonl") => DatasetSource::Jsonl {
                path: path.clone(),
                output_tokens: self.output_tokens,
            },
            Some(path) => DatasetSource::Sharegpt {
                path: path.clone(),
                output_tokens: self.output_tokens,
            },
            None => DatasetSource::Random {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens.unwrap_or(128),
            },
        }
    }

    /// Prompts to prepare: enough that requests rarely repeat one.
    fn prompt_count(&self) -> usize {
        let measured = match self.stop() {
            Stop::Requests(n) => n,
            Stop::Duration(_) => 1000,
        };
        (measured + self.warmup).clamp(1, 10_000) as usize
    }
}

/// Runs `evalctl bench`.
pub async fn run(global: &GlobalArgs, args: &BenchArgs) -> Result<ExitCode, CliError> {
    let api = match args.api {
        ApiArg::Chat => Api::Chat,
        ApiArg::Completions => Api::Completions,
    };
    let dataset = dataset::prepare(&DatasetPlan {
        source: args.source(),
        count: args.prompt_count(),
        seed: args.seed,
        filter: LengthFilter::default(),
        server_url: Some(args.url.clone()),
        model: Some(args.model.clone()),
        tokenizer_json: args.tokenizer.clone(),
    })
    .await
    .map_err(|e| CliError::Bench(Box::new(e)))?;
    let tokenization = dataset.tokenization;
    let loads = args.loads();
    let bar = progress_bar(global.json);
    let mut steps = Vec::with_capacity(loads.len());
    for load in loads {
        let mut plan = StepPlan::new(
            args.url.clone(),
            api,
            args.model.clone(),
            dataset.clone(),
            load,
            args.stop(),
        );
        plan.warmup = args.warmup;
        plan.slo = args.slo.unwrap_or_default();
        plan.seed = args.seed;
        plan.client.request_timeout = args.request_timeout;
        plan.client.stall_timeout = args.stall_timeout;
        plan.client.api_key = args.api_key.clone();
        let config = json!({
            "url": args.url,
            "model": args.model,
            "api": format!("{:?}", args.api).to_lowercase(),
            "load": plan.load,
            "stop": plan.stop,
            "warmup": plan.warmup,
            "dataset": plan_source_json(&args.source()),
            "tokenization": tokenization,
            "slo": plan.slo,
            "seed": plan.seed,
        });
        bar.reset();
        let bar_in = bar.clone();
        let outcome = run_step(plan, move |p| show_progress(&bar_in, &p))
            .await
            .map_err(|e| CliError::Bench(Box::new(e)))?;
        steps.push((load, config, outcome));
    }
    bar.finish_and_clear();

    // One load point: one result document (the shape a step result has); a sweep: a list.
    let documents: Vec<serde_json::Value> = steps
        .iter()
        .map(|(_, config, outcome)| json!({ "config": config, "metrics": outcome.metrics }))
        .collect();
    if let Some(path) = &args.out {
        let full: Vec<serde_json::Value> = steps
            .iter()
            .map(|(_, config, outcome)| {
                json!({ "config": config, "metrics": outcome.metrics, "records": outcome.records })
            })
            .collect();
        let value = if full.len() == 1 {
            &full[0]
        } else {
            &json!(full)
        };
        let text = serde_json::to_string_pretty(value).expect("result document serializes");
        std::fs::write(path, text).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
    }
    if global.json {
        if documents.len() == 1 {
            render::emit_json(&documents[0])?;
        } else {
            render::emit_json(&documents)?;
        }
    } else if let [(_, _, outcome)] = steps.as_slice() {
        render::emit(&summary_table(&outcome.metrics))?;
    } else {
        let sweep: Vec<(Load, &StepMetrics)> = steps
            .iter()
            .map(|(load, _, o)| (*load, &o.metrics))
            .collect();
        render::emit(&sweep_table(&sweep))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn plan_source_json(source: &DatasetSource) -> serde_json::Value {
    serde_json::to_value(source).expect("dataset source serializes")
}

fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("progress template is valid")
            .progress_chars("=> "),
    );
    bar
}

fn show_progress(bar: &ProgressBar, p: &Progress) {
    bar.set_prefix(match p.phase {
        Phase::Warmup => "warmup",
        Phase::Measure => "measure",
        Phase::Done => "done",
    });
    if let Some(target) = p.target {
        bar.set_length(target);
    }
    bar.set_position(p.completed + p.failed);
    bar.set_message(format!("{} in flight, {} failed", p.in_flight(), p.failed));
}

fn summary_table(m: &StepMetrics) -> String {
    let mut latency = render::table(["METRIC (ms)", "MEAN", "P50", "P90", "P95", "P99", "MAX"]);
    let rows: [(&str, &Option<Summary>); 4] = [
        ("TTFT", &m.ttft_ms),
        ("TPOT", &m.tpot_ms),
        ("ITL", &m.itl_ms),
        ("E2EL", &m.e2el_ms),
    ];
    for (name, summary) in rows {
        let cells = match summary {
            Some(s) => [s.mean, s.p50, s.p90, s.p95, s.p99, s.max].map(|v| format!("{v:.2}")),
            None => std::array::from_fn(|_| "-".to_owned()),
        };
        let mut row = vec![name.to_owned()];
        row.extend(cells);
        latency.add_row(row);
    }
    let mut totals = render::table(["SUMMARY", "VALUE"]);
    totals.add_row([
        "completed / failed".into(),
        format!("{} / {}", m.completed, m.failed),
    ]);
    for (kind, count) in &m.errors {
        totals.add_row([format!("  errors: {}", kind.as_str()), count.to_string()]);
    }
    totals.add_row(["duration (s)".into(), format!("{:.2}", m.duration_s)]);
    totals.add_row(["requests/s".into(), format!("{:.2}", m.request_throughput)]);
    totals.add_row([
        "output tokens/s".into(),
        format!("{:.1}", m.output_token_throughput),
    ]);
    totals.add_row([
        "total tokens/s".into(),
        format!("{:.1}", m.total_token_throughput),
    ]);
    if let Some(goodput) = m.goodput {
        totals.add_row(["goodput (req/s)".into(), format!("{goodput:.2}")]);
    }
    format!("{latency}\n\n{totals}\n")
}

/// One row per load point of a sweep.
fn sweep_table(steps: &[(Load, &StepMetrics)]) -> String {
    let mut table = render::table([
        "LOAD",
        "OK",
        "FAILED",
        "REQ/S",
        "OUT TOK/S",
        "TTFT P50",
        "TTFT P99",
        "TPOT P50",
        "TPOT P99",
        "ITL P50",
        "E2EL P50",
        "GOODPUT",
    ]);
    let ms = |s: &Option<Summary>, pick: fn(&Summary) -> f64| {
        s.as_ref()
            .map_or("-".to_owned(), |s| format!("{:.2}", pick(s)))
    };
    for (load, m) in steps {
        let label = match load {
            Load::Concurrency(n) => format!("c={n}"),
            Load::Rate { rps, .. } if rps.is_infinite() => "rate=inf".to_owned(),
            Load::Rate { rps, .. } => format!("rate={rps}"),
            Load::Trace { time_scale } => format!("trace x{time_scale}"),
        };
        table.add_row([
            label,
            m.completed.to_string(),
            m.failed.to_string(),
            format!("{:.2}", m.request_throughput),
            format!("{:.1}", m.output_token_throughput),
            ms(&m.ttft_ms, |s| s.p50),
            ms(&m.ttft_ms, |s| s.p99),
            ms(&m.tpot_ms, |s| s.p50),
            ms(&m.tpot_ms, |s| s.p99),
            ms(&m.itl_ms, |s| s.p50),
            ms(&m.e2el_ms, |s| s.p50),
            m.goodput.map_or("-".to_owned(), |g| format!("{g:.2}")),
        ]);
    }
    format!("latencies in ms\n{table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_flag_parses_every_objective_and_rejects_unknown_ones() {
        let slo = parse_slo("ttft_ms=500, tpot_ms=50ms,e2el=9000").unwrap();
        assert_eq!(slo.ttft_ms, Some(500.0));
        assert_eq!(slo.tpot_ms, Some(50.0));
        assert_eq!(slo.e2el_ms, Some(9000.0));
        assert!(parse_slo("ttfb_ms=1").unwrap_err().contains("ttfb_ms"));
        assert!(parse_slo("ttft_ms").unwrap_err().contains("KEY=MS"));
        assert!(parse_slo("ttft_ms=fast").unwrap_err().contains("fast"));
    }

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn loads(args: &[&str]) -> Vec<Load> {
        let mut argv = vec!["bench", "--url", "http://127.0.0.1:1", "--model", "m"];
        argv.extend_from_slice(args);
        <Wrapper as clap::Parser>::parse_from(argv).bench.loads()
    }

    #[test]
    fn load_lists_become_sweeps_in_order() {
        assert_eq!(loads(&[]), vec![Load::Concurrency(1)]);
        assert_eq!(
            loads(&["--concurrency", "1,8,64"]),
            vec![
                Load::Concurrency(1),
                Load::Concurrency(8),
                Load::Concurrency(64)
            ]
        );
        let rates = loads(&["--rate", "2,inf", "--arrival", "constant"]);
        assert_eq!(rates.len(), 2);
        assert!(
            matches!(rates[0], Load::Rate { rps, arrival: Arrival::Constant, .. } if rps == 2.0)
        );
        assert!(matches!(rates[1], Load::Rate { rps, .. } if rps.is_infinite()));
    }
}
