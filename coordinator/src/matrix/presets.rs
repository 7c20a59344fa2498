//! Built-in framework presets: how to launch and probe each known inference server, how
//! it spells tensor parallelism, and which arguments common quantization names need.
//!
//! A `frameworks` entry whose `name` (or `preset:`) names a preset starts from it; every
//! field the entry gives overrides the preset's. docs/frameworks.md documents the table;
//! a test keeps the two in step.

/// One built-in framework.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Preset {
    /// Preset name, e.g. `vllm`.
    pub name: &'static str,
    /// What it is, for docs and messages.
    pub title: &'static str,
    /// Command template (placeholders rendered by the agent).
    pub command: &'static str,
    /// Health path.
    pub health: &'static str,
    /// Prometheus metrics path, when the server has one.
    pub metrics: Option<&'static str>,
    /// Default startup timeout in milliseconds.
    pub startup_timeout_ms: u64,
    /// The flag that sets tensor parallelism (followed by `{gpu.count}` in `command`).
    pub tensor_parallel_flag: Option<&'static str>,
    /// Other spellings the engine accepts for that flag, which a framework entry's own
    /// command may use; [`cpu_command`] leaves them out on CPU units too.
    pub tensor_parallel_aliases: &'static [&'static str],
    /// Default `{quant.args}` for quantization names; a quantization's own `args` win.
    pub quant_args: &'static [(&'static str, &'static str)],
    /// The flag that sets pipeline parallelism, when the engine has one.
    pub pipeline_parallel_flag: Option<&'static str>,
    /// The flag that sets data parallelism (replicas in one server), when it has one.
    pub data_parallel_flag: Option<&'static str>,
    /// How the engine spells expert parallelism.
    pub expert_parallel: ExpertParallel,
    /// The flag that caps the requests it runs at once (a layout's `max_num_seqs`).
    pub max_num_seqs_flag: Option<&'static str>,
    /// The flag that sets the context length it serves (a layout's `max_model_len`).
    pub max_model_len_flag: Option<&'static str>,
    /// The flag and value that make its KV cache fp8 (a layout's `kv_cache_dtype: fp8`).
    pub kv_cache_fp8: Option<(&'static str, &'static str)>,
    /// How it is told to decode speculatively (a layout's `speculative`).
    pub speculative: SpeculativeFlags,
}

/// How an engine takes speculative decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpeculativeFlags {
    /// It cannot.
    None,
    /// vLLM: `--speculative-config` with a JSON object (`method`, `model`,
    /// `num_speculative_tokens`).
    JsonConfig,
    /// SGLang: `--speculative-algorithm`, `--speculative-draft-model-path`,
    /// `--speculative-num-draft-tokens`.
    Flags,
}

/// How an engine is told to shard a mixture of experts' experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpertParallel {
    /// It cannot.
    None,
    /// A switch: experts are sharded over all `tp × dp` GPUs (vLLM's
    /// `--enable-expert-parallel`), so `ep` must be `tp × dp`.
    Switch(&'static str),
    /// A size flag followed by `ep` (SGLang's `--ep-size`).
    Size(&'static str),
}

const MINUTE_MS: u64 = 60 * 1000;

/// Quantization arguments shared by vLLM and SGLang, which spell them the same way.
/// AWQ/GPTQ (and `int4`, taken as AWQ) checkpoints carry their `quantization_config` and
/// both servers detect it; passing `--quantization awq` would force the slower non-Marlin
/// kernels, so nothing is added for them.
const VLLM_LIKE_QUANT_ARGS: &[(&str, &str)] = &[
    ("bf16", "--dtype bfloat16"),
    ("fp16", "--dtype float16"),
    ("fp8", "--quantization fp8"),
    ("awq", ""),
    ("gptq", ""),
    ("int4", ""),
];

/// All presets, in documentation order.
pub(crate) const PRESETS: &[Preset] = &[
    Preset {
        name: "vllm",
        title: "vLLM (`vllm serve`)",
        command: "vllm serve {model.path} --host {host} --port {port} --tensor-parallel-size {gpu.count} {quant.args}",
        health: "/health",
        metrics: Some("/metrics"),
        startup_timeout_ms: 20 * MINUTE_MS,
        tensor_parallel_flag: Some("--tensor-parallel-size"),
        tensor_parallel_aliases: &["-tp"],
        quant_args: VLLM_LIKE_QUANT_ARGS,
        pipeline_parallel_flag: Some("--pipeline-parallel-size"),
        data_parallel_flag: Some("--data-parallel-size"),
        expert_parallel: ExpertParallel::Switch("--enable-expert-parallel"),
        max_num_seqs_flag: Some("--max-num-seqs"),
        max_model_len_flag: Some("--max-model-len"),
        kv_cache_fp8: Some(("--kv-cache-dtype", "fp8")),
        speculative: SpeculativeFlags::JsonConfig,
    },
    Preset {
        name: "sglang",
        title: "SGLang (`python3 -m sglang.launch_server`)",
        // `--tp-size`, not `--tp`: SGLang declares no `--tp`; argparse takes it only as an
        // abbreviation, which a future flag starting with `--tp` would make ambiguous.
        command: "python3 -m sglang.launch_server --model-path {model.path} --host {host} --port {port} --tp-size {gpu.count} --enable-metrics {quant.args}",
        health: "/health",
        metrics: Some("/metrics"),
        startup_timeout_ms: 20 * MINUTE_MS,
        tensor_parallel_flag: Some("--tp-size"),
        tensor_parallel_aliases: &["--tp", "--tensor-parallel-size"],
        quant_args: VLLM_LIKE_QUANT_ARGS,
        pipeline_parallel_flag: Some("--pp-size"),
        data_parallel_flag: Some("--dp-size"),
        expert_parallel: ExpertParallel::Size("--ep-size"),
        max_num_seqs_flag: Some("--max-running-requests"),
        max_model_len_flag: Some("--context-length"),
        kv_cache_fp8: Some(("--kv-cache-dtype", "fp8_e5m2")),
        speculative: SpeculativeFlags::Flags,
    },
    Preset {
        name: "tgi",
        title: "Hugging Face Text Generation Inference (`text-generation-launcher`)",
        command: "text-generation-launcher --model-id {model.path} --hostname {host} --port {port} --num-shard {gpu.count} {quant.args}",
        health: "/health",
        metrics: Some("/metrics"),
        startup_timeout_ms: 20 * MINUTE_MS,
        tensor_parallel_flag: Some("--num-shard"),
        tensor_parallel_aliases: &[],
        quant_args: &[
            ("bf16", "--dtype bfloat16"),
            ("fp16", "--dtype float16"),
            ("fp8", "--quantize fp8"),
            ("awq", "--quantize awq"),
            ("gptq", "--quantize gptq"),
            ("int4", "--quantize awq"),
            ("eetq", "--quantize eetq"),
            ("int8", "--quantize bitsandbytes"),
            ("nf4", "--quantize bitsandbytes-nf4"),
        ],
        pipeline_parallel_flag: None,
        data_parallel_flag: None,
        expert_parallel: ExpertParallel::None,
        max_num_seqs_flag: None,
        max_model_len_flag: None,
        kv_cache_fp8: None,
        speculative: SpeculativeFlags::None,
    },
    Preset {
        name: "llamacpp",
        title: "llama.cpp (`llama-server`)",
        command: "llama-server -m {model.path} --host {host} --port {port} --metrics {quant.args}",
        health: "/health",
        metrics: Some("/metrics"),
        startup_timeout_ms: 5 * MINUTE_MS,
        tensor_parallel_flag: None,
        tensor_parallel_aliases: &[],
        quant_args: &[],
        pipeline_parallel_flag: None,
        data_parallel_flag: None,
        expert_parallel: ExpertParallel::None,
        max_num_seqs_flag: Some("--parallel"),
        max_model_len_flag: Some("--ctx-size"),
        kv_cache_fp8: None,
        speculative: SpeculativeFlags::None,
    },
    Preset {
        name: "trtllm",
        title: "TensorRT-LLM (`trtllm-serve`)",
        command: "trtllm-serve {model.path} --host {host} --port {port} --tp_size {gpu.count} {quant.args}",
        health: "/health",
        // trtllm-serve's /metrics answers JSON iteration statistics, not Prometheus text.
        metrics: None,
        startup_timeout_ms: 30 * MINUTE_MS,
        tensor_parallel_flag: Some("--tp_size"),
        tensor_parallel_aliases: &["--tensor_parallel_size"],
        quant_args: &[],
        pipeline_parallel_flag: Some("--pp_size"),
        data_parallel_flag: None,
        expert_parallel: ExpertParallel::Size("--ep_size"),
        max_num_seqs_flag: Some("--max_batch_size"),
        max_model_len_flag: Some("--max_seq_len"),
        kv_cache_fp8: None,
        speculative: SpeculativeFlags::None,
    },
    Preset {
        name: "ollama",
        title: "Ollama (`ollama serve`)",
        command: "env OLLAMA_HOST={host}:{port} ollama serve",
        health: "/api/version",
        metrics: None,
        startup_timeout_ms: 5 * MINUTE_MS,
        tensor_parallel_flag: None,
        tensor_parallel_aliases: &[],
        quant_args: &[],
        pipeline_parallel_flag: None,
        data_parallel_flag: None,
        expert_parallel: ExpertParallel::None,
        max_num_seqs_flag: None,
        max_model_len_flag: None,
        kv_cache_fp8: None,
        speculative: SpeculativeFlags::None,
    },
    Preset {
        name: "sim",
        title: "evalctl's simulated server (`evalctl-agent sim-server`)",
        command: "evalctl-agent sim-server --host {host} --port {port} --model {model.name}",
        health: "/health",
        metrics: Some("/metrics"),
        startup_timeout_ms: MINUTE_MS,
        tensor_parallel_flag: None,
        tensor_parallel_aliases: &[],
        quant_args: &[],
        pipeline_parallel_flag: None,
        data_parallel_flag: None,
        expert_parallel: ExpertParallel::None,
        max_num_seqs_flag: Some("--max-num-seqs"),
        max_model_len_flag: Some("--max-model-len"),
        kv_cache_fp8: None,
        speculative: SpeculativeFlags::None,
    },
];

/// Startup timeout of a framework with neither a preset nor its own `startup_timeout`.
pub(crate) const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 10 * MINUTE_MS;

/// Health path of a framework with neither a preset nor its own `health`.
pub(crate) const DEFAULT_HEALTH: &str = "/health";

/// The preset called `name`.
pub(crate) fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Preset names, for messages.
pub(crate) fn names() -> impl Iterator<Item = &'static str> + Clone {
    PRESETS.iter().map(|p| p.name)
}

impl Preset {
    /// Default `{quant.args}` for the quantization called `quant`, if the preset knows it.
    pub(crate) fn quant_args(&self, quant: &str) -> Option<&'static str> {
        self.quant_args
            .iter()
            .find(|(q, _)| *q == quant)
            .map(|(_, args)| *args)
    }
}

/// The placeholder a preset passes to its tensor-parallel flag.
const GPU_COUNT: &str = "{gpu.count}";

/// `command` as CPU units run it: without `FLAG {gpu.count}` (or `FLAG={gpu.count}`), where
/// FLAG is `preset`'s tensor-parallel flag or one of its aliases. A CPU unit has no GPUs, so
/// `{gpu.count}` renders as 0, and vLLM, SGLang, TGI and TensorRT-LLM all refuse a
/// tensor-parallel size of 0; left out, each engine runs its default of one. A command
/// without such a pair, or a framework without a preset or with a preset that has no such
/// flag, is returned as it is.
pub(crate) fn cpu_command(command: &str, preset: Option<&Preset>) -> String {
    let Some(preset) = preset else {
        return command.to_owned();
    };
    let flags = preset
        .tensor_parallel_flag
        .iter()
        .chain(preset.tensor_parallel_aliases);
    let mut command = command.to_owned();
    for flag in flags {
        command = without_flag_with_count(&command, flag);
    }
    command
}

/// `command` without each `flag {gpu.count}` pair and the whitespace before it (after it,
/// at the very start).
fn without_flag_with_count(command: &str, flag: &str) -> String {
    let mut rest = command;
    let mut kept = String::with_capacity(command.len());
    while let Some((start, end)) = find_flag_with_count(rest, flag) {
        let before = rest[..start].trim_end();
        kept.push_str(before);
        rest = &rest[end..];
        if kept.is_empty() {
            rest = rest.trim_start();
        }
    }
    kept.push_str(rest);
    kept
}

/// The byte range of the first `flag {gpu.count}` or `flag={gpu.count}` in `command` that
/// stands as whole words.
pub(crate) fn find_flag_with_count(command: &str, flag: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(found) = command[from..].find(flag) {
        let start = from + found;
        from = start + flag.len();
        let after = &command[from..];
        let value = match after.strip_prefix('=') {
            Some(value) => value,
            None if after.starts_with(char::is_whitespace) => after.trim_start(),
            None => continue, // a longer flag that starts like this one
        };
        let Some(rest) = value.strip_prefix(GPU_COUNT) else {
            continue;
        };
        let starts_word = command[..start]
            .chars()
            .next_back()
            .is_none_or(char::is_whitespace);
        if starts_word && rest.chars().next().is_none_or(char::is_whitespace) {
            return Some((start, command.len() - rest.len()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::placeholders::{self, SERVER};
    use super::*;

    #[test]
    fn preset_commands_use_only_server_placeholders() {
        for p in PRESETS {
            let segments = placeholders::parse(p.command).expect("preset command parses");
            for s in segments {
                if let placeholders::Segment::Placeholder { name, .. } = s {
                    assert!(SERVER.contains(&name), "{}: {name}", p.name);
                }
            }
            assert!(
                p.command.contains("{port}"),
                "{} must bind {{port}}",
                p.name
            );
            assert!(p.health.starts_with('/'));
        }
    }

    #[test]
    fn tensor_parallel_flags_take_the_gpu_count() {
        for p in PRESETS {
            match p.tensor_parallel_flag {
                Some(flag) => assert!(
                    p.command.contains(&format!("{flag} {{gpu.count}}")),
                    "{}: {flag}",
                    p.name
                ),
                None => assert!(!p.command.contains("{gpu.count}"), "{}", p.name),
            }
        }
        let expected = [
            ("vllm", Some("--tensor-parallel-size")),
            ("sglang", Some("--tp-size")),
            ("tgi", Some("--num-shard")),
            ("llamacpp", None),
            ("trtllm", Some("--tp_size")),
        ];
        for (name, flag) in expected {
            assert_eq!(preset(name).unwrap().tensor_parallel_flag, flag, "{name}");
        }
    }

    #[test]
    fn cpu_commands_leave_out_the_tensor_parallel_flag() {
        let vllm = preset("vllm");
        assert_eq!(
            cpu_command(vllm.unwrap().command, vllm),
            "vllm serve {model.path} --host {host} --port {port} {quant.args}"
        );
        for p in PRESETS {
            let cpu = cpu_command(p.command, Some(p));
            assert!(!cpu.contains(GPU_COUNT), "{}: {cpu}", p.name);
            assert!(!cpu.contains("  "), "{}: {cpu}", p.name);
        }
        let cases = [
            // `=` form, at the end, and twice.
            ("s --tp={gpu.count}", "s"),
            ("s --tp {gpu.count} --x --tp {gpu.count}", "s --x"),
            // Another flag that merely starts like it, or a value that is not the count.
            ("s --tpx {gpu.count} --tp 2", "s --tpx {gpu.count} --tp 2"),
            ("s --tp {gpu.count}x", "s --tp {gpu.count}x"),
            ("s x--tp {gpu.count}", "s x--tp {gpu.count}"),
            // At the very start (a command that is only flags).
            ("--tp {gpu.count} --y", "--y"),
            // The flag itself and the other alias; `--tp` does not take `--tp-size` apart.
            ("s --tp-size {gpu.count} --y", "s --y"),
            ("s --tensor-parallel-size={gpu.count}", "s"),
            // Other whitespace is kept as written.
            ("s\t--tp  {gpu.count}\n--y 'a  b'", "s\n--y 'a  b'"),
        ];
        let sglang = preset("sglang");
        for (command, cpu) in cases {
            assert_eq!(cpu_command(command, sglang), cpu, "{command:?}");
        }
        // No preset, or one without a tensor-parallel flag: unchanged.
        assert_eq!(
            cpu_command("s --tp {gpu.count}", None),
            "s --tp {gpu.count}"
        );
        let llamacpp = preset("llamacpp");
        assert_eq!(
            cpu_command("s --tp {gpu.count}", llamacpp),
            "s --tp {gpu.count}"
        );
    }

    #[test]
    fn presets_with_quant_defaults_render_quant_args() {
        for p in PRESETS.iter().filter(|p| !p.quant_args.is_empty()) {
            assert!(placeholders::uses(p.command, "quant.args"), "{}", p.name);
        }
        assert_eq!(
            preset("vllm").unwrap().quant_args("fp8"),
            Some("--quantization fp8")
        );
        assert_eq!(
            preset("tgi").unwrap().quant_args("awq"),
            Some("--quantize awq")
        );
        assert_eq!(preset("sglang").unwrap().quant_args("awq"), Some(""));
        assert_eq!(preset("llamacpp").unwrap().quant_args("q8_0"), None);
    }

    #[test]
    fn sim_preset_is_the_agents_simulator() {
        let sim = preset("sim").unwrap();
        assert_eq!(
            sim.command,
            "evalctl-agent sim-server --host {host} --port {port} --model {model.name}"
        );
        assert_eq!(sim.health, "/health");
        assert_eq!(sim.metrics, Some("/metrics"));
    }

    #[test]
    fn docs_list_every_preset_and_flag() {
        let docs = include_str!("../../../docs/frameworks.md");
        for p in PRESETS {
            assert!(
                docs.contains(&format!("`{}`", p.name)),
                "docs/frameworks.md lacks {}",
                p.name
            );
            assert!(
                docs.contains(p.command),
                "docs/frameworks.md lacks the {} command",
                p.name
            );
            for (quant, args) in p.quant_args.iter().filter(|(_, a)| !a.is_empty()) {
                assert!(
                    docs.contains(&format!("`{args}`")),
                    "docs/frameworks.md lacks {} {quant} args `{args}`",
                    p.name
                );
            }
        }
    }
}
