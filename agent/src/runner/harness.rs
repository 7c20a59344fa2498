//! Harness steps (`api: command` workloads): an external evaluation or benchmark program
//! (lm-eval, a vendor benchmark script) run against the unit's server. The agent renders its
//! command, runs it in its own process group with a time limit, and records the values the
//! matrix names (JSON pointers) from the JSON the program writes to `{out}`. An `api: lm-eval`
//! workload's output (`harness: "lm-eval"`) is also parsed into accuracy scores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use evalctl_proto::v1 as pb;
use evalctl_results::score::{self, Score};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::launcher::{self, RenderedCommand};

/// Placeholders of a harness command.
pub use evalctl_proto::template::HARNESS as HARNESS_PLACEHOLDERS;
/// `WorkloadSpec.harness` of an lm-evaluation-harness run.
const LM_EVAL: &str = "lm-eval";
/// Time limit of a harness without a `duration`.
const DEFAULT_LIMIT: Duration = Duration::from_secs(3600);
/// Grace between SIGTERM and SIGKILL of a harness's group.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where and with what a harness step runs.
#[derive(Debug, Clone)]
pub struct HarnessRun<'a> {
    /// The step.
    pub step: &'a pb::StepSpec,
    /// Server base URL (`{url}`).
    pub base_url: &'a str,
    /// `{model.path}`.
    pub model_path: &'a str,
    /// `{model.name}`.
    pub model_name: &'a str,
    /// `{model.served}`: the model name the server lists in `/v1/models`.
    pub served_model: &'a str,
    /// Directory for `{out}` and the harness log.
    pub work_dir: &'a Path,
    /// File-name stem unique to this step and attempt.
    pub stem: String,
}

/// What a harness step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct HarnessOutcome {
    /// The metrics the workload names, by name.
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// The scores parsed from the harness's own output format (lm-eval's), if it has one.
    pub scores: Vec<Score>,
    /// The command as run.
    pub command: String,
}

/// Why a harness step failed (the unit fails with it).
#[derive(Debug)]
pub enum HarnessError {
    /// Stopped by the agent (shutdown, revoked lease).
    Cancelled,
    /// Anything else, with the end of its log.
    Failed {
        /// What went wrong.
        error: String,
        /// The end of the harness log.
        log_tail: String,
    },
}

/// Runs the harness of `run.step` to its end.
pub async fn run(
    run: &HarnessRun<'_>,
    stop: &CancellationToken,
) -> Result<HarnessOutcome, HarnessError> {
    let workload = run.step.workload.clone().unwrap_or_default();
    let out = run.work_dir.join(format!("{}.out", run.stem));
    let log = run.work_dir.join(format!("{}.log", run.stem));
    let fail = |error: String| HarnessError::Failed {
        error,
        log_tail: launcher::read_tail(&log, launcher::LOG_TAIL_BYTES).unwrap_or_default(),
    };
    let command = render(&workload.command, run, &out).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(run.work_dir).map_err(|e| {
        fail(format!(
            "failed to create `{}`: {e}",
            run.work_dir.display()
        ))
    })?;
    let log_file = std::fs::File::create(&log)
        .map_err(|e| fail(format!("failed to create `{}`: {e}", log.display())))?;
    let stderr = log_file
        .try_clone()
        .map_err(|e| fail(format!("failed to open `{}`: {e}", log.display())))?;
    let program = launcher::resolve_program(&command.argv[0]);
    let mut child = tokio::process::Command::new(&program)
        .args(&command.argv[1..])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("failed to start `{}`: {e}", command.argv[0])))?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let limit = match workload.duration_ms {
        0 => DEFAULT_LIMIT,
        ms => Duration::from_millis(ms),
    };
    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| fail(format!("failed to wait for the harness: {e}")))?,
        _ = tokio::time::sleep(limit) => {
            end_group(pgid, &mut child).await;
            return Err(fail(format!(
                "the harness ran past its limit of {}",
                humantime::format_duration(limit)
            )));
        }
        _ = stop.cancelled() => {
            end_group(pgid, &mut child).await;
            return Err(HarnessError::Cancelled);
        }
    };
    // Helpers it left behind in its group go too.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if !status.success() {
        return Err(fail(format!("the harness exited with {status}")));
    }
    let document = read_output(&out).map_err(fail)?;
    let metrics = extract(&document, &workload.metrics).map_err(fail)?;
    let scores = match workload.harness.as_str() {
        "" => Vec::new(),
        LM_EVAL => score::from_lm_eval(&document).map_err(fail)?,
        other => return Err(fail(format!("unknown harness output format `{other}`"))),
    };
    Ok(HarnessOutcome {
        metrics,
        scores,
        command: command.display(),
    })
}

fn render(
    template: &str,
    run: &HarnessRun<'_>,
    out: &Path,
) -> Result<RenderedCommand, launcher::TemplateError> {
    let out = out.display().to_string();
    launcher::render_template(template, HARNESS_PLACEHOLDERS, &|name| {
        Some(match name {
            "url" => run.base_url.to_owned(),
            "model.path" => run.model_path.to_owned(),
            "model.name" => run.model_name.to_owned(),
            "model.served" => run.served_model.to_owned(),
            "out" => out.clone(),
            _ => return None,
        })
    })
}

async fn end_group(pgid: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait().await;
        } else {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// The JSON the harness wrote: the file at `{out}`, or, when it made a directory there (as
/// lm-eval's `--output_path` does), the newest `.json` file inside it.
fn read_output(out: &Path) -> Result<serde_json::Value, String> {
    let file = if out.is_dir() {
        newest_json(out).ok_or_else(|| {
            format!(
                "the harness wrote no .json file under `{}` ({{out}})",
                out.display()
            )
        })?
    } else {
        out.to_owned()
    };
    let text = std::fs::read(&file).map_err(|e| {
        format!(
            "failed to read the harness output `{}` ({{out}}): {e}",
            file.display()
        )
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("the harness output `{}` is not JSON: {e}", file.display()))
}

fn newest_json(dir: &Path) -> Option<PathBuf> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
                if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    newest.map(|(_, path)| path)
}

/// The values of `pointers` (name → JSON pointer) in `document`; a missing one is an error
/// naming it.
pub fn extract(
    document: &serde_json::Value,
    pointers: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let mut metrics = BTreeMap::new();
    for (name, pointer) in pointers {
        let value = document.pointer(pointer).ok_or_else(|| {
            format!("metric `{name}`: the harness output has nothing at JSON pointer `{pointer}`")
        })?;
        metrics.insert(name.clone(), value.clone());
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(command: &str, metrics: &[(&str, &str)]) -> pb::StepSpec {
        pb::StepSpec {
            step_id: "s-h".into(),
            workload: Some(pb::WorkloadSpec {
                name: "eval".into(),
                api: "command".into(),
                command: command.into(),
                metrics: metrics
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                duration_ms: 10_000,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn harness<'a>(step: &'a pb::StepSpec, dir: &'a Path) -> HarnessRun<'a> {
        HarnessRun {
            step,
            base_url: "http://127.0.0.1:9",
            model_path: "/models/m",
            model_name: "m",
            served_model: "served-m",
            work_dir: dir,
            stem: "s-h-a1".into(),
        }
    }

    #[tokio::test]
    async fn a_harness_writes_json_and_its_named_values_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let step = step(
            r#"sh -c 'printf "{{\"results\": {{\"acc\": 0.75, \"url\": \"%s\"}}}}" "$1" > "$2"' sh {url} {out}"#,
            &[("accuracy", "/results/acc"), ("url", "/results/url")],
        );
        let outcome = run(&harness(&step, dir.path()), &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(outcome.metrics["accuracy"], serde_json::json!(0.75));
        assert_eq!(
            outcome.metrics["url"],
            serde_json::json!("http://127.0.0.1:9")
        );
    }

    #[tokio::test]
    async fn lm_eval_output_in_a_directory_becomes_scores_for_the_served_model() {
        let dir = tempfile::tempdir().unwrap();
        // As lm-eval: a results file in a directory named after the model, under {out}.
        let mut step = step(
            r#"sh -c 'mkdir -p "$1/$2" && printf "{{\"results\": {{\"arith\": {{\"exact_match,strict-match\": 0.8, \"exact_match_stderr,strict-match\": 0.05}}}}}}" > "$1/$2/results_1.json"' sh {out} {model.served}"#,
            &[],
        );
        if let Some(w) = step.workload.as_mut() {
            w.harness = LM_EVAL.into();
        }
        let outcome = run(&harness(&step, dir.path()), &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(outcome.scores.len(), 1);
        assert_eq!(outcome.scores[0].name, "arith/exact_match,strict-match");
        assert_eq!(
            (outcome.scores[0].value, outcome.scores[0].stderr),
            (0.8, Some(0.05))
        );
        assert!(dir.path().join("s-h-a1.out/served-m").is_dir());
    }

    #[tokio::test]
    async fn a_missing_pointer_or_a_failing_harness_fails_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let step1 = step(
            r#"sh -c 'echo "{{}}" > "$1"' sh {out}"#,
            &[("acc", "/results/acc")],
        );
        match run(&harness(&step1, dir.path()), &CancellationToken::new()).await {
            Err(HarnessError::Failed { error, .. }) => {
                assert!(error.contains("`/results/acc`"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        let step2 = step("sh -c 'echo broken-harness >&2; exit 4'", &[]);
        match run(&harness(&step2, dir.path()), &CancellationToken::new()).await {
            Err(HarnessError::Failed { error, log_tail }) => {
                assert!(error.contains("exit status: 4"), "{error}");
                assert!(log_tail.contains("broken-harness"), "{log_tail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cancelled_harness_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let step = step("sleep 30", &[]);
        let stop = CancellationToken::new();
        stop.cancel();
        let started = std::time::Instant::now();
        assert!(matches!(
            run(&harness(&step, dir.path()), &stop).await,
            Err(HarnessError::Cancelled)
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
