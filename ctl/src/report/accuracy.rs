//! The report's "Accuracy" section: per model, each deployment's accuracy scores (value ±
//! standard error over the samples its harness ran) beside its best measured output
//! throughput and capacity, and a chart per score, so a faster deployment that lost
//! accuracy shows both at once.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::ReportData;
use super::html::{Cell, escape, num, table};
use super::svg::{self, Bar};
use crate::analysis::accuracy::{DeploymentScore, value_text};

/// The section, with an explanation when no harness measured accuracy.
pub fn section(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="accuracy">Accuracy</h2>"#);
    if data.accuracy.is_empty() {
        html.push_str(
            "<p>No accuracy score is stored. An <code>api: lm-eval</code> workload \
             (docs/accuracy.md) runs lm-evaluation-harness against each deployment's server \
             beside its performance steps.</p>",
        );
        return html;
    }
    html.push_str(
        "<p>Scores of each deployment's accuracy harness (mean over its steps, ± the \
         standard error the harness reported), beside the best output throughput measured \
         on the same deployment. Names are the harness's own: lm-eval's \
         <code>task/metric,filter</code>.</p>",
    );
    let mut by_model: BTreeMap<&str, Vec<&DeploymentScore>> = BTreeMap::new();
    for s in &data.accuracy {
        by_model.entry(&s.model).or_default().push(s);
    }
    for (model, scores) in by_model {
        let _ = write!(html, "<h3>{}</h3>", escape(model));
        html.push_str(&deployment_table(data, &scores));
        html.push_str("<div class=\"charts\">");
        let mut names: Vec<&str> = scores.iter().map(|s| s.score.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            html.push_str(&score_chart(model, name, &scores));
        }
        html.push_str("</div>");
    }
    html
}

/// One row per deployment: its scores, best output tok/s and capacity.
fn deployment_table(data: &ReportData, scores: &[&DeploymentScore]) -> String {
    let mut names: Vec<&str> = scores.iter().map(|s| s.score.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut configs: Vec<&str> = scores.iter().map(|s| s.config.as_str()).collect();
    configs.sort_unstable();
    configs.dedup();
    let rows: Vec<Vec<Cell>> = configs
        .iter()
        .map(|config| {
            let mut row: Vec<Cell> = vec![(*config).into()];
            for name in &names {
                row.push(
                    match scores
                        .iter()
                        .find(|s| s.config == *config && s.score == *name)
                    {
                        Some(s) => Cell::Num(format!(
                            "{}{}",
                            value_text(s.value, s.stderr),
                            s.samples.map_or_else(String::new, |n| format!(" (n={n})"))
                        )),
                        None => Cell::Num("–".to_owned()),
                    },
                );
            }
            let best = data
                .points
                .iter()
                .filter(|p| p.config.to_string() == *config)
                .map(|p| p.metrics.output_token_throughput)
                .fold(None, |best: Option<f64>, v| {
                    Some(best.map_or(v, |b| b.max(v)))
                });
            row.push(num(best));
            let capacity = data
                .capacities
                .iter()
                .filter(|c| c.config == *config)
                .filter_map(|c| c.capacity.map(|v| (c.over, v)))
                .map(|(over, v)| crate::analysis::capacity::load_text(over, Some(v)))
                .collect::<Vec<_>>()
                .join(", ");
            row.push(Cell::Num(if capacity.is_empty() {
                "–".to_owned()
            } else {
                capacity
            }));
            row
        })
        .collect();
    let mut headers = vec!["deployment"];
    headers.extend(names.iter().copied());
    headers.extend(["best output tok/s", "capacity at SLO"]);
    table("accuracy", &headers, &rows)
}

/// One score across the model's deployments, best first.
fn score_chart(model: &str, name: &str, scores: &[&DeploymentScore]) -> String {
    let mut rows: Vec<&&DeploymentScore> = scores.iter().filter(|s| s.score == name).collect();
    let higher_is_better = rows.first().is_none_or(|s| s.higher_is_better);
    rows.sort_by(|a, b| {
        let order = b.value.total_cmp(&a.value);
        if higher_is_better {
            order
        } else {
            order.reverse()
        }
    });
    let bars: Vec<Bar> = rows
        .iter()
        .map(|s| Bar {
            label: s
                .config
                .strip_prefix(&format!("{model} / "))
                .unwrap_or(&s.config)
                .to_owned(),
            value: s.value,
            detail: value_text(s.value, s.stderr),
        })
        .collect();
    svg::bar_chart(
        &format!(
            "{model}: {name} ({} is better)",
            if higher_is_better { "higher" } else { "lower" }
        ),
        name,
        &bars,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::{deployment_score, report_data};

    fn score(config: &str, value: f64) -> DeploymentScore {
        deployment_score(&format!("m / cpu x1 / {config} / bf16"), value)
    }

    fn data(accuracy: Vec<DeploymentScore>) -> ReportData {
        ReportData {
            accuracy,
            ..report_data()
        }
    }

    #[test]
    fn every_deployment_is_tabled_and_charted_best_first() {
        let page = section(&data(vec![score("poor", 0.5), score("good", 0.8)]));
        assert_eq!(page.matches(r#"<rect class="bar""#).count(), 2, "{page}");
        assert!(page.contains("0.800 ± 0.050 (n=50)"), "{page}");
        let good = page.find("<title>cpu x1 / good / bf16").unwrap();
        let poor = page.find("<title>cpu x1 / poor / bf16").unwrap();
        assert!(good < poor, "highest accuracy first: {page}");
        assert_eq!(page.matches("<tr>").count(), 1 + 2);
    }

    #[test]
    fn without_scores_the_section_says_how_to_get_them() {
        assert!(section(&data(Vec::new())).contains("No accuracy score is stored"));
    }
}
