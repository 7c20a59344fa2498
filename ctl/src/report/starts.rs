//! The report's "Cold starts" section: per framework and model, how long its servers took
//! from process start to a passing health check, and the phases their port and log told
//! apart (docs/telemetry.md#cold-starts). Units that reused a warm server paid no start and
//! are not counted.

use std::collections::BTreeMap;

use super::ReportData;
use super::html::{Cell, num, table};
use crate::analysis::points::ColdStart;
use crate::analysis::recommend::median;

/// The section, with an explanation when no start is recorded.
pub fn section(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="starts">Cold starts</h2>"#);
    if data.starts.is_empty() {
        html.push_str(
            "<p>No server start is recorded (agents older than schema 1.7 do not record \
             them).</p>",
        );
        return html;
    }
    html.push_str(
        "<p>Seconds from starting each server's process until its port accepted connections, \
         its log said the weights were loaded, and its health check passed (median and \
         slowest over the starts; – where the server does not tell the phase apart). Units \
         that reused a warm server are not counted.</p>",
    );
    let mut groups: BTreeMap<(&str, &str), Vec<&ColdStart>> = BTreeMap::new();
    for s in &data.starts {
        groups
            .entry((&s.config.framework, &s.config.model))
            .or_default()
            .push(s);
    }
    let rows: Vec<Vec<Cell>> = groups
        .into_iter()
        .map(|((framework, model), starts)| {
            let phase =
                |f: fn(&ColdStart) -> Option<f64>| median(starts.iter().filter_map(|s| f(s)));
            let ready: Vec<f64> = starts.iter().map(|s| s.start.ready_s).collect();
            vec![
                framework.into(),
                model.into(),
                Cell::Num(starts.len().to_string()),
                num(phase(|s| s.start.listening_s)),
                num(phase(|s| s.start.weights_loaded_s)),
                num(median(ready.iter().copied())),
                num(ready.into_iter().reduce(f64::max)),
            ]
        })
        .collect();
    html.push_str(&table(
        "starts",
        &[
            "framework",
            "model",
            "starts",
            "port open (s)",
            "weights loaded (s)",
            "ready (s)",
            "slowest ready (s)",
        ],
        &rows,
    ));
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::report_data;
    use crate::analysis::points::Config;
    use evalctl_results::ServerStart;

    fn start(framework: &str, ready_s: f64, weights: Option<f64>) -> ColdStart {
        ColdStart {
            config: Config {
                model: "m".into(),
                gpu_type: "cpu".into(),
                gpu_count: 1,
                layout: String::new(),
                framework: framework.into(),
                quantization: "bf16".into(),
            },
            agent_id: format!("a-{ready_s}"),
            start: ServerStart {
                started_at_ms: 0,
                listening_s: Some(0.5),
                weights_loaded_s: weights,
                ready_s,
                reused: false,
            },
        }
    }

    #[test]
    fn starts_are_summarised_per_framework_and_model() {
        let data = ReportData {
            starts: vec![
                start("vllm", 40.0, Some(30.0)),
                start("vllm", 60.0, Some(50.0)),
                start("vllm", 50.0, None),
                start("sim", 2.0, None),
            ],
            ..report_data()
        };
        let page = section(&data);
        assert_eq!(page.matches("<tr>").count(), 1 + 2, "{page}");
        // vLLM: 3 starts, weights median of 30 and 50, ready median 50, slowest 60.
        assert!(
            page.contains(">40.0<") && page.contains(">50.0<") && page.contains(">60.0<"),
            "{page}"
        );
        assert!(section(&report_data()).contains("No server start is recorded"));
    }
}
