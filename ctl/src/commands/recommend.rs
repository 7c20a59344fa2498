//! `evalctl recommend CAMPAIGN [--slo ttft_p90=500ms,tpot_p90=50ms]`: the deployments whose
//! capacity was searched, ranked by their capacity at the SLO (cost per million tokens,
//! tokens/s per GPU, or TOPSIS with weights; `crate::analysis::capacity`); then, per model
//! and workload, the configurations whose listed load points meet `--slo`, ranked by output
//! tokens per unit of GPU cost (with prices) or per GPU (without), with the reason for each
//! place (`crate::analysis::recommend`).

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::BTreeMap;

use crate::analysis::accuracy;
use crate::analysis::capacity::{self, RankBy};
use crate::analysis::cost::Prices;
use crate::analysis::points;
use crate::analysis::recommend::{self, Ranking};
use crate::cli::GlobalArgs;
use crate::client;
use crate::error::CliError;
use crate::render;

/// `evalctl recommend`.
#[derive(Debug, clap::Args)]
pub struct RecommendArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: crate::cli::ConnectionArgs,
    /// Campaign name or id.
    pub campaign: String,
    /// Objectives for listed load points, e.g. "ttft_p90=500ms,tpot_p90=50ms" (latency
    /// metrics: ttft, tpot, itl, e2el with mean, p50, p90, p95, p99). Capacity searches
    /// carry their own goal; without `--slo` only they are ranked.
    #[arg(long)]
    pub slo: Option<String>,
    /// How deployments with a capacity search are ranked: `cost` (per million output
    /// tokens at the capacity), `per-gpu` (output tokens/s per GPU there), or `topsis`
    /// (with `--weights`). Default: cost when every deployment has a price, else per-gpu.
    #[arg(long, value_parser = ["cost", "per-gpu", "topsis"])]
    pub rank: Option<String>,
    /// TOPSIS weights, e.g. "cost=0.5,throughput=0.3,capacity=0.2" (criteria: cost,
    /// throughput per GPU, capacity, gpus, accuracy: the `--score`).
    #[arg(long, requires = "rank")]
    pub weights: Option<String>,
    /// Drop deployments whose accuracy score is worse than this, e.g.
    /// "evalctl_arith/exact_match,strict-match=0.7" (lm-eval's `task/metric,filter`; the
    /// filter may be left out when the score has only one). Repeatable.
    #[arg(long = "min", value_name = "SCORE=VALUE")]
    pub min: Vec<String>,
    /// The accuracy score TOPSIS's `accuracy` criterion weighs [default: the first
    /// `--min`'s].
    #[arg(long, value_name = "SCORE")]
    pub score: Option<String>,
    /// GPU prices (docs/results.md); the matrix's prices otherwise.
    #[arg(long, value_name = "FILE")]
    pub cost_file: Option<PathBuf>,
}

/// Runs `evalctl recommend`.
pub async fn run(global: &GlobalArgs, args: &RecommendArgs) -> Result<ExitCode, CliError> {
    let objectives = args
        .slo
        .as_deref()
        .map(recommend::parse_slos)
        .transpose()
        .map_err(|e| CliError::BadFlag {
            flag: "--slo",
            source: Box::new(e),
        })?;
    let weights = match (args.rank.as_deref(), args.weights.as_deref()) {
        (Some("topsis"), Some(w)) => {
            Some(capacity::parse_weights(w).map_err(|e| CliError::BadFlag {
                flag: "--weights",
                source: e.into(),
            })?)
        }
        (Some("topsis"), None) => {
            return Err(CliError::BadFlag {
                flag: "--rank",
                source: "`topsis` needs `--weights`, e.g. cost=0.5,throughput=0.3,capacity=0.2"
                    .into(),
            });
        }
        (_, Some(_)) => {
            return Err(CliError::BadFlag {
                flag: "--weights",
                source: "weights are for `--rank topsis`".into(),
            });
        }
        _ => None,
    };
    let prices = match &args.cost_file {
        Some(path) => Prices::load(path).map_err(CliError::Prices)?,
        None => Prices::none(),
    };
    let bounds = args
        .min
        .iter()
        .map(|m| accuracy::parse_min(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::BadFlag {
            flag: "--min",
            source: e.into(),
        })?;
    let mut client = client::connect(&global.coordinator).await?;
    let measured = points::fetch_measured(&mut client, &args.campaign, &prices).await?;
    let scores = accuracy::by_deployment(&measured.scores);
    let weighs_accuracy = weights
        .as_ref()
        .is_some_and(|w| w.iter().any(|(c, _)| *c == capacity::Criterion::Accuracy));
    let (bounds, weighed_score) = resolve_scores(args, bounds, &scores, weighs_accuracy)?;
    let (points, searches) = (measured.points, measured.searches);
    let mut rows = capacity::capacities(&searches, &points);
    for row in &mut rows {
        row.accuracy = weighed_score.as_ref().and_then(|name| {
            scores
                .iter()
                .find(|s| s.config == row.config && s.score == *name)
                .map(|s| s.value)
        });
    }
    // Deployments worse than a `--min` bound are not ranked; they are listed with why.
    let (rows, dropped): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .map(|row| (accuracy::misses(&row.config, &bounds, &scores), row))
        .partition(|(miss, _)| miss.is_none());
    let rows: Vec<capacity::Capacity> = rows.into_iter().map(|(_, row)| row).collect();
    let by = match (args.rank.as_deref(), weights) {
        (_, Some(w)) => RankBy::Topsis(w),
        (Some("cost"), _) => RankBy::Cost,
        (Some("per-gpu"), _) => RankBy::PerGpu,
        _ if !rows.is_empty() && rows.iter().all(|r| r.price_per_gpu_hour.is_some()) => {
            RankBy::Cost
        }
        _ => RankBy::PerGpu,
    };
    let mut by_workload: BTreeMap<String, Vec<capacity::Capacity>> = BTreeMap::new();
    for row in rows {
        by_workload
            .entry(row.workload.clone())
            .or_default()
            .push(row);
    }
    let mut capacities = Vec::new();
    for (workload, rows) in by_workload {
        let ranked = capacity::rank(rows, &by).map_err(|e| CliError::BadFlag {
            flag: "--weights",
            source: Box::new(e),
        })?;
        capacities.push((workload, ranked));
    }
    for (miss, row) in dropped {
        let ranked = capacity::RankedCapacity {
            rank: None,
            score: None,
            unranked_because: miss.map(|m| format!("dropped by --min: {m}")),
            row,
        };
        match capacities
            .iter_mut()
            .find(|(w, _)| *w == ranked.row.workload)
        {
            Some((_, rows)) => rows.push(ranked),
            None => capacities.push((ranked.row.workload.clone(), vec![ranked])),
        }
    }
    // Listed points only: a searched deployment's probes are its capacity's evidence.
    let listed: Vec<points::Point> = points
        .into_iter()
        .filter(|p| {
            !searches
                .iter()
                .any(|s| s.unit_id == p.unit_id && s.workload == p.workload)
        })
        .collect();
    let (listed, below): (Vec<points::Point>, Vec<points::Point>) = listed
        .into_iter()
        .partition(|p| accuracy::misses(&p.config.to_string(), &bounds, &scores).is_none());
    let mut rankings = objectives
        .as_ref()
        .map(|o| recommend::rank(&listed, o))
        .unwrap_or_default();
    for ranking in &mut rankings {
        let mut configs: Vec<String> = below
            .iter()
            .filter(|p| p.config.model == ranking.model && p.workload == ranking.workload)
            .map(|p| p.config.to_string())
            .collect();
        configs.dedup();
        for config in configs {
            let reason = accuracy::misses(&config, &bounds, &scores).unwrap_or_default();
            ranking.missed.push(recommend::Missed {
                config,
                reason: format!("dropped by --min: {reason}"),
            });
        }
    }
    let ranked_by = match &by {
        RankBy::Cost => "cost",
        RankBy::PerGpu => "per_gpu",
        RankBy::Topsis(_) => "topsis",
    };
    if global.json {
        render::emit_json(&serde_json::json!({
            "campaign": args.campaign,
            "objectives": objectives,
            "currency": prices.currency,
            "rankings": rankings,
            "min_scores": bounds,
            "accuracy": scores,
            "capacity": {
                "ranked_by": ranked_by,
                "weights": match &by {
                    RankBy::Topsis(w) => w.iter().map(|(c, w)| serde_json::json!({"criterion": c, "weight": w})).collect(),
                    _ => Vec::new(),
                },
                "workloads": capacities.iter().map(|(w, rows)| serde_json::json!({
                    "workload": w,
                    "deployments": rows,
                })).collect::<Vec<_>>(),
            },
        }))?;
    } else {
        let mut text = capacity_text(&args.campaign, &prices, ranked_by, &capacities);
        if let Some(slo) = &args.slo {
            text.push_str(&human(&args.campaign, slo, &prices, &rankings));
        } else if capacities.is_empty() {
            text.push_str(
                "No capacity search is stored yet; give `--slo` to rank listed load points.\n",
            );
        }
        render::emit(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--min` bounds with their names resolved against the stored scores, and the score
/// TOPSIS's `accuracy` criterion weighs (`--score`, else the first bound's), which it needs
/// when the weights name it.
fn resolve_scores(
    args: &RecommendArgs,
    bounds: Vec<accuracy::MinScore>,
    scores: &[accuracy::DeploymentScore],
    weighs_accuracy: bool,
) -> Result<(Vec<accuracy::MinScore>, Option<String>), CliError> {
    let mut known: Vec<&str> = scores.iter().map(|s| s.score.as_str()).collect();
    known.sort_unstable();
    known.dedup();
    let bounds = bounds
        .into_iter()
        .map(|b| {
            let name = accuracy::resolve(&b.name, &known).map_err(|e| CliError::BadFlag {
                flag: "--min",
                source: e.into(),
            })?;
            Ok(accuracy::MinScore {
                name: name.to_owned(),
                value: b.value,
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let weighed = match &args.score {
        Some(given) => Some(
            accuracy::resolve(given, &known)
                .map_err(|e| CliError::BadFlag {
                    flag: "--score",
                    source: e.into(),
                })?
                .to_owned(),
        ),
        None => bounds.first().map(|b| b.name.clone()),
    };
    if weighs_accuracy && weighed.is_none() {
        return Err(CliError::BadFlag {
            flag: "--weights",
            source:
                "the `accuracy` criterion needs a score: give `--score NAME` or `--min NAME=VALUE`"
                    .into(),
        });
    }
    Ok((bounds, weighed))
}

/// The capacity-at-SLO tables, one per workload.
fn capacity_text(
    campaign: &str,
    prices: &Prices,
    ranked_by: &str,
    capacities: &[(String, Vec<capacity::RankedCapacity>)],
) -> String {
    let mut text = String::new();
    let number = crate::report::svg::number;
    for (workload, rows) in capacities {
        let _ = writeln!(
            text,
            "Campaign {campaign} / workload {workload}: capacity at SLO ({}), ranked by {}\n",
            rows.first().map_or("", |r| r.row.goal.as_str()),
            match ranked_by {
                "cost" => "cost per million output tokens",
                "per_gpu" => "output tokens/s per GPU",
                _ => "TOPSIS score",
            }
        );
        let mut table = render::table([
            "#",
            "DEPLOYMENT",
            "CAPACITY",
            "FIRST FAIL",
            "OUT TOK/S",
            "TOK/S/GPU",
            "COST/M TOK",
            "SCORE",
            "PROBES",
            "STOPPED",
        ]);
        for r in rows {
            let x = &r.row;
            table.add_row(vec![
                r.rank.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                x.config.clone(),
                capacity::load_text(x.over, x.capacity),
                capacity::load_text(x.over, x.first_failing),
                x.output_tok_s.map_or_else(|| "-".to_owned(), number),
                x.output_tok_s_per_gpu
                    .map_or_else(|| "-".to_owned(), number),
                x.cost_per_million_tokens.map_or_else(
                    || "-".to_owned(),
                    |c| format!("{}{}", prices.currency_prefix(), number(c)),
                ),
                r.score
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.3}")),
                format!("{} ({} runs)", x.probes, x.runs),
                x.stopped_because.to_owned(),
            ]);
        }
        let _ = writeln!(text, "{table}");
        for r in rows.iter().filter(|r| r.rank.is_none()) {
            let _ = writeln!(
                text,
                "  not ranked: {} ({})",
                r.row.config,
                r.unranked_because.as_deref().unwrap_or("")
            );
        }
        text.push('\n');
    }
    text
}

fn human(campaign: &str, slo: &str, prices: &Prices, rankings: &[Ranking]) -> String {
    let mut text = format!("Campaign {campaign}, objectives {slo}\n");
    if rankings.is_empty() {
        text.push_str("\nNo step results with load metrics are stored yet.\n");
        return text;
    }
    let number = crate::report::svg::number;
    for r in rankings {
        let _ = write!(
            text,
            "\n{} / workload {}: ranked by {}\n",
            r.model,
            r.workload,
            if r.ranked_by == "cost" {
                "output tokens per unit of GPU cost"
            } else {
                "output tokens/s per GPU (no price for every configuration)"
            }
        );
        if r.ranked.is_empty() {
            text.push_str("  No configuration meets the objectives.\n");
        } else {
            let mut table = render::table([
                "#",
                "CONFIG",
                "LOAD",
                "OUT TOK/S",
                "TOK/S/GPU",
                "COST/M TOK",
            ]);
            for x in &r.ranked {
                table.add_row(vec![
                    x.rank.to_string(),
                    x.config.clone(),
                    x.load.clone(),
                    number(x.output_tok_s),
                    number(x.output_tok_s_per_gpu),
                    x.cost_per_million_tokens.map_or_else(
                        || "-".to_owned(),
                        |c| format!("{}{}", prices.currency_prefix(), number(c)),
                    ),
                ]);
            }
            let _ = writeln!(text, "{table}");
            for x in &r.ranked {
                let _ = writeln!(text, "  {}. {}: {}", x.rank, x.config, x.explanation);
            }
        }
        for m in &r.missed {
            let _ = writeln!(text, "  misses the objectives: {} ({})", m.config, m.reason);
        }
    }
    text
}
