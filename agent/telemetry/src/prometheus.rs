//! The Prometheus text exposition format (0.0.4) as inference servers expose it at
//! `/metrics`, the series kept per framework, and their summary over a step.
//!
//! A small parser of our own rather than a crate: the available crates are either
//! unmaintained (prometheus-parse's last release is from 2023 and pulls in chrono and regex
//! for what is a line format) or full client libraries. We need sample lines only — name,
//! labels, value — plus `# TYPE` lines to tell counters from gauges; histograms and
//! summaries come through as their `_bucket`/`_sum`/`_count` samples, which the kept series
//! do not use.

use std::collections::BTreeMap;

use evalctl_results::telemetry::{SeriesKind, SeriesSummary};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `vllm:num_requests_running`.
    pub name: String,
    /// Labels in the order written.
    pub labels: Labels,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Sample lines in order.
    pub samples: Vec<Sample>,
    /// `# TYPE` of each metric family that declared one ("counter", "gauge", …).
    pub types: BTreeMap<String, String>,
}

/// A line the parser could not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses exposition text. Comments other than `# TYPE` are skipped; a sample's optional
/// timestamp is ignored.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let error = |message: &str| ParseError {
            line: i + 1,
            message: message.to_owned(),
        };
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE")
                && let (Some(name), Some(kind)) = (words.next(), words.next())
            {
                out.types.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| error("a sample without a value"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(error("invalid metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(after_brace).map_err(|m| error(&m))?;
            labels = parsed;
            rest = after;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| error("a sample without a value"))?;
        let value = parse_value(value).ok_or_else(|| error("the value is not a number"))?;
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A sample's labels, in the order written.
type Labels = Vec<(String, String)>;

/// Labels after the `{`, and the text after the closing `}`.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = text.find('=').ok_or("a label without `=`")?;
        let key = text[..eq].trim();
        if !valid_name(key) || key.contains(':') {
            return Err(format!("invalid label name `{key}`"));
        }
        text = text[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("an unterminated label value".into()),
            }
        };
        labels.push((key.to_owned(), value));
        text = text[end + 1..].trim_start();
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// The series evalctl keeps, by engine. Each engine names its own (`vllm:`, `sglang:`,
/// `tgi_`, `llamacpp:`, `sim:`), so one list serves every server: a framework keeps what its
/// server exposes, whatever the matrix calls it (`vllm-eager` with `preset: vllm`, or a
/// command of one's own that runs vLLM). Names a version does not expose are absent.
const ENGINE_SERIES: &[(&str, &[(&str, SeriesKind)])] = {
    use SeriesKind::{Counter, Gauge};
    &[
        (
            "vllm",
            &[
                ("vllm:gpu_cache_usage_perc", Gauge), // vLLM V0
                ("vllm:kv_cache_usage_perc", Gauge),  // vLLM V1
                ("vllm:num_requests_running", Gauge),
                ("vllm:num_requests_waiting", Gauge),
                ("vllm:num_preemptions_total", Counter),
                ("vllm:prompt_tokens_total", Counter),
                ("vllm:generation_tokens_total", Counter),
                // Prefix caching, in tokens: the step's hit rate is hits / queries.
                ("vllm:prefix_cache_queries_total", Counter),
                ("vllm:prefix_cache_hits_total", Counter),
            ],
        ),
        (
            "sglang",
            &[
                ("sglang:token_usage", Gauge),
                ("sglang:num_running_reqs", Gauge),
                ("sglang:num_queue_reqs", Gauge),
                ("sglang:cache_hit_rate", Gauge),
                ("sglang:prompt_tokens_total", Counter),
                // Prefix cache hits in tokens: the step's hit rate is cached / prompt tokens
                // (`cache_hit_rate` is a gauge over the server's lifetime).
                ("sglang:cached_tokens_total", Counter),
                ("sglang:generation_tokens_total", Counter),
            ],
        ),
        (
            "tgi",
            &[
                ("tgi_queue_size", Gauge),
                ("tgi_batch_current_size", Gauge),
                ("tgi_batch_current_max_tokens", Gauge),
                ("tgi_request_count", Counter),
                ("tgi_request_success", Counter),
            ],
        ),
        (
            "llamacpp",
            &[
                ("llamacpp:kv_cache_usage_ratio", Gauge),
                ("llamacpp:kv_cache_tokens", Gauge),
                ("llamacpp:requests_processing", Gauge),
                ("llamacpp:requests_deferred", Gauge),
                ("llamacpp:prompt_tokens_total", Counter),
                ("llamacpp:tokens_predicted_total", Counter),
            ],
        ),
        (
            "sim",
            &[
                ("sim:num_requests_running", Gauge),
                ("sim:num_requests_waiting", Gauge),
                ("sim:prompt_tokens_total", Counter),
                ("sim:generation_tokens_total", Counter),
                ("sim:request_success_total", Counter),
                ("sim:request_aborted_total", Counter),
                ("sim:prefix_cache_queries_total", Counter),
                ("sim:prefix_cache_hits_total", Counter),
            ],
        ),
    ]
};

/// Every kept series of every engine (see [`ENGINE_SERIES`]).
pub fn kept_series() -> &'static [(&'static str, SeriesKind)] {
    static KEPT: std::sync::LazyLock<Vec<(&'static str, SeriesKind)>> =
        std::sync::LazyLock::new(|| {
            ENGINE_SERIES
                .iter()
                .flat_map(|(_, series)| series.iter().copied())
                .collect()
        });
    &KEPT
}

/// The kept series of one engine (`vllm`, `sglang`, `tgi`, `llamacpp`, `sim`), for docs and
/// tests; empty for another name.
pub fn engine_series(engine: &str) -> &'static [(&'static str, SeriesKind)] {
    ENGINE_SERIES
        .iter()
        .find(|(name, _)| *name == engine)
        .map_or(&[], |(_, series)| series)
}

/// The kept series' values in one exposition, by name. A name with several label sets
/// (several models or engines) is summed, except ratios (`_perc`, `_usage`, `_ratio`,
/// `_rate`), which are averaged.
pub fn select(exposition: &Exposition, kept: &[(&str, SeriesKind)]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, _) in kept {
        let values: Vec<f64> = exposition
            .samples
            .iter()
            .filter(|s| s.name == *name && s.value.is_finite())
            .map(|s| s.value)
            .collect();
        if values.is_empty() {
            continue;
        }
        let sum: f64 = values.iter().sum();
        let ratio = ["_perc", "_usage", "_ratio", "_rate"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        out.insert(
            (*name).to_owned(),
            if ratio {
                sum / values.len() as f64
            } else {
                sum
            },
        );
    }
    out
}

/// Summarises the selected values of successive scrapes (time order).
pub fn summarise_series(
    scrapes: &[&BTreeMap<String, f64>],
    kept: &[(&str, SeriesKind)],
) -> BTreeMap<String, SeriesSummary> {
    let mut out = BTreeMap::new();
    for (name, kind) in kept {
        let values: Vec<f64> = scrapes
            .iter()
            .filter_map(|s| s.get(*name).copied())
            .collect();
        if values.is_empty() {
            continue;
        }
        let summary = match kind {
            SeriesKind::Gauge => SeriesSummary {
                kind: *kind,
                scrapes: values.len() as u32,
                mean: Some(values.iter().sum::<f64>() / values.len() as f64),
                max: values.iter().copied().reduce(f64::max),
                delta: None,
            },
            SeriesKind::Counter => SeriesSummary {
                kind: *kind,
                scrapes: values.len() as u32,
                mean: None,
                max: None,
                delta: Some(
                    values
                        .windows(2)
                        .map(|w| if w[1] >= w[0] { w[1] - w[0] } else { w[1] })
                        .sum(),
                ),
            },
        };
        out.insert((*name).to_owned(), summary);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 3 1712345678000
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 12
vllm:weird{path="a\"b\\c\nd"} NaN
process_start_time_seconds 1.7e9
"#;

    #[test]
    fn parses_names_labels_values_and_types() {
        let e = parse(VLLM).unwrap();
        assert_eq!(e.samples.len(), 7);
        assert_eq!(e.samples[0].name, "vllm:num_requests_running");
        assert_eq!(
            e.samples[0].labels,
            [
                ("engine".to_owned(), "0".to_owned()),
                (
                    "model_name".to_owned(),
                    "meta-llama/Llama-3.1-8B".to_owned()
                )
            ]
        );
        assert_eq!(e.samples[0].value, 7.0);
        assert_eq!(e.samples[3].value, 3.0, "timestamp ignored");
        assert_eq!(e.samples[4].labels[0].1, "+Inf");
        assert_eq!(e.samples[5].labels[0].1, "a\"b\\c\nd");
        assert!(e.samples[5].value.is_nan());
        assert_eq!(e.samples[6].value, 1.7e9);
        assert_eq!(e.types["vllm:num_preemptions_total"], "counter");
    }

    #[test]
    fn rejects_what_is_not_exposition_text() {
        for bad in [
            "<html>",
            "m{a=\"1\" 2",
            "m{a=1} 2",
            "m abc",
            "9m 1",
            "m{a=\"1\"b=\"2\"} 3",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("").unwrap(), Exposition::default());
    }

    #[test]
    fn selects_kept_series_summing_counts_and_averaging_ratios() {
        let selected = select(&parse(VLLM).unwrap(), kept_series());
        assert_eq!(selected["vllm:num_requests_running"], 7.0);
        assert_eq!(selected["vllm:kv_cache_usage_perc"], 0.5);
        assert_eq!(selected["vllm:num_preemptions_total"], 3.0);
        assert!(
            !selected.contains_key("vllm:num_requests_waiting"),
            "not exposed"
        );
        assert!(engine_series("unknown").is_empty());
    }

    #[test]
    fn prefix_cache_counters_are_kept_as_deltas_whatever_the_framework_is_called() {
        // vLLM V1's prefix cache counters, in tokens, before and after a step.
        let before = "# TYPE vllm:prefix_cache_queries_total counter\n\
                      vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 1000\n\
                      # TYPE vllm:prefix_cache_hits_total counter\n\
                      vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 100\n";
        let after = before
            .replace("} 1000", "} 5000")
            .replace("} 100\n", "} 3100\n");
        let scrapes =
            [before, after.as_str()].map(|text| select(&parse(text).unwrap(), kept_series()));
        let refs: Vec<&BTreeMap<String, f64>> = scrapes.iter().collect();
        let summary = summarise_series(&refs, kept_series());
        let queries = summary["vllm:prefix_cache_queries_total"].delta.unwrap();
        let hits = summary["vllm:prefix_cache_hits_total"].delta.unwrap();
        assert_eq!((queries, hits), (4000.0, 3000.0), "a 75% hit rate");
        assert_eq!(
            summary.len(),
            2,
            "only what the server exposed: {summary:?}"
        );
        // Every engine's list is in the union, and no name is listed twice.
        for engine in ["vllm", "sglang", "tgi", "llamacpp", "sim"] {
            for series in engine_series(engine) {
                assert!(kept_series().contains(series), "{engine}: {series:?}");
            }
        }
        let mut names: Vec<&str> = kept_series().iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), kept_series().len());
    }

    #[test]
    fn gauges_get_mean_and_max_counters_their_delta_across_restarts() {
        let scrapes: Vec<BTreeMap<String, f64>> = [(2.0, 10.0), (6.0, 15.0), (4.0, 3.0)]
            .iter()
            .map(|&(running, finished)| {
                BTreeMap::from([
                    ("sim:num_requests_running".to_owned(), running),
                    ("sim:request_success_total".to_owned(), finished),
                ])
            })
            .collect();
        let refs: Vec<_> = scrapes.iter().collect();
        let s = summarise_series(&refs, engine_series("sim"));
        let running = &s["sim:num_requests_running"];
        assert_eq!((running.mean, running.max), (Some(4.0), Some(6.0)));
        // 10 → 15 (+5), then a restart to 3 (+3).
        assert_eq!(s["sim:request_success_total"].delta, Some(8.0));
        assert_eq!(s["sim:request_success_total"].scrapes, 3);
        assert!(!s.contains_key("sim:num_requests_waiting"));
    }

    #[test]
    fn parses_what_the_simulator_renders() {
        let text = "# HELP sim:num_requests_running Requests.\n# TYPE sim:num_requests_running gauge\nsim:num_requests_running{model_name=\"m\\\"1\"} 3\n";
        let e = parse(text).unwrap();
        assert_eq!(e.samples[0].labels[0].1, "m\"1");
        assert_eq!(e.samples[0].value, 3.0);
    }

    proptest! {
        #[test]
        fn rendered_samples_parse_back(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            label in "[a-zA-Z_][a-zA-Z0-9_]{0,10}",
            value_text in "[ -~]{0,20}",
            value in -1e12f64..1e12,
        ) {
            let escaped = value_text.replace('\\', "\\\\").replace('"', "\\\"");
            let text = format!("{name}{{{label}=\"{escaped}\"}} {value}\n");
            let e = parse(&text).unwrap();
            prop_assert_eq!(e.samples.len(), 1);
            prop_assert_eq!(&e.samples[0].name, &name);
            prop_assert_eq!(&e.samples[0].labels[0], &(label, value_text));
            prop_assert_eq!(e.samples[0].value, value);
        }

        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }
}
