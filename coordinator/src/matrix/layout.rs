//! A unit's parallelism layout in its server command (docs/matrix.md#layouts): the
//! coordinator writes the layout into the framework's command at expansion, with the
//! preset's own flags (`--tensor-parallel-size 4 --pipeline-parallel-size 2` for vLLM), or
//! into a command's `{parallel.tp}`, `{parallel.pp}`, `{parallel.dp}` and `{parallel.ep}`.

use super::placeholders::{self, Segment};
use super::presets::{ExpertParallel, Preset, SpeculativeFlags};
use crate::domain::{KvCacheDtype, Layout, Speculative, SpeculativeMethod};

/// The placeholders of a layout, which a framework command may hold beside the server's.
pub(crate) const PARALLEL: &[&str] = &["parallel.tp", "parallel.pp", "parallel.dp", "parallel.ep"];

/// The layout a unit without one runs: tensor parallelism over all its GPUs.
pub(crate) fn default_layout(gpus: u32) -> Layout {
    Layout {
        tp: gpus.max(1),
        pp: 1,
        dp: 1,
        ep: 1,
        max_num_seqs: None,
        max_model_len: None,
        kv_cache_dtype: None,
        speculative: None,
    }
}

/// `command` for `layout` (`None`: the default layout of `gpus`). A command with
/// `{parallel.*}` placeholders gets their values; otherwise a layout is written with
/// `preset`'s flags, and refused, saying why, where the preset cannot express it.
pub(crate) fn command(
    command: &str,
    preset: Option<&Preset>,
    layout: Option<&Layout>,
    gpus: u32,
) -> Result<String, String> {
    // The substring test first: expansion asks this of every unit, and most commands hold
    // no layout placeholder.
    if command.contains("{parallel.") && PARALLEL.iter().any(|p| placeholders::uses(command, p)) {
        let effective = layout.cloned().unwrap_or_else(|| default_layout(gpus));
        return Ok(render(command, &effective));
    }
    let Some(layout) = layout else {
        return Ok(command.to_owned());
    };
    let Some(preset) = preset else {
        return Err(
            "the framework has no preset, so evalctl does not know its parallelism flags: \
             write them into its command with {parallel.tp}, {parallel.pp}, {parallel.dp} \
             and {parallel.ep}"
                .to_owned(),
        );
    };
    let name = preset.name;
    let mut command = match preset.tensor_parallel_flag {
        Some(flag) => match super::presets::find_flag_with_count(command, flag) {
            Some((start, end)) => format!(
                "{}{flag} {}{}",
                &command[..start],
                layout.tp,
                &command[end..]
            ),
            None if layout.tp as u64 == u64::from(gpus) => command.to_owned(),
            None => {
                return Err(format!(
                    "the command has no `{flag} {{gpu.count}}` to set tp {} in",
                    layout.tp
                ));
            }
        },
        None if layout.tp > 1 => {
            return Err(format!("the {name} preset has no tensor parallelism"));
        }
        None => command.to_owned(),
    };
    for (axis, size, flag) in [
        ("pipeline", layout.pp, preset.pipeline_parallel_flag),
        ("data", layout.dp, preset.data_parallel_flag),
    ] {
        match (size, flag) {
            (1, _) => {}
            (_, Some(flag)) => command.push_str(&format!(" {flag} {size}")),
            (_, None) => return Err(format!("the {name} preset has no {axis} parallelism")),
        }
    }
    match (layout.ep, preset.expert_parallel) {
        (1, _) => {}
        (_, ExpertParallel::None) => {
            return Err(format!("the {name} preset has no expert parallelism"));
        }
        (ep, ExpertParallel::Switch(flag)) => {
            let span = layout.tp * layout.dp;
            if ep != span {
                return Err(format!(
                    "{name}'s `{flag}` shards experts over all tp × dp = {span} GPUs, so ep must be {span}, not {ep}"
                ));
            }
            command.push_str(&format!(" {flag}"));
        }
        (ep, ExpertParallel::Size(flag)) => command.push_str(&format!(" {flag} {ep}")),
    }
    for (setting, value, flag) in [
        (
            "max_num_seqs",
            layout.max_num_seqs,
            preset.max_num_seqs_flag,
        ),
        (
            "max_model_len",
            layout.max_model_len,
            preset.max_model_len_flag,
        ),
    ] {
        match (value, flag) {
            (None, _) => {}
            (Some(v), Some(flag)) => command.push_str(&format!(" {flag} {v}")),
            (Some(_), None) => return Err(format!("the {name} preset has no {setting} flag")),
        }
    }
    match (layout.kv_cache_dtype, preset.kv_cache_fp8) {
        (None | Some(KvCacheDtype::Auto), _) => {}
        (Some(KvCacheDtype::Fp8), Some((flag, value))) => {
            command.push_str(&format!(" {flag} {value}"));
        }
        (Some(KvCacheDtype::Fp8), None) => {
            return Err(format!("the {name} preset has no fp8 KV cache flag"));
        }
    }
    if let Some(spec) = &layout.speculative {
        command.push_str(&speculative_flags(name, preset.speculative, spec)?);
    }
    Ok(command)
}

/// The arguments that turn speculative decoding on, in the engine's spelling, as template
/// text (quoted, braces escaped).
fn speculative_flags(
    name: &str,
    flags: SpeculativeFlags,
    spec: &Speculative,
) -> Result<String, String> {
    let draft = spec.draft_model.as_deref();
    match flags {
        SpeculativeFlags::None => Err(format!("the {name} preset has no speculative decoding")),
        SpeculativeFlags::JsonConfig => {
            let mut config = serde_json::json!({
                "method": spec.method.as_str(),
                "num_speculative_tokens": spec.tokens,
            });
            if let Some(draft) = draft {
                config["model"] = draft.into();
            }
            Ok(format!(
                " --speculative-config {}",
                placeholders::quote_word(&config.to_string())
            ))
        }
        SpeculativeFlags::Flags => {
            let algorithm = match spec.method {
                SpeculativeMethod::Eagle => "EAGLE",
                SpeculativeMethod::Eagle3 => "EAGLE3",
                SpeculativeMethod::Ngram => "NGRAM",
                SpeculativeMethod::Mtp => "EAGLE",
            };
            let mut text = format!(
                " --speculative-algorithm {algorithm} --speculative-num-draft-tokens {}",
                spec.tokens
            );
            if let Some(draft) = draft {
                text.push_str(&format!(
                    " --speculative-draft-model-path {}",
                    placeholders::quote_word(draft)
                ));
            }
            Ok(text)
        }
    }
}

/// `template` with the layout's placeholders filled in and everything else kept as a
/// template (other placeholders as written, literal braces escaped again).
fn render(template: &str, layout: &Layout) -> String {
    let Ok(segments) = placeholders::parse(template) else {
        return template.to_owned();
    };
    segments
        .into_iter()
        .map(|segment| match segment {
            Segment::Literal(text) => placeholders::escape_braces(&text),
            Segment::Placeholder { name, .. } => match name {
                "parallel.tp" => layout.tp.to_string(),
                "parallel.pp" => layout.pp.to_string(),
                "parallel.dp" => layout.dp.to_string(),
                "parallel.ep" => layout.ep.to_string(),
                other => format!("{{{other}}}"),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::presets::preset;
    use super::*;

    fn layout(tp: u32, pp: u32, dp: u32, ep: u32) -> Layout {
        Layout {
            tp,
            pp,
            dp,
            ep,
            ..default_layout(1)
        }
    }

    #[test]
    fn presets_write_the_layout_with_their_own_flags() {
        let vllm = preset("vllm").unwrap();
        assert_eq!(
            command(vllm.command, Some(vllm), Some(&layout(4, 2, 1, 1)), 8).unwrap(),
            "vllm serve {model.path} --host {host} --port {port} --tensor-parallel-size 4 {quant.args} --pipeline-parallel-size 2"
        );
        let moe = command(vllm.command, Some(vllm), Some(&layout(4, 1, 2, 8)), 8).unwrap();
        assert!(
            moe.ends_with("--data-parallel-size 2 --enable-expert-parallel"),
            "{moe}"
        );
        let err = command(vllm.command, Some(vllm), Some(&layout(8, 1, 1, 4)), 8).unwrap_err();
        assert!(err.contains("ep must be 8, not 4"), "{err}");
        let sglang = preset("sglang").unwrap();
        let sg = command(sglang.command, Some(sglang), Some(&layout(8, 1, 1, 8)), 8).unwrap();
        assert!(
            sg.contains("--tp-size 8 ") && sg.ends_with(" --ep-size 8"),
            "{sg}"
        );
        let tgi = preset("tgi").unwrap();
        let err = command(tgi.command, Some(tgi), Some(&layout(4, 2, 1, 1)), 8).unwrap_err();
        assert_eq!(err, "the tgi preset has no pipeline parallelism");
    }

    #[test]
    fn engine_settings_take_each_engines_own_flag() {
        let tuned = Layout {
            speculative: None,
            max_num_seqs: Some(256),
            max_model_len: Some(8192),
            kv_cache_dtype: Some(KvCacheDtype::Fp8),
            ..layout(8, 1, 1, 1)
        };
        let vllm = preset("vllm").unwrap();
        assert!(
            command(vllm.command, Some(vllm), Some(&tuned), 8)
                .unwrap()
                .ends_with(" --max-num-seqs 256 --max-model-len 8192 --kv-cache-dtype fp8")
        );
        let sglang = preset("sglang").unwrap();
        assert!(
            command(sglang.command, Some(sglang), Some(&tuned), 8)
                .unwrap()
                .ends_with(
                    " --max-running-requests 256 --context-length 8192 --kv-cache-dtype fp8_e5m2"
                )
        );
        let trtllm = preset("trtllm").unwrap();
        let err = command(trtllm.command, Some(trtllm), Some(&tuned), 8).unwrap_err();
        assert_eq!(err, "the trtllm preset has no fp8 KV cache flag");
    }

    #[test]
    fn speculative_decoding_takes_each_engines_spelling() {
        let eagle = Layout {
            speculative: Some(Speculative {
                method: SpeculativeMethod::Eagle3,
                draft_model: Some("/m/eagle 3".into()),
                tokens: 4,
            }),
            ..layout(8, 1, 1, 1)
        };
        let vllm = preset("vllm").unwrap();
        let v = command(vllm.command, Some(vllm), Some(&eagle), 8).unwrap();
        assert!(
            v.ends_with(
                r#" --speculative-config '{{"method":"eagle3","model":"/m/eagle 3","num_speculative_tokens":4}}'"#
            ),
            "{v}"
        );
        let sglang = preset("sglang").unwrap();
        let g = command(sglang.command, Some(sglang), Some(&eagle), 8).unwrap();
        assert!(
            g.ends_with(
                " --speculative-algorithm EAGLE3 --speculative-num-draft-tokens 4 --speculative-draft-model-path '/m/eagle 3'"
            ),
            "{g}"
        );
        let tgi = preset("tgi").unwrap();
        let err = command(tgi.command, Some(tgi), Some(&eagle), 8).unwrap_err();
        assert_eq!(err, "the tgi preset has no speculative decoding");
    }

    #[test]
    fn placeholders_take_the_layout_and_no_layout_leaves_a_command_alone() {
        let custom = "serve --tp {parallel.tp} --pp {parallel.pp} --json '{{}}' {port}";
        assert_eq!(
            command(custom, None, Some(&layout(2, 4, 1, 1)), 8).unwrap(),
            "serve --tp 2 --pp 4 --json '{{}}' {port}"
        );
        assert_eq!(
            command(custom, None, None, 8).unwrap(),
            "serve --tp 8 --pp 1 --json '{{}}' {port}"
        );
        let vllm = preset("vllm").unwrap();
        assert_eq!(
            command(vllm.command, Some(vllm), None, 8).unwrap(),
            vllm.command
        );
        let err = command("serve {port}", None, Some(&layout(8, 1, 1, 1)), 8).unwrap_err();
        assert!(err.contains("{parallel.tp}"), "{err}");
    }
}
