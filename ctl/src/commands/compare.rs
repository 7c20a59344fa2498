//! `evalctl compare BASE NEW`: matches the steps of two campaigns by configuration,
//! workload and load point and flags regressions of the key metrics beyond a threshold
//! and beyond the spread of repeats (`evalctl_results::compare`). Exits with code 7 when
//! it flags one, so CI can gate on it.

use std::process::ExitCode;

use evalctl_proto::v1 as pb;
use evalctl_results::compare::{self, Change, Comparison, Metric, ScoreChange, Verdict};

use crate::analysis::accuracy::{Scored, value_text};

use crate::analysis::cost::Prices;
use crate::analysis::points::{self, Point};
use crate::cli::GlobalArgs;
use crate::client;
use crate::error::{CliError, EXIT_REGRESSION};
use crate::render;

/// `evalctl compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: crate::cli::ConnectionArgs,
    /// The base campaign (name or id), e.g. last night's; alone, a campaign of a
    /// schedule's series, compared with its baseline.
    pub base: String,
    /// The new campaign (name or id).
    pub new: Option<String>,
    /// Relative change, in percent, below which nothing is flagged.
    #[arg(long, default_value_t = 5.0, value_name = "PERCENT")]
    pub threshold: f64,
    /// Metrics to check, comma-separated [default: output_tok_s, request_rps,
    /// ttft/tpot/e2el p50/p90/p99, goodput_rps, j_per_token].
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Change of an accuracy score, in its own units (0.02 = two points of accuracy),
    /// below which nothing is flagged; a drop must also exceed twice its standard error.
    #[arg(long, default_value_t = 0.01, value_name = "POINTS")]
    pub accuracy_threshold: f64,
    /// Show every matched metric, not only those beyond the threshold.
    #[arg(long)]
    pub all: bool,
}

/// Runs `evalctl compare`.
pub async fn run(global: &GlobalArgs, args: &CompareArgs) -> Result<ExitCode, CliError> {
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        return Err(CliError::BadFlag {
            flag: "--threshold",
            source: format!("{} is not a percentage ≥ 0", args.threshold).into(),
        });
    }
    if !(args.accuracy_threshold.is_finite() && args.accuracy_threshold >= 0.0) {
        return Err(CliError::BadFlag {
            flag: "--accuracy-threshold",
            source: format!("{} is not a number ≥ 0", args.accuracy_threshold).into(),
        });
    }
    let metrics = if args.metrics.is_empty() {
        Metric::compare_defaults()
    } else {
        args.metrics
            .iter()
            .map(|m| m.parse::<Metric>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CliError::BadFlag {
                flag: "--metrics",
                source: Box::new(e),
            })?
    };
    let mut client = client::connect(&global.coordinator).await?;
    let (base_name, new_name) = match &args.new {
        Some(new) => (args.base.clone(), new.clone()),
        None => (
            baseline_of(&mut client, &args.base).await?,
            args.base.clone(),
        ),
    };
    let base = points::fetch_measured(&mut client, &base_name, &Prices::none()).await?;
    let new = points::fetch_measured(&mut client, &new_name, &Prices::none()).await?;
    let comparison = compare::compare(
        &observe(&base.points),
        &observe(&new.points),
        &metrics,
        args.threshold / 100.0,
    );
    let accuracy = compare::compare_scores(
        &observe_scores(&base.scores),
        &observe_scores(&new.scores),
        args.accuracy_threshold,
    );
    let regressed = comparison.regressions().next().is_some()
        || accuracy.iter().any(|c| c.verdict == Verdict::Regression);
    if global.json {
        render::emit_json(&serde_json::json!({
            "base": base_name,
            "new": new_name,
            "regression": regressed,
            "matched_steps": comparison.matched_steps(),
            "comparison": comparison,
            "accuracy": accuracy,
        }))?;
    } else {
        let mut text = human(args, (&base_name, &new_name), &comparison);
        text.push_str(&accuracy_text(args, &accuracy));
        render::emit(&text)?;
    }
    Ok(if regressed {
        ExitCode::from(EXIT_REGRESSION)
    } else {
        ExitCode::SUCCESS
    })
}

/// The baseline of `campaign`, a campaign of a schedule's series.
async fn baseline_of(client: &mut client::Client, campaign: &str) -> Result<String, CliError> {
    let got = client
        .get_campaign(pb::GetCampaignRequest {
            campaign: campaign.to_owned(),
        })
        .await
        .map_err(CliError::rpc("get campaign"))?
        .into_inner();
    let facts = got.series.ok_or_else(|| CliError::BadFlag {
        flag: "NEW",
        source: format!(
            "campaign `{campaign}` belongs to no schedule's series, so it has no baseline: \
             name the campaign to compare it with (evalctl compare BASE NEW)"
        )
        .into(),
    })?;
    if facts.baseline.is_empty() {
        return Err(CliError::BadFlag {
            flag: "NEW",
            source: format!(
                "series `{}` has no baseline for `{campaign}`: no earlier campaign of it \
                 succeeded (pin one with evalctl baseline pin)",
                facts.series
            )
            .into(),
        });
    }
    Ok(facts.baseline)
}

fn observe(points: &[Point]) -> Vec<compare::Observation<'_>> {
    points.iter().map(Point::observation).collect()
}

fn observe_scores(scores: &[Scored]) -> Vec<compare::ScoreObservation<'_>> {
    scores.iter().map(Scored::observation).collect()
}

/// The accuracy scores compared, when the campaigns have any: every change beyond the
/// threshold (all with `--all`), then how many regressed.
fn accuracy_text(args: &CompareArgs, changes: &[ScoreChange]) -> String {
    if changes.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "\nAccuracy: {} scores matched, threshold {} (and {}× the standard error)\n\n",
        changes.len(),
        args.accuracy_threshold,
        compare::accuracy::SIGMAS
    );
    let shown: Vec<&ScoreChange> = changes
        .iter()
        .filter(|c| args.all || c.verdict != Verdict::Unchanged)
        .collect();
    if shown.is_empty() {
        text.push_str("No score moved beyond the threshold.\n");
        return text;
    }
    let mut table = render::table([
        "CONFIG", "STEP", "SCORE", "BASE", "NEW", "CHANGE", "STDERR", "VERDICT",
    ]);
    for c in &shown {
        table.add_row(vec![
            c.key.config.clone(),
            c.key.workload.clone(),
            c.score.clone(),
            value_text(c.base.value, c.base.stderr),
            value_text(c.new.value, c.new.stderr),
            format!("{:+.3}", c.change),
            c.stderr
                .map_or_else(|| "-".to_owned(), |e| format!("{e:.3}")),
            verdict_text(c.verdict).to_owned(),
        ]);
    }
    text.push_str(&format!("{table}\n"));
    let regressions = shown
        .iter()
        .filter(|c| c.verdict == Verdict::Regression)
        .count();
    if regressions > 0 {
        text.push_str(&format!(
            "{regressions} accuracy regressions (exit code {EXIT_REGRESSION}).\n"
        ));
    }
    text
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Regression => "REGRESSION",
        Verdict::Improvement => "improved",
        Verdict::WithinNoise => "noise",
        Verdict::Unchanged => "same",
    }
}

fn value(v: f64) -> String {
    crate::report::svg::number(v)
}

fn row(c: &Change) -> Vec<String> {
    let spread = |s: &compare::Stats| {
        if s.n > 1 {
            format!(
                "{} ({}–{}, n={})",
                value(s.mean),
                value(s.min),
                value(s.max),
                s.n
            )
        } else {
            value(s.mean)
        }
    };
    vec![
        c.key.config.clone(),
        format!("{} @ {}", c.key.workload, c.key.load),
        format!("{} ({})", c.metric, c.unit),
        spread(&c.base),
        spread(&c.new),
        format!("{:+.1}%", c.change * 100.0),
        if c.noise > 0.0 {
            format!("±{:.1}%", c.noise * 100.0)
        } else {
            "-".to_owned()
        },
        verdict_text(c.verdict).to_owned(),
    ]
}

/// The comparison for people: changes beyond the threshold (all with `--all`), then a
/// one-line verdict.
fn human(args: &CompareArgs, (base, new): (&str, &str), c: &Comparison) -> String {
    let mut text = format!(
        "Comparing {new} (new) against {base} (base): {} matched steps, threshold {}%\n\n",
        c.matched_steps(),
        args.threshold
    );
    let shown: Vec<&Change> = c
        .changes
        .iter()
        .filter(|ch| args.all || ch.verdict != Verdict::Unchanged)
        .collect();
    if shown.is_empty() {
        text.push_str("No metric moved beyond the threshold.\n");
    } else {
        let mut table = render::table([
            "CONFIG", "STEP", "METRIC", "BASE", "NEW", "CHANGE", "NOISE", "VERDICT",
        ]);
        for ch in shown {
            table.add_row(row(ch));
        }
        text.push_str(&format!("{table}\n"));
    }
    for (what, keys) in [("base", &c.only_in_base), ("new", &c.only_in_new)] {
        if !keys.is_empty() {
            text.push_str(&format!(
                "\n{} steps only in the {what} campaign (not compared), e.g. {} / {} @ {}\n",
                keys.len(),
                keys[0].config,
                keys[0].workload,
                keys[0].load
            ));
        }
    }
    let regressions = c.regressions().count();
    text.push_str(&if regressions > 0 {
        format!(
            "\n{regressions} performance regressions beyond {}% and the spread of repeats (exit code {EXIT_REGRESSION}).\n",
            args.threshold
        )
    } else if c.matched_steps() == 0 {
        "\nNo step of the two campaigns matched: nothing was compared.\n".to_owned()
    } else {
        "\nNo performance regression.\n".to_owned()
    });
    text
}
