//! Report sections about the campaign as a whole: its summary, matrix coverage (done,
//! failed, pruned and excluded, with reasons) and failures with their log tails.

use std::fmt::Write;

use evalctl_proto::v1 as pb;

use super::ReportData;
use super::html::{Cell, escape, table};
use crate::render;

/// The summary: counts of units, steps and dropped combinations.
pub fn summary(data: &ReportData) -> String {
    let c = &data.campaign;
    let units = c.units.unwrap_or_default();
    let steps = c.steps.unwrap_or_default();
    let pruned = data.dropped.iter().filter(|d| d.kind == "pruned").count();
    let excluded = data.dropped.len() - pruned;
    let count = |n: u64| Cell::Num(n.to_string());
    let rows = vec![
        vec![
            "units".into(),
            count(units.total),
            count(units.succeeded),
            count(units.failed),
            count(units.cancelled),
            count(units.leased),
            count(units.pending),
        ],
        vec![
            "steps".into(),
            count(steps.total),
            count(steps.succeeded),
            count(steps.failed),
            count(steps.cancelled),
            count(steps.leased),
            count(steps.pending),
        ],
    ];
    let mut html = String::from(r#"<h2 id="coverage">Summary and matrix coverage</h2>"#);
    html.push_str(&table(
        "counts",
        &[
            "",
            "total",
            "done",
            "failed",
            "cancelled",
            "running",
            "pending",
        ],
        &rows,
    ));
    let _ = write!(
        html,
        "<p>The matrix dropped {} combinations: {pruned} pruned (weights do not fit), {excluded} excluded by the matrix. Preemptions: {} ({:.0} s of work lost).</p>",
        data.dropped.len(),
        c.preemptions,
        c.preemption_lost_ms as f64 / 1000.0
    );
    if let Some(series) = &data.series {
        html.push_str(&series_verdict(series));
    }
    html.push_str("<h3>Units</h3>");
    let unit_rows: Vec<Vec<Cell>> = data
        .units
        .iter()
        .map(|u| {
            vec![
                u.label.as_str().into(),
                render::unit_outcome(u).into(),
                Cell::Num(format!("{}/{}", u.steps_succeeded, u.steps)),
                Cell::Num(u.tries.to_string()),
                first_line(&u.last_error).into(),
            ]
        })
        .collect();
    html.push_str(&table(
        "units",
        &["unit", "state", "steps done", "tries", "last error"],
        &unit_rows,
    ));
    if !data.dropped.is_empty() {
        html.push_str("<h3>Dropped combinations</h3>");
        let rows: Vec<Vec<Cell>> = data
            .dropped
            .iter()
            .map(|d| {
                vec![
                    d.kind.as_str().into(),
                    d.label.as_str().into(),
                    d.reason.as_str().into(),
                ]
            })
            .collect();
        html.push_str(&table("dropped", &["kind", "combination", "reason"], &rows));
    }
    html
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 160 {
        let mut short: String = line.chars().take(160).collect();
        short.push('…');
        short
    } else {
        line.to_owned()
    }
}

/// Failed units with their last error and the tail of their server log; units whose model
/// ran out of memory come first, as configurations that do not fit, not as failures.
pub fn failures(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="failures">Failures</h2>"#);
    let (not_fitting, failed): (Vec<&pb::UnitSummary>, Vec<&pb::UnitSummary>) = data
        .units
        .iter()
        .filter(|u| u.state == pb::UnitState::Failed as i32)
        .partition(|u| render::does_not_fit(u));
    if !not_fitting.is_empty() {
        html.push_str(
            "<h3>Does not fit</h3><p>These configurations ran out of memory loading the model or sizing its KV cache. They were not retried: they need more memory, more GPUs or a smaller quantization.</p>",
        );
        failure_entries(&mut html, &not_fitting);
    }
    if failed.is_empty() {
        html.push_str("<p>No unit failed.</p>");
        return html;
    }
    if !not_fitting.is_empty() {
        html.push_str("<h3>Failed</h3>");
    }
    failure_entries(&mut html, &failed);
    html
}

/// One block per unit: its last error and the end of its server log.
fn failure_entries(html: &mut String, units: &[&pb::UnitSummary]) {
    for u in units {
        let _ = write!(
            html,
            r#"<div class="failure"><h3 class="state-failed">{}</h3><p>Tries: {}. Last error: {}</p>"#,
            escape(&u.label),
            u.tries,
            escape(if u.last_error.is_empty() {
                "(none recorded)"
            } else {
                &u.last_error
            })
        );
        if u.log_tail.is_empty() {
            html.push_str("<p>No server log was kept for this failure.</p>");
        } else {
            let _ = write!(
                html,
                r#"<p>End of the server log:</p><pre class="log">{}</pre>"#,
                escape(&u.log_tail)
            );
        }
        html.push_str("</div>");
    }
}

/// The series paragraph: predecessor, baseline and the verdict with its worst regressions.
fn series_verdict(series: &crate::render::SeriesJson) -> String {
    let verdict = match series.verdict.as_deref() {
        None => "not judged yet (the campaign has not ended)".to_owned(),
        Some("regressed") => format!(
            "<strong class=\"state-failed\">regressed</strong>: {} regressions, {} improvements over {} matched steps",
            series.regressions, series.improvements, series.matched_steps
        ),
        Some("passed") => format!(
            "<strong class=\"state-succeeded\">passed</strong>: no regression over {} matched steps ({} improvements)",
            series.matched_steps, series.improvements
        ),
        Some("no_baseline") => {
            "no baseline: no earlier campaign of the series succeeded".to_owned()
        }
        Some(other) => escape(other),
    };
    let mut html = format!(
        "<p id=\"verdict\">Series <strong>{}</strong> · predecessor {} · baseline {}{} · verdict {verdict}.</p>",
        escape(&series.series),
        escape(series.predecessor.as_deref().unwrap_or("none")),
        escape(series.baseline.as_deref().unwrap_or("none")),
        if series.baseline_pinned {
            " (pinned)"
        } else {
            ""
        },
    );
    if !series.worst.is_empty() {
        html.push_str("<ul>");
        for w in &series.worst {
            let _ = write!(html, "<li>{}</li>", escape(w));
        }
        html.push_str("</ul>");
    }
    html
}
