//! `evalctl recommend CAMPAIGN --slo ttft_p90=500ms,tpot_p90=50ms`: per model and workload,
//! the configurations that meet the SLOs ranked by output tokens per unit of GPU cost
//! (with prices) or per GPU (without), with the reason for each place
//! (`crate::analysis::recommend`).

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Objectives, e.g. "ttft_p90=500ms,tpot_p90=50ms" (latency metrics: ttft, tpot, itl,
    /// e2el with mean, p50, p90, p95, p99).
    #[arg(long)]
    pub slo: String,
    /// GPU prices (docs/results.md); the matrix's prices otherwise.
    #[arg(long, value_name = "FILE")]
    pub cost_file: Option<PathBuf>,
}

/// Runs `evalctl recommend`.
pub async fn run(global: &GlobalArgs, args: &RecommendArgs) -> Result<ExitCode, CliError> {
    let objectives = recommend::parse_slos(&args.slo).map_err(|e| CliError::BadFlag {
        flag: "--slo",
        source: Box::new(e),
    })?;
    let prices = match &args.cost_file {
        Some(path) => Prices::load(path).map_err(CliError::Prices)?,
        None => Prices::none(),
    };
    let mut client = client::connect(&global.coordinator).await?;
    let points = points::fetch(&mut client, &args.campaign, &prices).await?;
    let rankings = recommend::rank(&points, &objectives);
    if global.json {
        render::emit_json(&serde_json::json!({
            "campaign": args.campaign,
            "objectives": objectives,
            "currency": prices.currency,
            "rankings": rankings,
        }))?;
    } else {
        render::emit(&human(&args.campaign, &args.slo, &prices, &rankings))?;
    }
    Ok(ExitCode::SUCCESS)
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
