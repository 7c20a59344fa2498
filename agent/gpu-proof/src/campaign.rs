//! `evalctl-gpu-proof campaign`: the proof campaign's matrix for the GPU `check` found.
//! One unit asks for one GPU of the detected type; its framework's command is this
//! program's `serve`, and its workload is a load step long enough for the telemetry to
//! cover a loaded interval.

use std::path::Path;

use crate::check::CheckReport;

/// The matrix text: one GPU of the type of `report`'s first GPU, the server started as
/// `program serve`, writing its report to `serve_report`, loaded for `seconds`.
pub fn matrix(
    report: &CheckReport,
    program: &Path,
    serve_report: &Path,
    hold_mib: u64,
    seconds: u64,
) -> Result<String, String> {
    let gpu = report
        .gpus
        .first()
        .ok_or_else(|| "the check found no GPU".to_owned())?;
    // JSON strings are YAML double-quoted scalars: paths with spaces or quotes stay whole.
    let command = format!(
        "{} serve --host {{host}} --port {{port}} --hold-mib {hold_mib} --report {}",
        shell_word(&program.display().to_string()),
        shell_word(&serve_report.display().to_string())
    );
    Ok(format!(
        "campaign: gpu-proof
models: [{{ name: gpu-proof, path: gpu-proof }}]
gpus: [{{ type: {gpu_type}, memory_gb: {memory_gb}, counts: [1] }}]
frameworks:
  - name: gpu-proof
    command: {command}
    health: /health
    startup_timeout: 60s
quantizations: [{{ name: fp32, bits: 32 }}]
workloads:
  - name: load
    api: completions
    dataset: {{ kind: random, input_tokens: 64, output_tokens: 32 }}
    load: {{ concurrency: [4] }}
    duration: {seconds}s
",
        gpu_type = serde_json::Value::String(gpu.gpu_type.clone()),
        memory_gb = gpu.memory_gb.max(0.1),
        command = serde_json::Value::String(command),
    ))
}

/// `word` as one word of a command template: quoted as for a POSIX shell when it needs it
/// (the agent splits commands as a shell does), braces doubled (they open placeholders).
fn shell_word(word: &str) -> String {
    let word = word.replace('{', "{{").replace('}', "}}");
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        word
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{GpuFacts, Sampling};

    #[test]
    fn the_matrix_asks_for_the_detected_type_and_quotes_paths() {
        let report = CheckReport {
            driver_version: None,
            cuda_version: None,
            gpus: vec![GpuFacts {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-1".into(),
                gpu_type: "H100-80GB".into(),
                memory_gb: 85.0,
                mig_enabled: Some(false),
                mig_devices: Vec::new(),
                fields_missing: Vec::new(),
            }],
            sampling: Sampling {
                seconds: 0.0,
                rate_hz_asked: 10.0,
                rounds: 0,
                samples_per_s: 0.0,
                integrated_field: String::new(),
                gpus: Vec::new(),
            },
        };
        let text = matrix(
            &report,
            Path::new("/opt/my bins/evalctl-gpu-proof"),
            Path::new("/tmp/out/serve.json"),
            512,
            20,
        )
        .unwrap();
        assert!(
            text.contains(r#"gpus: [{ type: "H100-80GB", memory_gb: 85, counts: [1] }]"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"command: "'/opt/my bins/evalctl-gpu-proof' serve --host {host} --port {port} --hold-mib 512 --report /tmp/out/serve.json""#
            ),
            "{text}"
        );
        assert!(text.contains("duration: 20s"));
    }
}
