//! Accuracy scores: what an evaluation harness measured, typed, with its standard error.
//!
//! Two harness shapes give scores:
//!
//! - lm-evaluation-harness (an `api: lm-eval` workload): its results JSON holds, per task,
//!   keys `metric,filter` (e.g. `exact_match,strict-match`) with `metric_stderr,filter`
//!   beside them, `higher_is_better` per task and metric, and `n-samples` per task. Each
//!   becomes a score named `task/metric,filter` — lm-eval's own keys, filter included — so
//!   that names read the same in lm-eval's table and in evalctl's.
//! - Any other harness (`api: command`): each numeric value the matrix's `metrics` names is a
//!   score, and a value named `X_stderr` is the standard error of `X`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Suffix of a harness value that is another value's standard error.
pub const STDERR_SUFFIX: &str = "_stderr";

/// One accuracy figure of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// `task/metric,filter` for lm-eval; the matrix's metric name for other harnesses.
    pub name: String,
    /// The value (a fraction for accuracies).
    pub value: f64,
    /// Its standard error, when the harness gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<f64>,
    /// Samples it was measured on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Whether a larger value is better (accuracy) or worse (perplexity).
    #[serde(default = "higher")]
    pub higher_is_better: bool,
}

fn higher() -> bool {
    true
}

/// The scores of an lm-eval results document (the JSON lm-eval writes under
/// `--output_path`), in task and key order. A document with no numeric metric is an error:
/// a harness that measured nothing must not pass for one that did.
pub fn from_lm_eval(document: &Value) -> Result<Vec<Score>, String> {
    let results = document
        .get("results")
        .and_then(Value::as_object)
        .ok_or("the lm-eval output has no `results` object")?;
    let mut scores = Vec::new();
    for (task, values) in results {
        let Some(values) = values.as_object() else {
            continue;
        };
        let samples = document
            .pointer(&format!("/n-samples/{}/effective", pointer_token(task)))
            .and_then(Value::as_u64)
            .or_else(|| values.get("sample_len").and_then(Value::as_u64));
        for (key, value) in values {
            let (Some(value), Some((metric, filter))) = (value.as_f64(), key.split_once(','))
            else {
                continue;
            };
            if metric.ends_with(STDERR_SUFFIX) {
                continue;
            }
            let stderr = values
                .get(&format!("{metric}{STDERR_SUFFIX},{filter}"))
                .and_then(Value::as_f64);
            let higher_is_better = document
                .pointer(&format!(
                    "/higher_is_better/{}/{}",
                    pointer_token(task),
                    pointer_token(metric)
                ))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            scores.push(Score {
                name: format!("{task}/{key}"),
                value,
                stderr,
                samples,
                higher_is_better,
            });
        }
    }
    if scores.is_empty() {
        return Err(format!(
            "the lm-eval output has no metric under `results` (tasks: {})",
            results.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(scores)
}

/// The scores of a harness's named values: each number, with `X_stderr` as the standard
/// error of `X` (and not a score of its own).
pub fn from_harness_values(values: &BTreeMap<String, Value>) -> Vec<Score> {
    values
        .iter()
        .filter(|(name, _)| {
            !name
                .strip_suffix(STDERR_SUFFIX)
                .is_some_and(|base| values.contains_key(base))
        })
        .filter_map(|(name, value)| {
            Some(Score {
                name: name.clone(),
                value: value.as_f64()?,
                stderr: values
                    .get(&format!("{name}{STDERR_SUFFIX}"))
                    .and_then(Value::as_f64),
                samples: None,
                higher_is_better: true,
            })
        })
        .collect()
}

/// `text` escaped as one JSON pointer token (RFC 6901).
fn pointer_token(text: &str) -> String {
    text.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lm_eval_results_become_named_scores_with_their_errors() {
        let document = json!({
            "results": {
                "gsm8k": {
                    "alias": "gsm8k",
                    "exact_match,strict-match": 0.75,
                    "exact_match_stderr,strict-match": 0.02,
                    "exact_match,flexible-extract": 0.8,
                    "exact_match_stderr,flexible-extract": "N/A"
                },
                "wikitext": {"word_perplexity,none": 12.5, "sample_len": 62}
            },
            "higher_is_better": {"gsm8k": {"exact_match": true}, "wikitext": {"word_perplexity": false}},
            "n-samples": {"gsm8k": {"original": 1319, "effective": 400}}
        });
        let scores = from_lm_eval(&document).unwrap();
        let names: Vec<_> = scores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gsm8k/exact_match,flexible-extract",
                "gsm8k/exact_match,strict-match",
                "wikitext/word_perplexity,none"
            ]
        );
        assert_eq!(scores[0].stderr, None);
        assert_eq!(scores[1].stderr, Some(0.02));
        assert_eq!(scores[1].samples, Some(400));
        assert!(scores[1].higher_is_better);
        assert_eq!(scores[2].samples, Some(62));
        assert!(!scores[2].higher_is_better);
    }

    #[test]
    fn an_lm_eval_output_without_metrics_is_an_error() {
        let err = from_lm_eval(&json!({"results": {"t": {"alias": "t"}}})).unwrap_err();
        assert!(err.contains("no metric") && err.contains('t'), "{err}");
        assert!(from_lm_eval(&json!({})).unwrap_err().contains("`results`"));
    }

    #[test]
    fn harness_values_pair_with_their_stderr() {
        let values = BTreeMap::from([
            ("acc".to_owned(), json!(0.6)),
            ("acc_stderr".to_owned(), json!(0.05)),
            ("label".to_owned(), json!("v2")),
            ("f1".to_owned(), json!(0.4)),
        ]);
        let scores = from_harness_values(&values);
        assert_eq!(scores.len(), 2);
        assert_eq!(
            (scores[0].name.as_str(), scores[0].stderr),
            ("acc", Some(0.05))
        );
        assert_eq!((scores[1].name.as_str(), scores[1].stderr), ("f1", None));
    }
}
