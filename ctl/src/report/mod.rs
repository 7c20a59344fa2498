//! `evalctl report`: one self-contained HTML file (inline CSS and SVG, no scripts, no
//! network fetches) about a campaign: summary and matrix coverage, per-model throughput
//! and latency curves, the Pareto front of throughput per GPU against interactivity, cost,
//! energy efficiency, capacity at the SLO, prefix-cache figures and failures. Every user string is escaped.

mod accuracy;
mod capacity;
mod coverage;
pub mod html;
mod performance;
mod starts;
pub mod svg;
mod workloads;

use std::fmt::Write;

use evalctl_proto::v1 as pb;

use crate::analysis::accuracy::DeploymentScore;
use crate::analysis::capacity::Capacity;
use crate::analysis::cost::Prices;
use crate::analysis::points::ColdStart;
use crate::analysis::points::Point;
use crate::render;
use html::escape;

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct ReportData {
    /// The campaign with its counts.
    pub campaign: pb::CampaignInfo,
    /// Combinations the expansion dropped.
    pub dropped: Vec<pb::DroppedCombination>,
    /// For a campaign of a schedule's series: predecessor, baseline, verdict.
    pub series: Option<crate::render::SeriesJson>,
    /// The campaign's units.
    pub units: Vec<pb::UnitSummary>,
    /// Steps with load metrics.
    pub points: Vec<Point>,
    /// Capacity at the SLO of each stored capacity search.
    pub capacities: Vec<Capacity>,
    /// Each deployment's accuracy scores.
    pub accuracy: Vec<DeploymentScore>,
    /// Every cold start of the campaign's servers.
    pub starts: Vec<ColdStart>,
    /// GPU prices.
    pub prices: Prices,
    /// When the report was made, Unix ms.
    pub generated_at_ms: i64,
}

/// Renders the report page.
pub fn render(data: &ReportData) -> String {
    let c = &data.campaign;
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,"><title>evalctl report: {}</title><style>{}</style></head><body>"#,
        escape(&c.name),
        html::STYLE
    );
    let _ = write!(
        page,
        r#"<h1>Campaign {}</h1><p class="meta">State {} · created {} · submitted by {} · report generated {} · id {}</p>"#,
        escape(&c.name),
        escape(render::campaign_state(c.state)),
        escape(&render::timestamp(c.created_at_ms)),
        escape(&c.submitted_by),
        escape(&render::timestamp(data.generated_at_ms)),
        escape(&c.campaign_id)
    );
    if data.points.iter().any(|p| p.simulated) {
        page.push_str(
            r#"<p class="note">Some results come from evalctl's simulated server: they exercise the pipeline and describe no real hardware.</p>"#,
        );
    }
    page.push_str(
        "<nav><a href=\"#coverage\">Coverage</a> · <a href=\"#performance\">Performance</a> · \
         <a href=\"#cost\">Cost</a> · <a href=\"#energy\">Energy</a> · \
         <a href=\"#capacity\">Capacity at SLO</a> · <a href=\"#accuracy\">Accuracy</a> · \
         <a href=\"#starts\">Cold starts</a> · \
         <a href=\"#workloads\">Prefix cache</a> · \
         <a href=\"#turns\">Multi-turn</a> · \
         <a href=\"#failures\">Failures</a></nav>",
    );
    page.push_str(&coverage::summary(data));
    page.push_str(&performance::models(data));
    page.push_str(&performance::cost(data));
    page.push_str(&performance::energy(data));
    page.push_str(&capacity::section(data));
    page.push_str(&accuracy::section(data));
    page.push_str(&starts::section(data));
    page.push_str(&workloads::prefix_cache(data));
    page.push_str(&workloads::turns(data));
    page.push_str(&coverage::failures(data));
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::{flat, no_metrics};
    use crate::analysis::points::Config;

    fn point(framework: &str, c: u32, tput: f64, ttft: f64, tpot: f64) -> Point {
        let mut metrics = no_metrics();
        metrics.output_token_throughput = tput;
        metrics.ttft_ms = Some(flat(ttft));
        metrics.tpot_ms = Some(flat(tpot));
        metrics.interactivity_tok_s = Some(1000.0 / tpot);
        Point {
            config: Config {
                model: "<m>".into(),
                gpu_type: "H100-80GB".into(),
                gpu_count: 1,
                layout: String::new(),
                framework: framework.into(),
                quantization: "bf16".into(),
            },
            unit_id: framework.into(),
            workload: "chat".into(),
            load: format!("c={c}"),
            load_value: f64::from(c),
            repeat: 0,
            simulated: false,
            metrics,
            telemetry: Some(evalctl_results::TelemetrySummary {
                source: "nvml".into(),
                joules_per_output_token: Some(0.5),
                ..Default::default()
            }),
            workload_facts: None,
            price_per_gpu_hour: Some(2.0),
        }
    }

    /// `p` with the prefix-cache figures of a reset shared-prefix step.
    fn cached(mut p: Point) -> Point {
        p.workload_facts = Some(crate::analysis::fixtures::reset_prefix_cache());
        p
    }

    /// `p` with the turn figures of a multi-turn step: first turns 80 ms, later 12 ms.
    fn in_turns(mut p: Point) -> Point {
        let figures = |turn: u32, ttft: f64| evalctl_results::TurnFigures {
            turn,
            requests: 10,
            mean_input_tokens: 400.0,
            ttft_ms: evalctl_results::Summary::of(vec![ttft]),
            itl_ms: evalctl_results::Summary::of(vec![1.5]),
        };
        p.metrics.turns = Some(evalctl_results::TurnMetrics {
            conversations: 10,
            mean_turns: 3.0,
            first: figures(1, 80.0),
            later: Some(figures(2, 12.0)),
            by_position: vec![figures(1, 80.0), figures(2, 12.0), figures(3, 13.0)],
        });
        p
    }

    #[test]
    fn a_report_has_every_section_and_escapes_user_strings() {
        let data = ReportData {
            campaign: pb::CampaignInfo {
                name: "n<script>".into(),
                ..Default::default()
            },
            series: Some(crate::render::SeriesJson::from(&pb::SeriesFacts {
                series: "nightly".into(),
                baseline: "nightly-2".into(),
                verdict: Some(pb::SeriesVerdict {
                    outcome: "regressed".into(),
                    regressions: 1,
                    matched_steps: 4,
                    worst: vec![pb::VerdictChange {
                        config: "<m>".into(),
                        metric: "ttft_p90".into(),
                        change: 0.25,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })),
            dropped: vec![pb::DroppedCombination {
                label: "big / H100 x1".into(),
                kind: "pruned".into(),
                reason: "weights need 168.0 GB".into(),
            }],
            units: vec![pb::UnitSummary {
                label: "bad".into(),
                state: pb::UnitState::Failed as i32,
                last_error: "server exited".into(),
                log_tail: "<oops>".into(),
                ..Default::default()
            }],
            points: vec![
                cached(point("vllm", 1, 100.0, 20.0, 10.0)),
                point("vllm", 8, 600.0, 40.0, 15.0),
                point("sglang", 1, 110.0, 18.0, 9.0),
                in_turns(point("sglang", 8, 500.0, 50.0, 20.0)),
            ],
            capacities: vec![crate::analysis::fixtures::capacity_row(
                "H100 x1",
                Some(9.0),
                300.0,
                None,
            )],
            accuracy: Vec::new(),
            starts: Vec::new(),
            prices: Prices::none(),
            generated_at_ms: 0,
        };
        let page = render(&data);
        assert!(!page.contains("<script>") && !page.contains("<oops>"));
        assert!(page.contains("n&lt;script&gt;") && page.contains("&lt;oops&gt;"));
        for id in [
            "coverage",
            "performance",
            "cost",
            "energy",
            "capacity",
            "accuracy",
            "starts",
            "workloads",
            "turns",
            "failures",
        ] {
            assert!(page.contains(&format!("id=\"{id}\"")), "section {id}");
        }
        // Two latency charts of 4 points and a scatter of 4 points.
        assert_eq!(page.matches(r#"class="pt""#).count(), 12);
        assert!(page.contains(r#"class="front""#));
        assert!(page.contains("weights need 168.0 GB"));
        // The series verdict, with its worst regression escaped.
        assert!(page.contains(r#"<p id="verdict">"#) && page.contains("regressed</strong>"));
        assert!(
            page.contains("ttft_p90 &lt;m&gt;") && page.contains("+25.0%"),
            "{page}"
        );
        // One step with prefix-cache figures: its row, in percent.
        assert_eq!(page.matches("reset (/reset_prefix_cache)").count(), 1);
        assert!(page.contains(">76.2<") && page.contains(">75.9<"), "{page}");
        // One multi-turn step: first against later turns, and by position.
        assert!(page.contains(">80 · 12 · 13<"), "{page}");
        assert!(!page.contains("No step held conversations"));
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    }
}
