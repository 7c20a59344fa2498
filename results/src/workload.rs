//! What a step's workload was and what it did to the server: the dataset's kind, how close
//! generated prompts came to their target lengths, and the prefix cache — the policy that
//! kept one step's cache out of the next, and the hit rate the prompts imply next to the one
//! the server reported.

use serde::{Deserialize, Serialize};

/// A load step's workload facts, stored in its `StepDocument` (`workload`, schema 1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadFacts {
    /// The dataset kind: `random`, `shared_prefix`, `sharegpt`, `jsonl`.
    pub dataset: String,
    /// For generated prompts: their target lengths and the misses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lengths: Option<LengthReport>,
    /// The prefix cache over the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache: Option<PrefixCacheFacts>,
}

/// How close generated texts came to their target lengths in tokens. Texts are searched
/// until one counts exactly its target; where none is found in the search's bounds (a
/// tokenizer that joins words unpredictably), the closest is used and counted here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthReport {
    /// The target length of each text, in tokens (of a prompt; for shared-prefix prompts,
    /// of a prefix and of a suffix: see `suffix_target`).
    pub target: u64,
    /// For shared-prefix prompts: the suffixes' target length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_target: Option<u64>,
    /// Texts made.
    pub texts: u64,
    /// Texts whose length missed their target.
    pub missed: u64,
    /// The largest miss, in tokens.
    pub max_miss: u64,
}

impl LengthReport {
    /// Counts one text of `got` tokens made for `target`.
    pub fn add(&mut self, target: u64, got: u64) {
        self.texts += 1;
        if got != target {
            self.missed += 1;
            self.max_miss = self.max_miss.max(got.abs_diff(target));
        }
    }
}

/// How a shared-prefix prompt's prefix is chosen: the matrix says it, the coordinator sends
/// it, the load generator draws by it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PrefixDistribution {
    /// Every prefix equally likely.
    Uniform,
    /// Prefix `k` (from 0) with weight `1 / (k + 1)^exponent`: a few hot system prompts and a
    /// long tail.
    Zipf {
        /// The exponent, > 0.
        exponent: f64,
    },
}

/// How a step keeps the prefix cache of a warm server (one serving earlier steps) out of
/// its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixCachePolicy {
    /// Empty the server's cache before the step (vLLM `POST /reset_prefix_cache`, SGLang
    /// `POST /flush_cache`); where the server refuses, salt instead.
    Reset,
    /// Give the step prompts no other step sends (the generated texts are seeded by the
    /// step), so nothing cached earlier matches.
    Salt,
    /// Leave the cache and the prompts as they are: later steps may hit what earlier ones
    /// cached.
    Keep,
}

impl PrefixCachePolicy {
    /// The matrix spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PrefixCachePolicy::Reset => "reset",
            PrefixCachePolicy::Salt => "salt",
            PrefixCachePolicy::Keep => "keep",
        }
    }
}

/// The prefix cache over one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixCacheFacts {
    /// The policy the workload asked for.
    pub policy: PrefixCachePolicy,
    /// The endpoint that emptied the cache before the step, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_by: Option<String>,
    /// Why the cache could not be reset, when the policy asked for it and the server
    /// refused (every endpoint tried, with its answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_refused: Option<String>,
    /// The step's generated prompts were salted (the policy `salt`, or a refused reset).
    pub salted: bool,
    /// The fraction of prompt tokens an empty, unbounded cache hits when the step's
    /// requests arrive one after another, from the prompts' shared prefixes (shared-prefix
    /// datasets; absent with the policy `keep`, whose cache does not start empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_hit_rate: Option<f64>,
    /// The fraction of prompt tokens the server's cache hit over the step, from its own
    /// counters (see `server_hit_rate_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_hit_rate: Option<f64>,
    /// The counters `server_hit_rate` was computed from, `hits/queries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_hit_rate_from: Option<String>,
}

/// A workload value drawn anew at each use: a turn count, a length in tokens, a think time
/// in seconds. The matrix says it, the coordinator sends it, the load generator draws it
/// from the step's seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "distribution")]
pub enum Sampled {
    /// Always `value`.
    Fixed {
        /// The value.
        value: f64,
    },
    /// Uniform over `[min, max]`.
    Uniform {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
    /// Normal, cut to the value's own bounds (at least 1 token, at least 0 seconds).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation, ≥ 0.
        stddev: f64,
    },
    /// Exponential with this mean: think times of users who act independently.
    Exponential {
        /// Mean, > 0.
        mean: f64,
    },
}

impl Sampled {
    /// A fixed value.
    pub fn fixed(value: f64) -> Sampled {
        Sampled::Fixed { value }
    }

    /// The mean of the distribution (before any cut to bounds).
    pub fn mean(&self) -> f64 {
        match *self {
            Sampled::Fixed { value } => value,
            Sampled::Uniform { min, max } => (min + max) / 2.0,
            Sampled::Normal { mean, .. } | Sampled::Exponential { mean } => mean,
        }
    }

    /// The smallest value it can draw, before any cut to bounds (`-inf` for a normal).
    pub fn min(&self) -> f64 {
        match *self {
            Sampled::Fixed { value } => value,
            Sampled::Uniform { min, .. } => min,
            Sampled::Normal { .. } => f64::NEG_INFINITY,
            Sampled::Exponential { .. } => 0.0,
        }
    }

    /// Checks the parameters: finite, `min ≤ max`, `stddev ≥ 0`, an exponential's mean > 0,
    /// and nothing below `floor` that the distribution is sure to draw.
    pub fn validate(&self, floor: f64) -> Result<(), String> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number, got {v}"))
            }
        };
        match *self {
            Sampled::Fixed { value } => {
                finite("the value", value)?;
                if value < floor {
                    return Err(format!("the value must be at least {floor}, got {value}"));
                }
            }
            Sampled::Uniform { min, max } => {
                finite("min", min)?;
                finite("max", max)?;
                if min < floor {
                    return Err(format!("min must be at least {floor}, got {min}"));
                }
                if max < min {
                    return Err(format!("max ({max}) must not be below min ({min})"));
                }
            }
            Sampled::Normal { mean, stddev } => {
                finite("mean", mean)?;
                finite("stddev", stddev)?;
                if stddev < 0.0 {
                    return Err(format!("stddev must be ≥ 0, got {stddev}"));
                }
                if mean < floor {
                    return Err(format!("mean must be at least {floor}, got {mean}"));
                }
            }
            Sampled::Exponential { mean } => {
                finite("mean", mean)?;
                if mean <= 0.0 {
                    return Err(format!("an exponential's mean must be > 0, got {mean}"));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Sampled {
    /// `4`, `2..6`, `normal(200, 50)`, `exponential(2)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Sampled::Fixed { value } => write!(f, "{value}"),
            Sampled::Uniform { min, max } => write!(f, "{min}..{max}"),
            Sampled::Normal { mean, stddev } => write!(f, "normal({mean}, {stddev})"),
            Sampled::Exponential { mean } => write!(f, "exponential({mean})"),
        }
    }
}
