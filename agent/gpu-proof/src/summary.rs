//! `evalctl-gpu-proof summarize`: the proof's JSON summary from the NVML check, the proof
//! campaign's results (`evalctl local --json`) and the server's report, with the checks
//! that decide whether the GPU path works: the agent's `CUDA_VISIBLE_DEVICES` reached the
//! server and named the GPU the agent leased (CUDA and NVML UUIDs match), the step's
//! telemetry saw the load and the memory held, and the energy counter agrees with the
//! integrated power.

use evalctl_results::telemetry::{GpuSummary, TelemetrySummary};
use evalctl_results::{Environment, StepDocument};
use serde::{Deserialize, Serialize};

use crate::check::{CheckReport, GpuFacts};
use crate::serve::ServeReport;

/// How far apart the energy counter and the integrated power may be, as a fraction.
pub const ENERGY_TOLERANCE: f64 = 0.05;

/// A stored result as `evalctl local --json` lists it (the fields read here).
#[derive(Debug, Clone, Deserialize)]
pub struct LocalResult {
    /// Step id.
    pub step_id: String,
    /// The step document.
    pub result: StepDocument,
    /// Where it ran.
    pub environment: Option<Environment>,
}

/// `evalctl local --json`'s output (the fields read here).
#[derive(Debug, Clone, Deserialize)]
pub struct LocalOutput {
    /// The campaign's final state.
    pub state: String,
    /// Its results.
    pub results: Vec<LocalResult>,
}

/// Energy of one GPU over an interval, two ways.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyComparison {
    /// From `nvmlDeviceGetTotalEnergyConsumption`'s counter, J.
    pub counter_j: Option<f64>,
    /// From integrating the power readings, J.
    pub integrated_j: Option<f64>,
    /// `(integrated − counter) / counter`, percent.
    pub difference_pct: Option<f64>,
}

impl EnergyComparison {
    fn of(gpu: &GpuSummary) -> EnergyComparison {
        let counter_j = match gpu.energy_method {
            Some(evalctl_results::telemetry::EnergyMethod::PowerIntegration) | None => None,
            Some(_) => gpu.energy_j,
        };
        EnergyComparison {
            counter_j,
            integrated_j: gpu.energy_integrated_j,
            difference_pct: match (counter_j, gpu.energy_integrated_j) {
                (Some(c), Some(i)) if c > 0.0 => Some((i - c) / c * 100.0),
                _ => None,
            },
        }
    }
}

/// One GPU's readings over an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuReadings {
    /// CUDA index.
    pub gpu: u32,
    /// Samples taken.
    pub samples: u64,
    /// Energy, two ways.
    pub energy: EnergyComparison,
    /// Mean power, W.
    pub mean_power_w: Option<f64>,
    /// Highest power, W.
    pub max_power_w: Option<f64>,
    /// Mean SM utilisation, percent (absent under MIG).
    pub mean_sm_util_pct: Option<f64>,
    /// Highest memory in use, MiB.
    pub peak_mem_used_mib: Option<u64>,
    /// Throttle reasons seen, `gpu_idle` left out.
    pub throttle_reasons_seen: Option<Vec<String>>,
    /// Longest gap between readings, ms.
    pub max_gap_ms: Option<u64>,
}

impl GpuReadings {
    fn of(gpu: &GpuSummary) -> GpuReadings {
        GpuReadings {
            gpu: gpu.gpu,
            samples: gpu.samples,
            energy: EnergyComparison::of(gpu),
            mean_power_w: gpu.mean_power_w,
            max_power_w: gpu.max_power_w,
            mean_sm_util_pct: gpu.mean_sm_util_pct,
            peak_mem_used_mib: gpu.peak_mem_used_mib,
            throttle_reasons_seen: gpu.throttle_reasons_seen.clone(),
            max_gap_ms: gpu.max_gap_ms,
        }
    }
}

/// The idle check: NVML sampled alone, before the campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleCheck {
    /// Rate asked, Hz.
    pub rate_hz_asked: f64,
    /// Rounds per second achieved.
    pub samples_per_s: f64,
    /// Per GPU.
    pub gpus: Vec<GpuReadings>,
}

/// The proof campaign's load step, as the agent measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadStep {
    /// The step id.
    pub step_id: String,
    /// Telemetry source (`nvml` on a GPU host).
    pub source: String,
    /// Sampling rate configured, Hz.
    pub rate_hz: f64,
    /// Rounds per second achieved.
    pub samples_per_s: f64,
    /// Seconds sampled.
    pub duration_s: f64,
    /// The GPUs the unit ran on, as the agent's environment lists them.
    pub leased: Vec<String>,
    /// Per GPU.
    pub gpus: Vec<GpuReadings>,
    /// Requests completed (simulated answers).
    pub completed: Option<u64>,
}

/// The campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignFacts {
    /// Its final state.
    pub state: String,
    /// The load step, when stored.
    pub step: Option<LoadStep>,
}

/// The verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    /// The campaign succeeded.
    pub campaign_succeeded: bool,
    /// The server saw `CUDA_VISIBLE_DEVICES` set to the GPU the agent leased.
    pub cuda_visible_devices_reached: bool,
    /// The server's CUDA device 0 is the leased GPU (or one of its MIG instances): the
    /// UUIDs' 16 bytes match.
    pub cuda_uuid_matches_nvml: bool,
    /// The step's samples show the memory the server held.
    pub memory_held_seen: bool,
    /// The server's kernels ran during the step.
    pub load_ran: bool,
    /// Energy counter and integrated power agree within 5% over the loaded step; `None`
    /// when the GPU lacks one of them.
    pub energy_agrees: Option<bool>,
}

/// The summary `scripts/gpu-proof.sh` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Driver version.
    pub driver_version: Option<String>,
    /// CUDA version the driver supports (NVML).
    pub cuda_version: Option<String>,
    /// The GPUs NVML lists.
    pub gpus: Vec<GpuFacts>,
    /// NVML sampled before the campaign.
    pub idle_check: IdleCheck,
    /// The NVML field integrated against the energy counter.
    pub integrated_field: String,
    /// The proof campaign.
    pub campaign: CampaignFacts,
    /// What the server's CUDA driver reported, and the work it did.
    pub server: Option<ServeReport>,
    /// The verdicts.
    pub checks: Checks,
}

impl Summary {
    /// Whether every check passed (an energy comparison the GPU cannot make passes).
    pub fn passed(&self) -> bool {
        let c = &self.checks;
        c.campaign_succeeded
            && c.cuda_visible_devices_reached
            && c.cuda_uuid_matches_nvml
            && c.memory_held_seen
            && c.load_ran
            && c.energy_agrees != Some(false)
    }
}

/// Builds the summary.
pub fn summarize(check: &CheckReport, local: &LocalOutput, serve: Option<&ServeReport>) -> Summary {
    let stored = local.results.iter().find(|r| r.result.telemetry.is_some());
    let telemetry: Option<&TelemetrySummary> = stored.and_then(|r| r.result.telemetry.as_ref());
    let leased: Vec<&evalctl_results::telemetry::GpuDevice> = stored
        .and_then(|r| r.environment.as_ref())
        .map(|e| e.gpus.iter().collect())
        .unwrap_or_default();
    let step = stored.zip(telemetry).map(|(r, t)| LoadStep {
        step_id: r.step_id.clone(),
        source: t.source.clone(),
        rate_hz: t.rate_hz,
        samples_per_s: if t.duration_s > 0.0 {
            t.rounds.saturating_sub(1) as f64 / t.duration_s
        } else {
            0.0
        },
        duration_s: t.duration_s,
        leased: leased
            .iter()
            .map(|g| format!("{} {}", g.index, g.uuid))
            .collect(),
        gpus: t.gpus.iter().map(GpuReadings::of).collect(),
        completed: r.result.metrics.as_ref().map(|m| m.completed),
    });
    let leased_gpu = leased
        .first()
        .and_then(|l| check.gpus.iter().find(|g| g.uuid == l.uuid));
    let checks = checks(&local.state, leased_gpu, telemetry, serve);
    Summary {
        driver_version: check.driver_version.clone(),
        cuda_version: check.cuda_version.clone(),
        gpus: check.gpus.clone(),
        idle_check: IdleCheck {
            rate_hz_asked: check.sampling.rate_hz_asked,
            samples_per_s: check.sampling.samples_per_s,
            gpus: check.sampling.gpus.iter().map(GpuReadings::of).collect(),
        },
        integrated_field: check.sampling.integrated_field.clone(),
        campaign: CampaignFacts {
            state: local.state.clone(),
            step,
        },
        server: serve.cloned(),
        checks,
    }
}

/// The verdicts on what the campaign in state `state` measured (`telemetry`, on the GPU
/// `leased`) and what its server reported (`serve`).
fn checks(
    state: &str,
    leased: Option<&GpuFacts>,
    telemetry: Option<&TelemetrySummary>,
    serve: Option<&ServeReport>,
) -> Checks {
    let cuda = serve.map(|s| &s.cuda);
    Checks {
        campaign_succeeded: state == "succeeded",
        cuda_visible_devices_reached: match (leased, cuda) {
            (Some(g), Some(c)) => visible_devices_name(c.cuda_visible_devices.as_deref(), g),
            _ => false,
        },
        cuda_uuid_matches_nvml: match (leased, cuda) {
            (Some(g), Some(c)) => std::iter::once(&g.uuid)
                .chain(&g.mig_devices)
                .any(|u| same_uuid(u, &c.uuid)),
            _ => false,
        },
        memory_held_seen: match (telemetry, serve) {
            (Some(t), Some(s)) => t.peak_mem_used_mib.is_some_and(|m| m >= s.cuda.held_mib),
            _ => false,
        },
        load_ran: serve.is_some_and(|s| s.progress.launches > 0),
        energy_agrees: telemetry.and_then(|t| {
            let differences: Vec<f64> = t
                .gpus
                .iter()
                .filter_map(|g| EnergyComparison::of(g).difference_pct)
                .collect();
            (!differences.is_empty()).then(|| {
                differences
                    .iter()
                    .all(|d| d.abs() <= ENERGY_TOLERANCE * 100.0)
            })
        }),
    }
}

/// Whether `visible` (the server's `CUDA_VISIBLE_DEVICES`) names exactly GPU `gpu`: by
/// index, by UUID, or by one of its MIG instances' UUIDs.
fn visible_devices_name(visible: Option<&str>, gpu: &GpuFacts) -> bool {
    let Some(visible) = visible else {
        return false;
    };
    let entries: Vec<&str> = visible.split(',').map(str::trim).collect();
    entries.len() == 1
        && (entries[0] == gpu.index.to_string()
            || entries[0] == gpu.uuid
            || gpu.mig_devices.iter().any(|m| m == entries[0]))
}

/// Whether two UUIDs name the same 16 bytes, whatever their prefixes (`GPU-`, `MIG-`).
fn same_uuid(a: &str, b: &str) -> bool {
    let hex = |u: &str| -> String {
        u.trim_start_matches("GPU-")
            .trim_start_matches("MIG-")
            .to_ascii_lowercase()
    };
    !hex(a).is_empty() && hex(a) == hex(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burn::BurnProgress;

    fn gpu() -> GpuFacts {
        GpuFacts {
            index: 0,
            name: "n".into(),
            uuid: "GPU-fa4efa4e-0000-4000-8000-000000000001".into(),
            gpu_type: "H100-80GB".into(),
            memory_gb: 85.0,
            mig_enabled: Some(true),
            mig_devices: vec!["MIG-fa4efa4e-0000-4000-8000-0000000000aa".into()],
            fields_missing: Vec::new(),
        }
    }

    #[test]
    fn visible_devices_must_name_the_leased_gpu_alone() {
        let g = gpu();
        assert!(visible_devices_name(Some("0"), &g));
        assert!(visible_devices_name(Some(&g.uuid), &g));
        assert!(visible_devices_name(Some(&g.mig_devices[0]), &g));
        assert!(!visible_devices_name(Some("0,1"), &g));
        assert!(!visible_devices_name(Some("1"), &g));
        assert!(!visible_devices_name(None, &g));
    }

    /// A step's telemetry: one GPU with `counter` J from the counter and `integrated` J
    /// from the power, and `peak_mib` in use.
    fn telemetry(counter: f64, integrated: f64, peak_mib: u64) -> TelemetrySummary {
        TelemetrySummary {
            peak_mem_used_mib: Some(peak_mib),
            gpus: vec![GpuSummary {
                energy_j: Some(counter),
                energy_method: Some(evalctl_results::telemetry::EnergyMethod::Counter),
                energy_integrated_j: Some(integrated),
                ..GpuSummary::default()
            }],
            ..TelemetrySummary::default()
        }
    }

    fn serve(uuid: &str, visible: &str) -> ServeReport {
        let mut report = ServeReport::default();
        report.cuda.uuid = uuid.into();
        report.cuda.cuda_visible_devices = Some(visible.into());
        report.cuda.held_mib = 1024;
        report.progress.launches = 10;
        report
    }

    #[test]
    fn every_check_can_fail() {
        let mut g = gpu();
        g.mig_devices.clear();
        let good = serve(&g.uuid, "0");
        let t = telemetry(1000.0, 1030.0, 1536);
        let all = checks("succeeded", Some(&g), Some(&t), Some(&good));
        assert_eq!(
            all,
            Checks {
                campaign_succeeded: true,
                cuda_visible_devices_reached: true,
                cuda_uuid_matches_nvml: true,
                memory_held_seen: true,
                load_ran: true,
                energy_agrees: Some(true),
            }
        );
        assert!(!checks("failed", Some(&g), Some(&t), Some(&good)).campaign_succeeded);
        let other = serve("GPU-ffffffff-0000-4000-8000-000000000001", "1");
        let wrong = checks("succeeded", Some(&g), Some(&t), Some(&other));
        assert!(!wrong.cuda_visible_devices_reached && !wrong.cuda_uuid_matches_nvml);
        let small = telemetry(1000.0, 1000.0, 700);
        assert!(!checks("succeeded", Some(&g), Some(&small), Some(&good)).memory_held_seen);
        let off = telemetry(1000.0, 1060.0, 1536);
        assert_eq!(
            checks("succeeded", Some(&g), Some(&off), Some(&good)).energy_agrees,
            Some(false)
        );
        let idle = ServeReport {
            progress: BurnProgress::default(),
            ..good.clone()
        };
        assert!(!checks("succeeded", Some(&g), Some(&t), Some(&idle)).load_ran);
        // No server report (it never opened the GPU): nothing about CUDA passes.
        let none = checks("failed", Some(&g), Some(&t), None);
        assert!(!none.cuda_uuid_matches_nvml && !none.load_ran && !none.memory_held_seen);
    }

    #[test]
    fn uuids_match_on_their_bytes() {
        assert!(same_uuid(
            "MIG-fa4efa4e-0000-4000-8000-0000000000aa",
            "GPU-FA4EFA4E-0000-4000-8000-0000000000AA"
        ));
        assert!(!same_uuid("GPU-1", "GPU-2"));
        assert!(!same_uuid("GPU-", "MIG-"));
    }
}
