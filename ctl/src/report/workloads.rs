//! The report sections about what workloads did to the servers: per step with figures, the
//! prefix cache's policy and its expected and measured hit rates next to TTFT, and the
//! latency of multi-turn conversations by turn position.

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

/// Multi-turn steps' latency by turn position; a line saying there are none otherwise.
pub fn turns(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="turns">Multi-turn conversations</h2>"#);
    let mut steps: Vec<&Point> = data
        .points
        .iter()
        .filter(|p| p.metrics.turns.is_some())
        .collect();
    if steps.is_empty() {
        html.push_str(
            "<p>No step held conversations (<code>kind: conversations</code> datasets; \
             docs/matrix.md).</p>",
        );
        return html;
    }
    steps.sort_by(|a, b| {
        (a.config.to_string(), &a.workload, a.load_value, a.repeat)
            .partial_cmp(&(b.config.to_string(), &b.workload, b.load_value, b.repeat))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    html.push_str(
        "<p>Per step: conversations held and their turns, TTFT of first turns against later \
         turns (a later turn carries the whole conversation so far, which a server with a \
         prefix cache has computed already), TTFT p50 by turn position, inter-token latency, \
         and the server's prefix-cache hit rate where it exports one.</p>",
    );
    let rows: Vec<Vec<Cell>> = steps
        .iter()
        .map(|p| {
            let t = p.metrics.turns.as_ref().expect("filtered above");
            let p50 = |s: Option<evalctl_results::Summary>| num(s.map(|s| s.p50));
            let later = t.later.as_ref();
            let by_position: Vec<String> = t
                .by_position
                .iter()
                .map(|f| {
                    f.ttft_ms
                        .map_or_else(|| "-".to_owned(), |s| format!("{:.0}", s.p50))
                })
                .collect();
            let server_hit = p
                .workload_facts
                .as_ref()
                .and_then(|w| w.prefix_cache.as_ref())
                .and_then(|c| c.server_hit_rate);
            vec![
                p.config.to_string().into(),
                p.workload.as_str().into(),
                p.load.as_str().into(),
                Cell::Num(p.repeat.to_string()),
                Cell::Num(t.conversations.to_string()),
                num(Some(t.mean_turns)),
                p50(t.first.ttft_ms),
                p50(later.and_then(|l| l.ttft_ms)),
                by_position.join(" · ").into(),
                p50(t.first.itl_ms),
                p50(later.and_then(|l| l.itl_ms)),
                num(server_hit.map(|v| v * 100.0)),
            ]
        })
        .collect();
    html.push_str(&table(
        "turns",
        &[
            "configuration",
            "workload",
            "load",
            "repeat",
            "conversations",
            "turns each",
            "TTFT p50 first ms",
            "TTFT p50 later ms",
            "TTFT p50 by turn ms",
            "ITL p50 first ms",
            "ITL p50 later ms",
            "server hit %",
        ],
        &rows,
    ));
    html
}
