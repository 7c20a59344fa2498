//! The report section about what workloads did to the servers: per step with figures, the
//! prefix cache's policy and its expected and measured hit rates next to TTFT.

use super::ReportData;
use super::html::{Cell, num, table};
use crate::analysis::points::Point;

/// Steps' prefix-cache figures; a line saying there are none otherwise.
pub fn prefix_cache(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="workloads">Prefix cache</h2>"#);
    let mut steps: Vec<&Point> = data
        .points
        .iter()
        .filter(|p| {
            p.workload_facts
                .as_ref()
                .and_then(|w| w.prefix_cache.as_ref())
                .is_some_and(|c| c.expected_hit_rate.is_some() || c.server_hit_rate.is_some())
        })
        .collect();
    if steps.is_empty() {
        html.push_str(
            "<p>No step has prefix-cache figures (shared-prefix workloads, or servers that \
             export their cache counters; docs/matrix.md).</p>",
        );
        return html;
    }
    steps.sort_by(|a, b| {
        (a.config.to_string(), &a.workload, a.load_value, a.repeat)
            .partial_cmp(&(b.config.to_string(), &b.workload, b.load_value, b.repeat))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    html.push_str(
        "<p>Per step: how the cache left by earlier steps was kept out (the workload's \
         <code>prefix_cache</code> policy), the fraction of prompt tokens an empty cache \
         would hit given the prompts' shared prefixes, and the fraction the server's own \
         counters report, next to TTFT.</p>",
    );
    let percent = |v: Option<f64>| num(v.map(|v| v * 100.0));
    let rows: Vec<Vec<Cell>> = steps
        .iter()
        .map(|p| {
            let cache = p
                .workload_facts
                .as_ref()
                .and_then(|w| w.prefix_cache.as_ref())
                .expect("filtered above");
            let done = match (&cache.reset_by, cache.salted) {
                (Some(endpoint), _) => format!("reset ({endpoint})"),
                (None, true) => "prompts salted".to_owned(),
                (None, false) => "none".to_owned(),
            };
            vec![
                p.config.to_string().into(),
                p.workload.as_str().into(),
                p.load.as_str().into(),
                Cell::Num(p.repeat.to_string()),
                cache.policy.as_str().into(),
                done.into(),
                percent(cache.expected_hit_rate),
                percent(cache.server_hit_rate),
                num(p.metrics.ttft_ms.map(|s| s.p50)),
            ]
        })
        .collect();
    html.push_str(&table(
        "prefix-cache",
        &[
            "configuration",
            "workload",
            "load",
            "repeat",
            "policy",
            "before the step",
            "expected hit %",
            "server hit %",
            "TTFT p50 ms",
        ],
        &rows,
    ));
    html
}
