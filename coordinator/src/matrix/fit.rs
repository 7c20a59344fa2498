//! Fit pruning (docs/matrix.md#fit-pruning): whether a combination's weights, and the KV
//! cache its workloads need, fit in its GPUs' memory.
//!
//! - Weights: `params_b × bits / 8 × 1.2` GB (the 1.2 covers activations, CUDA graphs and
//!   fragmentation) against `memory_gb × count`.
//! - KV cache, when the model's architecture is known (the matrix's `arch`, or the
//!   `config.json` of a local model directory): every listed concurrency × the tokens of
//!   one request (prompt and output) × the KV bytes per token at the quantization's
//!   `kv_bits`, added to the weights. Bytes per token are `layers × 2 (K and V) × kv_heads
//!   × head_dim × kv_bits / 8`, or for multi-head latent attention (DeepSeek's MLA)
//!   `layers × (kv_lora_rank + qk_rope_head_dim) × kv_bits / 8`. Workloads whose request
//!   length or concurrency is not known before the run (dataset files, rate loads, capacity
//!   searches, which find the limit themselves) add no KV term.
//!
//! A layout's engine settings count too: `max_num_seqs` caps the concurrency that holds KV
//! cache (the rest wait), `kv_cache_dtype: fp8` makes `kv_bits` 8, and a request longer than
//! `max_model_len` cannot be served at all.
//!
//! Engines split both terms across the unit's GPUs under tensor and pipeline parallelism,
//! so the check over all of them is the check per GPU. Under a layout with data
//! parallelism (`dp` replicas), each replica holds all the weights on its `tp × pp` GPUs:
//! the weights must fit there, and `dp` copies of them with the KV cache in all the GPUs.

use serde_json::Value;

use crate::domain::{DatasetSpec, KvCacheDtype, Layout, LoadPoint, WorkloadSpec};

/// Weights overhead factor (activations, CUDA graphs, fragmentation).
pub(crate) const WEIGHTS_OVERHEAD: f64 = 1.2;

/// What a model's KV cache holds per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Architecture {
    /// Grouped-query (or multi-head) attention: K and V of `kv_heads × head_dim` per layer.
    Attention {
        /// Transformer layers.
        layers: u32,
        /// KV heads.
        kv_heads: u32,
        /// Dimension of a head.
        head_dim: u32,
    },
    /// Multi-head latent attention: one compressed latent and a rope key per layer.
    Latent {
        /// Transformer layers.
        layers: u32,
        /// Width of the compressed KV latent.
        kv_lora_rank: u32,
        /// Width of the decoupled rope key.
        rope_head_dim: u32,
    },
}

impl Architecture {
    /// Elements the KV cache holds per token, over all layers.
    pub fn kv_elements_per_token(self) -> f64 {
        match self {
            Architecture::Attention {
                layers,
                kv_heads,
                head_dim,
            } => 2.0 * f64::from(layers) * f64::from(kv_heads) * f64::from(head_dim),
            Architecture::Latent {
                layers,
                kv_lora_rank,
                rope_head_dim,
            } => f64::from(layers) * (f64::from(kv_lora_rank) + f64::from(rope_head_dim)),
        }
    }

    /// The formula of [`Self::kv_elements_per_token`] with its numbers, for messages.
    fn describe(self) -> String {
        match self {
            Architecture::Attention {
                layers,
                kv_heads,
                head_dim,
            } => format!("{layers} layers × 2 × {kv_heads} KV heads × {head_dim}"),
            Architecture::Latent {
                layers,
                kv_lora_rank,
                rope_head_dim,
            } => format!("{layers} layers × ({kv_lora_rank} + {rope_head_dim}) latent"),
        }
    }

    /// The architecture a Hugging Face `config.json` describes, when it holds the fields
    /// (`num_hidden_layers`; `kv_lora_rank` and `qk_rope_head_dim` for MLA, else
    /// `num_key_value_heads` or `num_attention_heads`, and `head_dim` or `hidden_size /
    /// num_attention_heads`). Multimodal configs keep them under `text_config`.
    pub fn from_config(config: &Value) -> Option<Architecture> {
        let config = config.get("text_config").unwrap_or(config);
        let field = |name: &str| {
            config
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let layers = field("num_hidden_layers")?;
        if let (Some(kv_lora_rank), Some(rope_head_dim)) =
            (field("kv_lora_rank"), field("qk_rope_head_dim"))
        {
            return Some(Architecture::Latent {
                layers,
                kv_lora_rank,
                rope_head_dim,
            });
        }
        let heads = field("num_attention_heads")?;
        let kv_heads = field("num_key_value_heads").unwrap_or(heads);
        let head_dim = match field("head_dim") {
            Some(d) => d,
            None => field("hidden_size")?.checked_div(heads)?,
        };
        Some(Architecture::Attention {
            layers,
            kv_heads,
            head_dim,
        })
    }
}

/// Routed experts of a mixture-of-experts model in a Hugging Face `config.json`
/// (`n_routed_experts`, `num_local_experts` or `num_experts`); `None` for a dense model.
pub(crate) fn experts_in_config(config: &Value) -> Option<u32> {
    let config = config.get("text_config").unwrap_or(config);
    ["n_routed_experts", "num_local_experts", "num_experts"]
        .iter()
        .find_map(|key| config.get(key).and_then(Value::as_u64))
        .and_then(|v| u32::try_from(v).ok())
        .filter(|n| *n > 1)
}

/// The most tokens a workload keeps in the KV cache at once, when known before the run:
/// its highest listed concurrency × one request's prompt and output tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KvDemand {
    /// Requests in flight.
    pub concurrency: u32,
    /// Tokens of one request.
    pub tokens: u32,
}

impl KvDemand {
    /// The demand of `workload` at `load`, or `None` where it cannot be known.
    pub fn of(workload: &WorkloadSpec, load: &[LoadPoint]) -> Option<KvDemand> {
        let tokens = match workload.dataset.as_ref()? {
            DatasetSpec::Random {
                input_tokens,
                output_tokens,
            } => input_tokens.checked_add(*output_tokens)?,
            DatasetSpec::SharedPrefix {
                prefix_tokens,
                suffix_tokens,
                output_tokens,
                ..
            } => prefix_tokens
                .checked_add(*suffix_tokens)?
                .checked_add(*output_tokens)?,
            _ => return None,
        };
        let concurrency = load
            .iter()
            .filter_map(|p| match p {
                LoadPoint::Concurrency(c) => Some(*c),
                _ => None,
            })
            .max()?;
        Some(KvDemand {
            concurrency,
            tokens,
        })
    }

    fn total_tokens(self) -> f64 {
        f64::from(self.concurrency) * f64::from(self.tokens)
    }
}

/// One combination as fit pruning sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FitInput<'a> {
    /// Parameters in billions.
    pub params_b: f64,
    /// Bits per weight.
    pub bits: f64,
    /// Bits per KV-cache element.
    pub kv_bits: f64,
    /// The model's architecture, when known.
    pub arch: Option<Architecture>,
    /// Memory of one GPU, GB.
    pub memory_gb: f64,
    /// GPUs of the unit.
    pub count: u32,
    /// How they are laid out (`None`: tensor parallel over all).
    pub layout: Option<&'a Layout>,
    /// GPU type, for messages.
    pub gpu_type: &'a str,
    /// The largest KV demand of the unit's workloads, when any is known.
    pub demand: Option<KvDemand>,
}

/// Why the combination does not fit, naming the term that does not, or `None`.
pub(crate) fn misfit(input: &FitInput<'_>) -> Option<String> {
    let weights = input.params_b * input.bits / 8.0 * WEIGHTS_OVERHEAD;
    let have = input.memory_gb * f64::from(input.count);
    // One replica holds all the weights over its tp × pp GPUs; dp replicas hold them each.
    let (replica_gpus, replicas) = match input.layout {
        Some(l) => (l.tp * l.pp, l.dp),
        None => (input.count, 1),
    };
    let replica_has = input.memory_gb * f64::from(replica_gpus);
    // A relative tolerance keeps an exact fit (e.g. 50B × 16 bit on 120 GB) from being
    // pruned by floating-point rounding.
    let exceeds = |need: f64, have: f64| need > have * (1.0 + 1e-9);
    if exceeds(weights, replica_has) {
        let replica = match input.layout {
            Some(l) if l.dp > 1 => format!(" (one of {} replicas)", l.dp),
            _ => String::new(),
        };
        return Some(format!(
            "weights need {weights:.1} GB ({}B × {} bit × {WEIGHTS_OVERHEAD}), {replica_gpus} × {}{replica} has {} GB",
            num(input.params_b),
            num(input.bits),
            input.gpu_type,
            num(replica_has)
        ));
    }
    let weights = weights * f64::from(replicas);
    let mut demand = input.demand?;
    let default = super::layout::default_layout(input.count);
    let settings = input.layout.unwrap_or(&default);
    if let Some(limit) = settings.max_model_len
        && demand.tokens > limit
    {
        return Some(format!(
            "a request of {} tokens is longer than max_model_len {limit}",
            demand.tokens
        ));
    }
    // The engine runs at most max_num_seqs requests; the rest wait, holding no KV cache.
    if let Some(seqs) = settings.max_num_seqs {
        demand.concurrency = demand.concurrency.min(seqs);
    }
    let kv_bits = match settings.kv_cache_dtype {
        Some(KvCacheDtype::Fp8) => 8.0,
        _ => input.kv_bits,
    };
    let arch = input.arch?;
    let kv = arch.kv_elements_per_token() * kv_bits / 8.0 * demand.total_tokens() / 1e9;
    exceeds(weights + kv, have).then(|| {
        format!(
            "weights fit ({weights:.1} GB of {} GB) but the KV cache does not: c={} × {} tokens × \
             ({} × {} bit) needs {kv:.1} GB, {:.1} GB are left",
            num(have),
            demand.concurrency,
            demand.tokens,
            arch.describe(),
            num(kv_bits),
            have - weights
        )
    })
}

/// `70` for 70.0, `1.5` for 1.5.
pub(crate) fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LLAMA_70B: Architecture = Architecture::Attention {
        layers: 80,
        kv_heads: 8,
        head_dim: 128,
    };

    fn input(count: u32, demand: Option<KvDemand>) -> FitInput<'static> {
        FitInput {
            params_b: 70.0,
            bits: 16.0,
            kv_bits: 16.0,
            arch: Some(LLAMA_70B),
            memory_gb: 80.0,
            count,
            layout: None,
            gpu_type: "H100-80GB",
            demand,
        }
    }

    #[test]
    fn numbers_print_without_needless_decimals() {
        assert_eq!(num(70.0), "70");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(70.6), "70.6");
        assert_eq!(num(160.0), "160");
    }

    #[test]
    fn configs_give_attention_and_latent_architectures() {
        let llama = json!({"num_hidden_layers": 80, "num_attention_heads": 64,
                           "num_key_value_heads": 8, "hidden_size": 8192});
        assert_eq!(Architecture::from_config(&llama), Some(LLAMA_70B));
        let deepseek = json!({"num_hidden_layers": 61, "num_attention_heads": 128,
                              "kv_lora_rank": 512, "qk_rope_head_dim": 64});
        let latent = Architecture::from_config(&deepseek).unwrap();
        assert_eq!(latent.kv_elements_per_token(), 61.0 * 576.0);
        let nested = json!({"text_config": {"num_hidden_layers": 2, "num_attention_heads": 4,
                                            "head_dim": 64}});
        assert_eq!(
            Architecture::from_config(&nested),
            Some(Architecture::Attention {
                layers: 2,
                kv_heads: 4,
                head_dim: 64
            })
        );
        assert_eq!(Architecture::from_config(&json!({"model_type": "x"})), None);
        assert_eq!(
            experts_in_config(&json!({"n_routed_experts": 256})),
            Some(256)
        );
        assert_eq!(experts_in_config(&json!({"num_local_experts": 8})), Some(8));
        assert_eq!(experts_in_config(&llama), None);
    }

    #[test]
    fn the_kv_cache_is_added_to_the_weights() {
        // 70B bf16: 168 GB of weights. KV per token: 80 × 2 × 8 × 128 × 2 B = 327,680 B.
        let small = KvDemand {
            concurrency: 64,
            tokens: 3072,
        };
        // 64 × 3072 × 327,680 B = 64.4 GB: 232.4 GB, within 4 × 80.
        assert_eq!(misfit(&input(4, Some(small))), None);
        let large = KvDemand {
            concurrency: 256,
            tokens: 8192,
        };
        // 256 × 8192 × 327,680 B = 687.2 GB: over 8 × 80 = 640.
        let reason = misfit(&input(8, Some(large))).unwrap();
        assert!(
            reason.starts_with(
                "weights fit (168.0 GB of 640 GB) but the KV cache does not: c=256 × 8192 tokens"
            ) && reason.contains("needs 687.2 GB, 472.0 GB are left"),
            "{reason}"
        );
        // Without a known demand or architecture, weights alone decide.
        assert_eq!(misfit(&input(4, None)), None);
        // A layout's engine settings: 32 sequences at once and an fp8 cache fit on 8 GPUs;
        // a context shorter than the requests does not serve them at all.
        let tuned = Layout {
            max_num_seqs: Some(32),
            kv_cache_dtype: Some(KvCacheDtype::Fp8),
            ..super::super::layout::default_layout(8)
        };
        assert_eq!(
            misfit(&FitInput {
                layout: Some(&tuned),
                ..input(8, Some(large))
            }),
            None
        );
        let short = Layout {
            max_model_len: Some(4096),
            ..tuned
        };
        let reason = misfit(&FitInput {
            layout: Some(&short),
            ..input(8, Some(large))
        })
        .unwrap();
        assert_eq!(
            reason,
            "a request of 8192 tokens is longer than max_model_len 4096"
        );
        let weights = misfit(&input(2, Some(small))).unwrap();
        assert!(weights.starts_with("weights need 168.0 GB"), "{weights}");
    }
}
