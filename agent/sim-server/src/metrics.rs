//! The simulator's own counters and gauges, rendered as Prometheus text at `GET /metrics`.
//!
//! Names follow vLLM's (`vllm:num_requests_running` → `sim:num_requests_running`) so dashboards
//! and scrapers written for vLLM need only the prefix changed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Live counters of one simulated server.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Requests holding a running slot (prefill or decode).
    pub running: AtomicUsize,
    /// Requests waiting for a running slot.
    pub waiting: AtomicUsize,
    /// Prompt tokens of every admitted request.
    pub prompt_tokens: AtomicU64,
    /// Output tokens generated.
    pub generation_tokens: AtomicU64,
    /// Requests that generated all their tokens.
    pub requests_finished: AtomicU64,
    /// Requests that ended before generating all their tokens (client gone, shutdown).
    pub requests_aborted: AtomicU64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: AtomicU64,
    /// Prompt tokens the prefix cache had.
    pub prefix_cache_hits: AtomicU64,
}

impl Stats {
    /// Prometheus text exposition (format 0.0.4) of every metric, labelled with `model`.
    pub fn render(&self, model: &str) -> String {
        let model = escape_label(model);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauges = [
            (
                "sim:num_requests_running",
                "Requests in prefill or decode.",
                self.running.load(Ordering::Relaxed) as u64,
            ),
            (
                "sim:num_requests_waiting",
                "Requests waiting for a running slot.",
                self.waiting.load(Ordering::Relaxed) as u64,
            ),
        ];
        let counters = [
            (
                "sim:prompt_tokens_total",
                "Prompt tokens of admitted requests.",
                load(&self.prompt_tokens),
            ),
            (
                "sim:generation_tokens_total",
                "Output tokens generated.",
                load(&self.generation_tokens),
            ),
            (
                "sim:request_success_total",
                "Requests that generated all their tokens.",
                load(&self.requests_finished),
            ),
            (
                "sim:request_aborted_total",
                "Requests that ended early (client disconnected or shutdown).",
                load(&self.requests_aborted),
            ),
            (
                "sim:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
                load(&self.prefix_cache_queries),
            ),
            (
                "sim:prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
                load(&self.prefix_cache_hits),
            ),
        ];
        let mut out = String::with_capacity(1024);
        for (kind, rows) in [("gauge", &gauges[..]), ("counter", &counters[..])] {
            for (name, help, value) in rows {
                // Writing into a String cannot fail.
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {value}\n"
                );
            }
        }
        out
    }
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let stats = Stats::default();
        stats.running.store(3, Ordering::Relaxed);
        stats.generation_tokens.store(42, Ordering::Relaxed);
        let text = stats.render("m\"1");
        assert!(text.contains("# TYPE sim:num_requests_running gauge\n"));
        assert!(text.contains("sim:num_requests_running{model_name=\"m\\\"1\"} 3\n"));
        assert!(text.contains("# TYPE sim:generation_tokens_total counter\n"));
        assert!(text.contains("sim:generation_tokens_total{model_name=\"m\\\"1\"} 42\n"));
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 8);
    }
}
