//! The report's "capacity at SLO" section (docs/capacity.md): per model, workload and
//! search axis, each searched deployment's capacity at its search's goal and the cost of a
//! million output tokens there, as bar charts, and a table with how each search ended.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::ReportData;
use super::html::{Cell, escape, num, table};
use super::svg::{self, Bar};
use crate::analysis::capacity::{Capacity, load_text};

/// The section, with an explanation in place of charts when no search is stored.
pub fn section(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="capacity">Capacity at SLO</h2>"#);
    if data.capacities.is_empty() {
        html.push_str(
            "<p>No capacity search is stored. A workload's <code>load: { search: … }</code> \
             (docs/capacity.md) finds each deployment's highest load that meets a latency \
             goal.</p>",
        );
        return html;
    }
    html.push_str(
        "<p>Each deployment's highest load that met its search's goal (probe runs judged on \
         their steady window, docs/capacity.md), the output tokens/s measured there, and the \
         cost of a million output tokens at that load. A deployment without a capacity shows \
         why its search stopped.</p>",
    );
    let currency = data.prices.currency_prefix();
    for ((model, workload, over), mut rows) in groups(&data.capacities) {
        rows.sort_by(|a, b| {
            b.capacity
                .unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&a.capacity.unwrap_or(f64::NEG_INFINITY))
                .then_with(|| a.server.cmp(&b.server))
        });
        let _ = write!(
            html,
            "<h3>{} — workload {} (search over {})</h3><div class=\"charts\">",
            escape(model),
            escape(workload),
            escape(over)
        );
        html.push_str(&capacity_chart(model, workload, over, &rows));
        html.push_str(&cost_chart(model, workload, &currency, &rows));
        html.push_str("</div>");
        html.push_str(&verdict_table(&rows));
    }
    html
}

/// Rows grouped by model, workload and search axis (capacities on different axes do not
/// share a scale).
fn groups(rows: &[Capacity]) -> BTreeMap<(&str, &str, &str), Vec<&Capacity>> {
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&Capacity>> = BTreeMap::new();
    for row in rows {
        groups
            .entry((&row.model, &row.workload, row.over))
            .or_default()
            .push(row);
    }
    groups
}

/// Capacity per deployment, highest first; deployments without one are left to the table.
fn capacity_chart(model: &str, workload: &str, over: &str, rows: &[&Capacity]) -> String {
    let bars: Vec<Bar> = rows
        .iter()
        .filter_map(|r| {
            r.capacity.map(|c| Bar {
                label: r.server.clone(),
                value: c,
                detail: format!("{} meeting {}", load_text(over, Some(c)), r.goal),
            })
        })
        .collect();
    if bars.is_empty() {
        return "<p>No deployment met the goal at any probed load.</p>".to_owned();
    }
    let unit = if over == "concurrency" {
        "concurrent requests"
    } else {
        "requests/s"
    };
    svg::bar_chart(
        &format!("{model} / {workload}: capacity at the goal (higher is better)"),
        &format!("{unit} at the goal"),
        &bars,
    )
}

/// Cost of a million output tokens at each priced capacity, cheapest first.
fn cost_chart(model: &str, workload: &str, currency: &str, rows: &[&Capacity]) -> String {
    let mut priced: Vec<(&Capacity, f64)> = rows
        .iter()
        .filter_map(|r| r.cost_per_million_tokens.map(|c| (*r, c)))
        .collect();
    if priced.is_empty() {
        return "<p>No GPU prices for these deployments: give <code>--cost-file</code> or \
                <code>price_per_hour</code> in the matrix's <code>gpus</code> for the cost \
                at capacity.</p>"
            .to_owned();
    }
    priced.sort_by(|a, b| {
        a.1.total_cmp(&b.1)
            .then_with(|| a.0.server.cmp(&b.0.server))
    });
    let bars: Vec<Bar> = priced
        .iter()
        .map(|(r, cost)| Bar {
            label: r.server.clone(),
            value: *cost,
            detail: format!(
                "{currency}{} per M output tokens at {}",
                svg::number(*cost),
                load_text(r.over, r.capacity)
            ),
        })
        .collect();
    svg::bar_chart(
        &format!(
            "{model} / {workload}: cost per million output tokens at capacity (lower is better)"
        ),
        &format!("{currency}per million output tokens"),
        &bars,
    )
}

/// Every search of the group: goal, verdict, probes, throughput and cost at capacity.
fn verdict_table(rows: &[&Capacity]) -> String {
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            vec![
                r.server.as_str().into(),
                r.goal.as_str().into(),
                Cell::Num(load_text(r.over, r.capacity)),
                Cell::Num(load_text(r.over, r.first_failing)),
                Cell::Num(format!("{} ({} runs)", r.probes, r.runs)),
                num(r.output_tok_s_per_gpu),
                num(r.cost_per_million_tokens),
                r.stopped_because.into(),
            ]
        })
        .collect();
    table(
        "capacity",
        &[
            "deployment",
            "goal",
            "capacity",
            "first failing",
            "loads probed",
            "output tok/s per GPU",
            "cost per M tokens",
            "stopped because",
        ],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::{capacity_row, report_data};

    fn data(capacities: Vec<Capacity>) -> ReportData {
        ReportData {
            capacities,
            ..report_data()
        }
    }

    #[test]
    fn capacities_and_costs_are_charted_best_first_and_every_search_is_tabled() {
        let page = section(&data(vec![
            capacity_row("A100 x1 / vllm / bf16", Some(40.0), 900.0, Some(0.31)),
            capacity_row("H100 x1 / vllm / fp8", Some(96.9), 2100.0, Some(0.13)),
            capacity_row("L4 x1 / <tgi> / bf16", None, 0.0, None),
            capacity_row("L40S x1 / vllm / bf16", Some(20.0), 450.0, None),
        ]));
        // Three capacities charted, two costs.
        assert_eq!(page.matches(r#"<rect class="bar""#).count(), 5, "{page}");
        let h100 = page
            .find("<title>H100 x1 / vllm / fp8: 96.9 req/s")
            .unwrap();
        let a100 = page
            .find("<title>A100 x1 / vllm / bf16: 40.0 req/s")
            .unwrap();
        assert!(h100 < a100, "highest capacity first");
        let cheap = page.find("0.130 per M").unwrap();
        assert!(cheap < page.find("0.310 per M").unwrap(), "cheapest first");
        // Every search in the table, the one without a capacity with its reason.
        assert_eq!(page.matches("<tr>").count(), 1 + 4);
        assert!(
            page.contains("L4 x1 / &lt;tgi&gt; / bf16"),
            "escaped: {page}"
        );
        assert!(page.contains("the lowest load already misses the goal"));
        assert!(
            page.contains(">41.6 req/s<"),
            "first failing of A100: {page}"
        );
    }

    #[test]
    fn without_searches_or_prices_the_section_says_what_is_missing() {
        assert!(section(&data(Vec::new())).contains("No capacity search is stored"));
        let unpriced = section(&data(vec![capacity_row("H100 x1", Some(9.0), 1.0, None)]));
        assert!(unpriced.contains("No GPU prices for these deployments"));
        assert_eq!(unpriced.matches(r#"<rect class="bar""#).count(), 1);
    }
}
