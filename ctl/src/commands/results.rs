//! `evalctl results CAMPAIGN`: the stored step results, one row per step, with the latency
//! percentiles and throughputs of docs/metrics.md; `--json` for scripts.

use std::process::ExitCode;

use evalctl_proto::v1 as pb;
use evalctl_results::TelemetrySummary;
use evalctl_results::{Environment, StepDocument};
use evalctl_results::{StepMetrics, Summary};
use futures::StreamExt;
use serde::Serialize;

use crate::analysis::accuracy::value_text;
use crate::analysis::capacity;
use crate::cli::{GlobalArgs, ResultsArgs};
use crate::client::{self, Client};
use crate::error::CliError;
use crate::render;

/// One stored step result as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ResultJson {
    /// Unit id.
    pub unit_id: String,
    /// "model / gpu xN / framework / quant".
    pub unit: String,
    /// Step id.
    pub step_id: String,
    /// Position in the unit.
    pub step_index: u32,
    /// The step document the agent wrote.
    pub result: StepDocument,
    /// Where it ran.
    pub environment: Option<Environment>,
    /// Agent that ran it.
    pub agent_id: String,
    /// Attempt of the unit.
    pub attempt: u32,
    /// RFC 3339 time it finished.
    pub finished_at: String,
}

/// Runs `evalctl results`.
pub async fn run(global: &GlobalArgs, args: &ResultsArgs) -> Result<ExitCode, CliError> {
    let mut client = client::connect(&global.coordinator).await?;
    let results = fetch(&mut client, &args.campaign).await?;
    if global.json {
        render::emit_json(&results)?;
    } else {
        render::emit(&human(&args.campaign, &results))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every stored result of a campaign, in unit and step order.
pub async fn fetch(client: &mut Client, campaign: &str) -> Result<Vec<ResultJson>, CliError> {
    let mut stream = client
        .results(pb::ResultsRequest {
            campaign: campaign.to_owned(),
            include_records: false,
        })
        .await
        .map_err(CliError::rpc("results"))?
        .into_inner();
    let mut results = Vec::new();
    while let Some(result) = stream.next().await {
        let result = result.map_err(CliError::rpc("results"))?;
        let document: StepDocument =
            serde_json::from_str(&result.result_json).map_err(|source| CliError::BadResult {
                step_id: result.step_id.clone(),
                source,
            })?;
        results.push(ResultJson {
            unit: result.unit.as_ref().map(unit_label).unwrap_or_default(),
            unit_id: result.unit_id,
            step_id: result.step_id,
            step_index: result.step_index,
            result: document,
            environment: serde_json::from_str(&result.environment_json).ok(),
            agent_id: result.agent_id,
            attempt: result.attempt,
            finished_at: render::timestamp(result.finished_at_ms),
        });
    }
    Ok(results)
}

/// "sim-1b / cpu x1 / sim / bf16", as the coordinator labels units.
pub fn unit_label(config: &pb::UnitConfig) -> String {
    crate::analysis::points::Config::of(Some(config)).to_string()
}

/// The results table, with a note when a simulator produced the figures.
pub fn human(campaign: &str, results: &[ResultJson]) -> String {
    if results.is_empty() {
        return format!("Campaign {campaign}: no step results stored yet.\n");
    }
    // Energy columns only when some step measured energy or power.
    let energy = results.iter().any(|r| {
        r.result
            .telemetry
            .as_ref()
            .is_some_and(|t| t.energy_j.is_some() || t.mean_power_w.is_some())
    });
    let mut headers = vec![
        "UNIT",
        "STEP",
        "OK",
        "ERR",
        "TTFT p50/p99",
        "TPOT p50/p99",
        "ITL p50/p99",
        "E2EL p50/p99",
        "REQ/S",
        "OUT TOK/S",
        "GOODPUT",
    ];
    if energy {
        headers.extend(["J/TOK", "TOK/S/kW", "POWER W"]);
    }
    // The prefix cache column only when some step has a hit rate.
    let prefix = results.iter().any(|r| prefix_rates(&r.result).is_some());
    if prefix {
        headers.push("PREFIX HIT exp/srv");
    }
    // The turn column only when some step held conversations.
    let turns = results
        .iter()
        .any(|r| r.result.metrics.as_ref().is_some_and(|m| m.turns.is_some()));
    if turns {
        headers.push("TTFT p50 1st/later");
    }
    let mut table = render::table(headers);
    for r in results {
        if r.result.search.is_some() {
            // Listed under the table: a search has a verdict, not metrics of its own.
            continue;
        }
        let Some(m) = &r.result.metrics else {
            table.add_row(vec![r.unit.clone(), r.result.step_label.clone()]);
            continue;
        };
        let unit = if r.result.simulated {
            format!("{} (sim)", r.unit)
        } else {
            r.unit.clone()
        };
        let mut row = vec![
            unit,
            r.result.step_label.clone(),
            m.completed.to_string(),
            m.failed.to_string(),
            pair(m.ttft_ms),
            pair(m.tpot_ms),
            pair(m.itl_ms),
            pair(m.e2el_ms),
            format!("{:.2}", m.request_throughput),
            format!("{:.1}", m.output_token_throughput),
            goodput(m),
        ];
        if energy {
            row.extend(energy_cells(r.result.telemetry.as_ref()));
        }
        if prefix {
            row.push(prefix_cell(&r.result));
        }
        if turns {
            row.push(turn_cell(m));
        }
        table.add_row(row);
    }
    let mut text = format!(
        "Campaign {campaign}: {} step results (latencies in ms)\n\n{table}\n",
        results.len()
    );
    let searches: Vec<String> = results
        .iter()
        .filter_map(|r| r.result.search.as_ref().map(|s| (r, s)))
        .map(|(r, s)| {
            let over = s.spec.axis.name();
            let v = s.verdict;
            format!(
                "  {} {}: capacity {} (first failing {}) at {}; {} probes ({} runs): {}\n",
                r.unit,
                r.result.step_label,
                capacity::load_text(over, v.capacity),
                capacity::load_text(over, v.first_failing),
                capacity::describe_goal(&s.goal),
                v.probes,
                v.runs,
                v.stopped.describe()
            )
        })
        .collect();
    if !searches.is_empty() {
        text.push_str("\nCapacity searches (docs/capacity.md; `evalctl recommend` ranks them):\n");
        text.push_str(&searches.concat());
    }
    text.push_str(&scores_text(results));
    let simulated_gpus = results.iter().any(|r| {
        r.result
            .telemetry
            .as_ref()
            .is_some_and(|t| t.source == "simulated")
    });
    if energy && simulated_gpus {
        text.push_str(
            "\nEnergy of simulated GPUs (--gpus) is synthetic: it exercises the pipeline and \
             measures nothing.\n",
        );
    }
    if results.iter().any(|r| r.result.simulated) {
        text.push_str(
            "\nRows marked (sim) come from evalctl's simulated server: they exercise the \
             pipeline and describe no real hardware.\n",
        );
    }
    text
}

/// The accuracy scores of harness steps as a table, empty when no step has one.
fn scores_text(results: &[ResultJson]) -> String {
    let mut table = render::table(["UNIT", "STEP", "SCORE", "VALUE ± STDERR", "SAMPLES"]);
    let mut any = false;
    for r in results {
        for score in r.result.scores() {
            any = true;
            table.add_row(vec![
                r.unit.clone(),
                r.result.step_label.clone(),
                score.name.clone(),
                value_text(score.value, score.stderr),
                score
                    .samples
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]);
        }
    }
    if !any {
        return String::new();
    }
    format!("\nAccuracy (harness scores, docs/accuracy.md):\n\n{table}\n")
}

/// The step's expected and server prefix-cache hit rates, when it has either.
fn prefix_rates(d: &StepDocument) -> Option<(Option<f64>, Option<f64>)> {
    let cache = d.workload.as_ref()?.prefix_cache.as_ref()?;
    let rates = (cache.expected_hit_rate, cache.server_hit_rate);
    (rates != (None, None)).then_some(rates)
}

/// "76%/75%": expected and server hit rates, "-" where absent.
fn prefix_cell(d: &StepDocument) -> String {
    let percent =
        |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.0}%", v * 100.0));
    match prefix_rates(d) {
        Some((expected, server)) => format!("{}/{}", percent(expected), percent(server)),
        None => "-".to_owned(),
    }
}

/// "80.5/12.0": TTFT p50 of first turns and of later turns, "-" where absent.
fn turn_cell(m: &StepMetrics) -> String {
    let Some(turns) = &m.turns else {
        return "-".to_owned();
    };
    let p50 = |f: Option<&evalctl_results::TurnFigures>| {
        f.and_then(|f| f.ttft_ms)
            .map_or_else(|| "-".to_owned(), |s| short(s.p50))
    };
    format!("{}/{}", p50(Some(&turns.first)), p50(turns.later.as_ref()))
}

/// J per output token, output tokens/s per kW, mean GPU power; "-" where absent, with a
/// `!` on figures whose power data failed the cross-check (docs/telemetry.md).
fn energy_cells(telemetry: Option<&TelemetrySummary>) -> [String; 3] {
    let Some(t) = telemetry else {
        return ["-".to_owned(), "-".to_owned(), "-".to_owned()];
    };
    let flag = if t.power_valid == Some(false) {
        "!"
    } else {
        ""
    };
    let cell = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}{flag}"))
    };
    [
        cell(t.joules_per_output_token, 3),
        cell(t.output_tok_s_per_kw, 1),
        cell(t.mean_power_w, 0),
    ]
}

fn pair(summary: Option<Summary>) -> String {
    summary.map_or_else(
        || "-".to_owned(),
        |s| format!("{}/{}", short(s.p50), short(s.p99)),
    )
}

/// Three significant figures, enough to compare without a wall of digits.
fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn goodput(m: &StepMetrics) -> String {
    m.goodput
        .map_or_else(|| "-".to_owned(), |g| format!("{g:.2} req/s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_labels_name_every_part() {
        let config = pb::UnitConfig {
            model: Some(pb::ModelSpec {
                name: "m".into(),
                ..Default::default()
            }),
            gpu: Some(pb::GpuRequirement {
                gpu_type: "H100-80GB".into(),
                count: 2,
                ..Default::default()
            }),
            framework: Some(pb::FrameworkSpec {
                name: "vllm".into(),
                ..Default::default()
            }),
            quantization: Some(pb::QuantizationSpec {
                name: "fp8".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(unit_label(&config), "m / H100-80GB x2 / vllm / fp8");
    }

    /// A stored step of `label` with nothing measured but what the test sets.
    fn stored(label: &str, telemetry: Option<TelemetrySummary>) -> ResultJson {
        ResultJson {
            unit_id: "u".into(),
            unit: "m / H100-80GB x1 / vllm / bf16".into(),
            step_id: "s".into(),
            step_index: 0,
            result: StepDocument {
                schema: 1,
                schema_minor: 1,
                simulated: false,
                step_label: label.into(),
                metrics: Some(crate::analysis::fixtures::no_metrics()),
                harness_metrics: Default::default(),
                scores: Vec::new(),
                tokenization: None,
                connections_opened: 1,
                served_model: "m".into(),
                started_at_ms: 0,
                finished_at_ms: 1,
                telemetry,
                workload: None,
                probe: None,
                search: None,
            },
            environment: None,
            agent_id: "a".into(),
            attempt: 1,
            finished_at: String::new(),
        }
    }

    #[test]
    fn energy_columns_appear_only_with_telemetry() {
        let document = |telemetry| stored("chat @ c=1 #0", telemetry);
        let plain = human("c", &[document(None)]);
        assert!(!plain.contains("J/TOK"), "{plain}");
        let measured = TelemetrySummary {
            source: "nvml".into(),
            energy_j: Some(100.0),
            mean_power_w: Some(350.4),
            joules_per_output_token: Some(0.1234),
            output_tok_s_per_kw: Some(2853.9),
            power_valid: Some(false),
            ..TelemetrySummary::default()
        };
        let text = human("c", &[document(Some(measured)), document(None)]);
        assert!(text.contains("J/TOK"), "{text}");
        assert!(text.contains("0.123!"), "{text}");
        assert!(text.contains("2853.9!"), "{text}");
        assert!(text.contains("350!"), "{text}");
        assert!(!text.contains("synthetic"), "{text}");
    }

    #[test]
    fn the_prefix_column_appears_only_with_hit_rates() {
        let plain = stored("chat @ c=1 #0", None);
        assert!(!human("c", std::slice::from_ref(&plain)).contains("PREFIX HIT"));
        let mut cached = plain.clone();
        cached.result.step_label = "rag @ c=1 #0".into();
        cached.result.workload = Some(crate::analysis::fixtures::reset_prefix_cache());
        let text = human("c", &[cached, plain]);
        assert!(text.contains("PREFIX HIT exp/srv"), "{text}");
        assert!(text.contains("76%/76%"), "{text}");
    }

    #[test]
    fn the_turn_column_appears_only_for_multi_turn_steps() {
        let plain = stored("chat @ c=1 #0", None);
        assert!(!human("c", std::slice::from_ref(&plain)).contains("1st/later"));
        let mut chats = plain.clone();
        chats.result.step_label = "chats @ c=4 #0".into();
        let figures = |turn: u32, ttft: f64| evalctl_results::TurnFigures {
            turn,
            requests: 4,
            mean_input_tokens: 100.0,
            ttft_ms: Summary::of(vec![ttft]),
            itl_ms: None,
        };
        if let Some(m) = &mut chats.result.metrics {
            m.turns = Some(evalctl_results::TurnMetrics {
                conversations: 4,
                mean_turns: 2.0,
                first: figures(1, 80.5),
                later: Some(figures(2, 12.04)),
                by_position: vec![figures(1, 80.5), figures(2, 12.04)],
            });
        }
        let text = human("c", &[chats, plain]);
        assert!(text.contains("TTFT p50 1st/later"), "{text}");
        assert!(text.contains("80.5/12.0"), "{text}");
    }

    #[test]
    fn short_keeps_three_significant_figures() {
        assert_eq!(short(1234.4), "1234");
        assert_eq!(short(12.345), "12.3");
        assert_eq!(short(1.2345), "1.23");
    }
}
