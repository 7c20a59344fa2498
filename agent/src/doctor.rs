//! The preflight (`evalctl-agent doctor`, `evalctl local --check`): whether this host can run
//! a matrix's units, before a night is spent finding out. For the units' rendered commands
//! and models it checks the engines' programs (and Python modules run with `-m`), the model
//! paths, the NVIDIA driver and GPUs against what the units need, free disk and whether a
//! server port can be opened. Nothing is started and nothing is downloaded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::launcher::container::{CLI_TIMEOUT, CliError, ContainerConfig, Runtime};
use crate::launcher::server::{AGENT_PROGRAM, free_port, resolve_program};

/// A unit as the preflight needs it: what `evalctl submit --dry-run --json` lists per unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedUnit {
    /// The unit's id.
    pub unit_id: String,
    /// Its label, e.g. `llama-3.1-8b / H100-80GB x1 / vllm / bf16`.
    pub label: String,
    /// The framework's name.
    pub framework: String,
    /// The server command as the agent would execute it (placeholders rendered).
    pub argv: Vec<String>,
    /// The model's path or hub id (`{model.path}`).
    pub model_path: String,
    /// The GPU type, `cpu` for CPU units.
    pub gpu_type: String,
    /// GPUs the unit takes (for a CPU unit, what the matrix says; it takes none).
    pub gpu_count: u32,
    /// The container image the server runs in, for a framework with an `image`.
    #[serde(default)]
    pub image: Option<String>,
    /// The container's `create` as each runtime would be given it (`docker create …`,
    /// `podman create …`), for a framework with an `image`.
    #[serde(default)]
    pub container_create: BTreeMap<String, Vec<String>>,
}

impl PlannedUnit {
    fn is_cpu(&self) -> bool {
        self.gpu_type.eq_ignore_ascii_case("cpu")
    }

    /// Whether the command runs evalctl's simulator, which loads no model files.
    fn is_simulator(&self) -> bool {
        self.argv.first().is_some_and(|p| p == AGENT_PROGRAM)
            && self.argv.get(1).is_some_and(|a| a == "sim-server")
    }
}

/// How a finding bears on the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Worth knowing; the units can still run (a model the engine will download, little
    /// disk, a GPU type this host does not have).
    Warn,
    /// Units will fail here: a missing engine or model, no driver for GPU units.
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The verdict.
    pub level: Level,
    /// `engine`, `image`, `model`, `gpu`, `disk` or `port`.
    pub area: &'static str,
    /// What was checked, e.g. the framework's or model's name.
    pub subject: String,
    /// What was found, and for a problem what to do.
    pub detail: String,
    /// The units it concerns (empty for the host's own checks).
    pub units: Vec<String>,
}

/// What the preflight found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Units checked.
    pub units: usize,
    /// Every finding, engines first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst level found.
    pub fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// The report as lines for a terminal.
    pub fn human(&self) -> String {
        let mut out = format!("Preflight of {} units on this host:\n", self.units);
        for f in &self.findings {
            let units = match f.units.len() {
                0 => String::new(),
                1 => " (1 unit)".to_owned(),
                n => format!(" ({n} units)"),
            };
            let _ = writeln!(
                out,
                "  {:<4}  {:<6}  {}{}: {}",
                f.level.word(),
                f.area,
                f.subject,
                units,
                f.detail
            );
        }
        let count = |level| self.findings.iter().filter(|f| f.level == level).count();
        let _ = match (count(Level::Fail), count(Level::Warn)) {
            (0, 0) => writeln!(
                out,
                "Ready: nothing found that would stop these units here."
            ),
            (0, warnings) => writeln!(
                out,
                "Ready, with {warnings} warning(s): the units can run here, read them first."
            ),
            (failures, _) => writeln!(
                out,
                "Not ready: {failures} problem(s) would fail units on this host."
            ),
        };
        out
    }
}

/// What the host offers, as the checks need it; [`Host::probe`] reads the real one.
#[derive(Debug, Clone)]
pub struct Host {
    /// GPUs by type (as the agent registers them), or why none could be read.
    pub gpus: Result<BTreeMap<String, u32>, String>,
    /// Driver and CUDA version, when NVML answered.
    pub driver: Option<String>,
    /// Where the agent keeps its state and server logs.
    pub state_dir: PathBuf,
    /// The address servers listen on.
    pub server_host: String,
    /// The container runtime settings, for units whose framework runs an image.
    pub containers: ContainerConfig,
}

impl Host {
    /// Reads this host's GPUs as the agent would register them: the FAKE GPUs of
    /// `simulated` (e.g. `H100-80GB:8`) when given, else NVML's, types normalised with
    /// `aliases`.
    pub fn probe(
        simulated: Option<&str>,
        aliases: &BTreeMap<String, String>,
        state_dir: PathBuf,
        server_host: String,
    ) -> Host {
        use evalctl_telemetry::GpuSource as _;
        let read = match simulated {
            Some(spec) => evalctl_telemetry::SimulatedGpus::parse(spec)
                .map(|gpus| {
                    (
                        gpus.inventory(),
                        "FAKE GPUs (simulated; no driver checked)".to_owned(),
                    )
                })
                .map_err(|err| evalctl_common::error_chain(&err)),
            None => evalctl_telemetry::NvmlGpus::init(aliases)
                .map(|nvml| {
                    let inventory = nvml.inventory();
                    let driver = format!(
                        "driver {}, CUDA {}",
                        inventory.driver_version.as_deref().unwrap_or("unknown"),
                        inventory.cuda_version.as_deref().unwrap_or("unknown")
                    );
                    (inventory, driver)
                })
                .map_err(|err| evalctl_common::error_chain(&err)),
        };
        let (gpus, driver) = match read {
            Ok((inventory, driver)) => {
                let mut by_type = BTreeMap::new();
                for gpu in &inventory.gpus {
                    *by_type.entry(gpu.gpu_type.clone()).or_insert(0) += 1;
                }
                (Ok(by_type), Some(driver))
            }
            Err(why) => (Err(why), None),
        };
        Host {
            gpus,
            driver,
            state_dir,
            server_host,
            containers: ContainerConfig::default(),
        }
    }
}

/// Disk space below which a warning is given: an engine's compile caches and logs alone
/// take a few GiB.
const LOW_DISK_BYTES: u64 = 10 << 30;
/// Disk space below which units will fail (logs, checkpoints, caches).
const NO_DISK_BYTES: u64 = 1 << 30;

/// Checks the units against the host.
pub fn check(units: &[PlannedUnit], host: &Host) -> Report {
    let mut findings = engines(units);
    findings.extend(images(units, host));
    findings.extend(models(units));
    findings.extend(gpus(units, host));
    findings.extend(disk(units, host));
    findings.push(port(host));
    Report {
        units: units.len(),
        findings,
    }
}

/// Labels of the units, for a finding.
fn labels<'a>(units: impl IntoIterator<Item = &'a PlannedUnit>) -> Vec<String> {
    units.into_iter().map(|u| u.label.clone()).collect()
}

/// The program a command runs, past `env` and its `NAME=value` words (the ollama preset's
/// form; `env`'s options are not parsed).
fn program_of(argv: &[String]) -> Option<(usize, &str)> {
    let mut at = 0;
    if argv.first().is_some_and(|p| p == "env") {
        at = 1;
        while argv.get(at).is_some_and(|a| a.contains('=')) {
            at += 1;
        }
    }
    argv.get(at).map(|p| (at, p.as_str()))
}

/// One finding per framework command program: found (where), or not.
fn engines(units: &[PlannedUnit]) -> Vec<Finding> {
    let mut by_program: BTreeMap<(String, Vec<String>), Vec<&PlannedUnit>> = BTreeMap::new();
    // A containerised unit's program is in its image; `images` checks those.
    for unit in units.iter().filter(|u| u.image.is_none()) {
        let Some((at, program)) = program_of(&unit.argv) else {
            continue;
        };
        // `python -m module`: the module is part of what must be installed.
        let is_python = Path::new(program)
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("python"));
        let module = (is_python && unit.argv.get(at + 1).map(String::as_str) == Some("-m"))
            .then(|| unit.argv.get(at + 2).cloned())
            .flatten();
        by_program
            .entry((program.to_owned(), module.into_iter().collect()))
            .or_default()
            .push(unit);
    }
    by_program
        .into_iter()
        .map(|((program, module), units)| {
            let mut frameworks: Vec<&str> = Vec::new();
            for unit in &units {
                if !frameworks.contains(&unit.framework.as_str()) {
                    frameworks.push(&unit.framework);
                }
            }
            let subject = frameworks.join(", ");
            let (level, detail) = match find_program(&program) {
                None => (
                    Level::Fail,
                    format!(
                        "`{program}` is not on PATH (hint: install the engine on this host, or give its full path in the framework's `command`)"
                    ),
                ),
                Some(path) => match module.first() {
                    None => (Level::Ok, format!("`{program}` is {}", path.display())),
                    Some(module) => match python_module(&path, module) {
                        Ok(()) => (
                            Level::Ok,
                            format!("`{program}` is {} and has `{module}`", path.display()),
                        ),
                        Err(why) => (
                            Level::Fail,
                            format!(
                                "`{program}` ({}) cannot import `{module}`: {why} (hint: install the engine into that Python)",
                                path.display()
                            ),
                        ),
                    },
                },
            };
            Finding {
                level,
                area: "engine",
                subject,
                detail,
                units: labels(units),
            }
        })
        .collect()
}

/// How long the preflight waits for the container runtime to answer.
const RUNTIME_PROBE: std::time::Duration = std::time::Duration::from_secs(10);

/// For units whose framework runs an image: one finding for the container runtime, and one
/// per image (on the host, or to be pulled at the first launch).
fn images(units: &[PlannedUnit], host: &Host) -> Vec<Finding> {
    let mut by_image: BTreeMap<&str, Vec<&PlannedUnit>> = BTreeMap::new();
    for unit in units {
        if let Some(image) = &unit.image {
            by_image.entry(image).or_default().push(unit);
        }
    }
    if by_image.is_empty() {
        return Vec::new();
    }
    let runtime = match Runtime::detect(&host.containers, RUNTIME_PROBE) {
        Ok(runtime) => runtime,
        Err(err) => {
            return vec![Finding {
                level: Level::Fail,
                area: "image",
                subject: "container runtime".to_owned(),
                detail: format!(
                    "{err} (hint: install Docker or Podman, or set `[container]` in the agent's config)"
                ),
                units: labels(by_image.into_values().flatten()),
            }];
        }
    };
    let mut findings = vec![Finding {
        level: Level::Ok,
        area: "image",
        subject: "container runtime".to_owned(),
        detail: format!("{} ({})", runtime.describe(), runtime.program.display()),
        units: Vec::new(),
    }];
    for (image, units) in by_image {
        let (level, detail) = match runtime.output_blocking(
            &["image", "inspect", "--format", "{{.Id}}", image],
            CLI_TIMEOUT,
        ) {
            Ok(id) => (Level::Ok, format!("on this host ({})", id.trim())),
            Err(CliError::Failed { .. }) => (
                Level::Warn,
                "not on this host: the agent pulls it before the first launch (with `pull: \
                 never` the units fail instead)"
                    .to_owned(),
            ),
            Err(err) => (Level::Fail, evalctl_common::error_chain(&err)),
        };
        findings.push(Finding {
            level,
            area: "image",
            subject: image.to_owned(),
            detail,
            units: labels(units),
        });
    }
    findings
}

/// Where the program a command names is, as the agent would run it.
fn find_program(program: &str) -> Option<PathBuf> {
    let resolved = resolve_program(program);
    if resolved.components().count() > 1 {
        return is_executable(&resolved).then_some(resolved);
    }
    which::which(program).ok()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `python` finds `module` (without importing it: engines take seconds to import).
fn python_module(python: &Path, module: &str) -> Result<(), String> {
    let top = module.split('.').next().unwrap_or(module);
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)",
            top,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("failed to run it: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(format!("no module named `{top}`")),
        _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

/// One finding per model path: present (and how big), a hub id found in the Hugging Face
/// cache, or neither.
fn models(units: &[PlannedUnit]) -> Vec<Finding> {
    let mut by_path: BTreeMap<&str, Vec<&PlannedUnit>> = BTreeMap::new();
    for unit in units.iter().filter(|u| !u.is_simulator()) {
        by_path.entry(&unit.model_path).or_default().push(unit);
    }
    by_path
        .into_iter()
        .map(|(path, units)| {
            let (level, detail) = model_state(path);
            Finding {
                level,
                area: "model",
                subject: path.to_owned(),
                detail,
                units: labels(units),
            }
        })
        .collect()
}

fn model_state(path: &str) -> (Level, String) {
    let local = Path::new(path);
    if local.is_dir() {
        let has_config = local.join("config.json").is_file();
        let weights = std::fs::read_dir(local)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.ends_with(".safetensors")
                            || name.ends_with(".bin")
                            || name.ends_with(".gguf")
                    })
                    .count()
            })
            .unwrap_or(0);
        return if has_config || weights > 0 {
            (
                Level::Ok,
                format!(
                    "a directory with {} and {weights} weight file(s)",
                    if has_config {
                        "config.json"
                    } else {
                        "no config.json"
                    }
                ),
            )
        } else {
            (
                Level::Warn,
                "a directory without config.json or weight files".to_owned(),
            )
        };
    }
    if local.is_file() {
        let size = std::fs::metadata(local).map_or(0, |m| m.len());
        return (Level::Ok, format!("a file of {}", bytes(size)));
    }
    let looks_local = path.starts_with('/') || path.starts_with('.') || path.starts_with('~');
    if looks_local || path.split('/').count() != 2 {
        return (
            Level::Fail,
            "not found on this host (hint: copy the model here, or fix `path` in the matrix)"
                .to_owned(),
        );
    }
    // `org/name`: a Hugging Face hub id, which the engine loads from its cache or downloads.
    match hub_cache_entry(path) {
        Some(dir) => (
            Level::Ok,
            format!("a hub id, in the Hugging Face cache at {}", dir.display()),
        ),
        None => (
            Level::Warn,
            "a hub id not in the Hugging Face cache: the engine downloads it at start (network access, a token for gated models, disk and time in the first unit)".to_owned(),
        ),
    }
}

/// The Hugging Face cache directory of hub id `id`, when present.
fn hub_cache_entry(id: &str) -> Option<PathBuf> {
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let hub = env("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| env("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub")))?;
    let dir = hub.join(format!("models--{}", id.replace('/', "--")));
    dir.join("snapshots").is_dir().then_some(dir)
}

/// The driver, and the GPUs of each type the units need against those the host has.
fn gpus(units: &[PlannedUnit], host: &Host) -> Vec<Finding> {
    let mut need: BTreeMap<String, (u32, Vec<&PlannedUnit>)> = BTreeMap::new();
    for unit in units.iter().filter(|u| !u.is_cpu()) {
        let entry = need.entry(unit.gpu_type.clone()).or_default();
        entry.0 = entry.0.max(unit.gpu_count);
        entry.1.push(unit);
    }
    let have = match &host.gpus {
        Err(why) if need.is_empty() => {
            return vec![Finding {
                level: Level::Ok,
                area: "gpu",
                subject: "driver".to_owned(),
                detail: format!("no GPU needed (CPU units only); NVML: {why}"),
                units: Vec::new(),
            }];
        }
        Err(why) => {
            return vec![Finding {
                level: Level::Fail,
                area: "gpu",
                subject: "driver".to_owned(),
                detail: format!(
                    "NVML did not answer: {why} (hint: install the NVIDIA driver, or run GPU units on another host)"
                ),
                units: labels(need.values().flat_map(|(_, units)| units.iter().copied())),
            }];
        }
        Ok(have) => have,
    };
    let mut findings = vec![Finding {
        level: Level::Ok,
        area: "gpu",
        subject: "driver".to_owned(),
        detail: format!(
            "{}; GPUs: {}",
            host.driver.as_deref().unwrap_or("NVML answered"),
            have.iter()
                .map(|(t, n)| format!("{n} x {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        units: Vec::new(),
    }];
    for (gpu_type, (count, units)) in need {
        let found = have
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(&gpu_type))
            .map_or(0, |(_, n)| *n);
        let (level, detail) = if found >= count {
            (Level::Ok, format!("{found} here, units need up to {count}"))
        } else {
            (
                Level::Warn,
                format!(
                    "{found} here, units need up to {count}: the coordinator gives those units to other hosts"
                ),
            )
        };
        findings.push(Finding {
            level,
            area: "gpu",
            subject: gpu_type,
            detail,
            units: labels(units),
        });
    }
    findings
}

/// Free space where the agent writes (state, logs) and where local models live.
fn disk(units: &[PlannedUnit], host: &Host) -> Vec<Finding> {
    let mut places: BTreeMap<PathBuf, String> = BTreeMap::new();
    places.insert(existing_ancestor(&host.state_dir), "agent state".to_owned());
    for unit in units.iter().filter(|u| !u.is_simulator()) {
        let path = Path::new(&unit.model_path);
        if path.exists() {
            places
                .entry(existing_ancestor(path))
                .or_insert_with(|| "models".to_owned());
        }
    }
    // One finding per file system.
    let mut by_fs: BTreeMap<u64, (PathBuf, String, u64)> = BTreeMap::new();
    for (place, what) in places {
        match nix::sys::statvfs::statvfs(&place) {
            Ok(stat) => {
                let free = stat.blocks_available() * stat.fragment_size();
                by_fs
                    .entry(stat.filesystem_id())
                    .or_insert((place, what, free));
            }
            Err(err) => {
                by_fs.insert(u64::MAX, (place, format!("{what}: {err}"), 0));
            }
        }
    }
    by_fs
        .into_values()
        .map(|(place, what, free)| {
            let level = if free < NO_DISK_BYTES {
                Level::Fail
            } else if free < LOW_DISK_BYTES {
                Level::Warn
            } else {
                Level::Ok
            };
            Finding {
                level,
                area: "disk",
                subject: place.display().to_string(),
                detail: format!("{} free ({what})", bytes(free)),
                units: Vec::new(),
            }
        })
        .collect()
}

/// The closest directory of `path` that exists (the state directory may not exist yet).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut at = if path.is_file() {
        path.parent().unwrap_or(path).to_path_buf()
    } else {
        path.to_path_buf()
    };
    while !at.exists() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent.to_path_buf(),
            _ => return PathBuf::from("/"),
        }
    }
    at
}

/// Whether a server could listen on the server address.
fn port(host: &Host) -> Finding {
    let (level, detail) = match free_port(&host.server_host) {
        Ok(port) => (
            Level::Ok,
            format!(
                "servers can listen on {} (port {port} was free)",
                host.server_host
            ),
        ),
        Err(err) => (
            Level::Fail,
            format!(
                "cannot listen on {}: {err} (hint: check `server_host` in the agent's configuration)",
                host.server_host
            ),
        ),
    };
    Finding {
        level,
        area: "port",
        subject: host.server_host.clone(),
        detail,
        units: Vec::new(),
    }
}

/// `12.3 GiB`, `512 KiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Reads planned units from `evalctl submit --dry-run --json` output (its `unit_list`) or
/// from a JSON array of units.
pub fn parse_units(source: &str, text: &str) -> anyhow::Result<Vec<PlannedUnit>> {
    use anyhow::Context as _;
    let value: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("{source}: not JSON (hint: give it the output of `evalctl submit --dry-run --json MATRIX`)"))?;
    let list = value.get("unit_list").cloned().unwrap_or(value);
    serde_json::from_value(list).with_context(|| {
        format!(
            "{source}: expected `unit_list` of `evalctl submit --dry-run --json` (each unit with unit_id, label, framework, argv, model_path, gpu_type, gpu_count)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(framework: &str, argv: &[&str], model: &str, gpu: &str, count: u32) -> PlannedUnit {
        PlannedUnit {
            unit_id: format!("u-{framework}"),
            label: format!("m / {gpu} x{count} / {framework} / bf16"),
            framework: framework.to_owned(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            model_path: model.to_owned(),
            gpu_type: gpu.to_owned(),
            gpu_count: count,
            image: None,
            container_create: BTreeMap::new(),
        }
    }

    fn host(dir: &Path, gpus: Result<BTreeMap<String, u32>, String>) -> Host {
        Host {
            gpus,
            driver: Some("driver 580.1, CUDA 13.0".into()),
            state_dir: dir.join("state"),
            server_host: "127.0.0.1".into(),
            containers: ContainerConfig::default(),
        }
    }

    fn finding<'a>(report: &'a Report, area: &str, subject: &str) -> &'a Finding {
        report
            .findings
            .iter()
            .find(|f| f.area == area && f.subject.contains(subject))
            .unwrap_or_else(|| panic!("no {area} finding for {subject}: {report:#?}"))
    }

    #[test]
    fn a_missing_engine_and_model_fail_and_present_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(model.join("model.safetensors"), "x").unwrap();
        let model = model.to_str().unwrap();
        let units = vec![
            unit("sh-engine", &["sh", "-c", "true"], model, "cpu", 1),
            unit(
                "missing",
                &["no-such-engine-xyz", "--model", model],
                "/nowhere/model.gguf",
                "cpu",
                1,
            ),
            unit("llama", &["sh", "-m", model], model, "cpu", 1),
            unit(
                "python-mod",
                &["python3", "-m", "no_such_module_xyz.server"],
                model,
                "cpu",
                1,
            ),
        ];
        let report = check(&units, &host(dir.path(), Err("no driver".into())));
        let sh = finding(&report, "engine", "sh-engine");
        assert_eq!(sh.level, Level::Ok);
        // `-m` is a module only for Python: `sh -m MODEL` (llama-server's form) is the same
        // program as `sh -c`.
        assert_eq!(sh.subject, "sh-engine, llama", "{report:#?}");
        let missing = finding(&report, "engine", "missing");
        assert_eq!(missing.level, Level::Fail);
        assert!(missing.detail.contains("not on PATH"), "{missing:?}");
        let module = finding(&report, "engine", "python-mod");
        if which::which("python3").is_ok() {
            assert_eq!(module.level, Level::Fail, "{module:?}");
            assert!(module.detail.contains("no_such_module_xyz"), "{module:?}");
        }
        let present = finding(&report, "model", model);
        assert_eq!(present.level, Level::Ok);
        assert!(
            present.detail.contains("config.json and 1 weight file"),
            "{present:?}"
        );
        assert_eq!(
            finding(&report, "model", "/nowhere").level,
            Level::Fail,
            "{report:#?}"
        );
        // CPU units only: no driver is fine.
        assert_eq!(finding(&report, "gpu", "driver").level, Level::Ok);
        assert_eq!(finding(&report, "port", "127.0.0.1").level, Level::Ok);
        assert_eq!(report.worst(), Level::Fail);
        let text = report.human();
        assert!(text.contains("Not ready: 3 problem(s)"), "{text}");
    }

    #[test]
    fn gpu_units_need_a_driver_and_enough_gpus_of_their_type() {
        let dir = tempfile::tempdir().unwrap();
        let units = vec![
            unit("sh", &["sh"], "sim", "H100-80GB", 8),
            unit("sh", &["sh"], "sim", "L4", 1),
        ];
        let none = check(
            &units,
            &host(dir.path(), Err("libnvidia-ml.so.1 not found".into())),
        );
        let driver = finding(&none, "gpu", "driver");
        assert_eq!(driver.level, Level::Fail);
        assert_eq!(driver.units.len(), 2);

        let have = BTreeMap::from([("H100-80GB".to_owned(), 4), ("L4".to_owned(), 1)]);
        let some = check(&units, &host(dir.path(), Ok(have)));
        assert_eq!(finding(&some, "gpu", "driver").level, Level::Ok);
        let h100 = finding(&some, "gpu", "H100-80GB");
        assert_eq!(h100.level, Level::Warn, "4 of 8: {h100:?}");
        assert_eq!(finding(&some, "gpu", "L4").level, Level::Ok);
    }

    #[test]
    fn hub_ids_are_looked_up_in_the_cache_and_the_simulator_needs_no_model() {
        let (level, detail) = model_state("org-that-is-not-cached/model-xyz");
        assert_eq!(level, Level::Warn);
        assert!(detail.contains("downloads it at start"), "{detail}");
        let dir = tempfile::tempdir().unwrap();
        let sim = unit("sim", &[AGENT_PROGRAM, "sim-server"], "sim", "cpu", 1);
        let report = check(&[sim], &host(dir.path(), Err("none".into())));
        assert!(report.findings.iter().all(|f| f.area != "model"));
        assert_eq!(finding(&report, "engine", "sim").level, Level::Ok);
    }

    #[test]
    fn units_are_read_from_a_dry_run_listing() {
        let text = r#"{"campaign":"c","unit_list":[{"unit_id":"u-1","label":"l","framework":"vllm",
            "argv":["vllm","serve","m"],"model_path":"m","gpu_type":"cpu","gpu_count":1,
            "steps":2,"command":"vllm serve {model.path}"}]}"#;
        let units = parse_units("units.json", text).unwrap();
        assert_eq!(units[0].argv, ["vllm", "serve", "m"]);
        let err = parse_units("units.json", r#"{"unit_list":[{"unit_id":"u"}]}"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("units.json: expected `unit_list`"),
            "{err:#}"
        );
    }

    #[test]
    fn env_words_are_skipped_to_find_the_program() {
        // The ollama preset's form.
        let argv: Vec<String> = ["env", "OLLAMA_HOST=127.0.0.1:8000", "ollama", "serve"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(program_of(&argv).map(|(_, p)| p), Some("ollama"));
    }

    #[test]
    fn a_containerised_unit_needs_a_runtime_not_its_engine_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut vllm = unit("vllm", &["vllm", "serve", "m"], "m", "cpu", 1);
        vllm.image = Some("vllm/vllm-openai:v0.11.0".into());
        let mut host = host(dir.path(), Err("none".into()));
        host.containers = ContainerConfig {
            choice: crate::launcher::container::RuntimeChoice::Podman,
            program: Some(dir.path().join("no-podman")),
            ..ContainerConfig::default()
        };
        let report = check(&[vllm], &host);
        // The engine is in the image: no `vllm` on PATH is needed.
        assert!(
            report.findings.iter().all(|f| f.area != "engine"),
            "{report:#?}"
        );
        let runtime = finding(&report, "image", "container runtime");
        assert_eq!(runtime.level, Level::Fail);
        assert!(runtime.detail.contains("no-podman"), "{}", runtime.detail);
        assert_eq!(runtime.units.len(), 1);
    }
}
