//! A fake GPU source for hosts without GPUs: GPUs declared on the command line, with
//! synthetic, deterministic samples.

use std::f64::consts::TAU;
use std::time::Instant;

use super::{GpuDevice, GpuSample, GpuSource, Inventory, ThrottleReasons};

/// Period of the simulated load curve, seconds.
const LOAD_PERIOD_S: f64 = 8.0;
/// Mean and amplitude of the simulated load (a fraction of full load).
const LOAD_MEAN: f64 = 0.65;
const LOAD_AMPLITUDE: f64 = 0.25;
/// Idle power as a fraction of the board's power limit.
const IDLE_FRACTION: f64 = 0.15;
/// The energy counter's value at the source's creation, mJ (a real counter counts from the
/// driver's load, so it never starts at 0).
const ENERGY_START_MJ: f64 = 1.0e9;

/// GPUs declared by a spec such as `H100-80GB:8` or `H100-80GB:4,L4-24GB:2` (type, then
/// count; indices follow in order). The memory is read from the type's `-NNGB` suffix when
/// it has one. This is a fake for tests and local runs; see the module docs of `telemetry`.
///
/// Samples are synthetic and a pure function of the time since the source was created
/// ([`SimulatedGpus::sample_at`]): power follows a sine load curve between idle and the
/// board's power limit (by type; 300 W when unknown), and the energy counter is the exact
/// integral of that power, so counter and integrated power agree.
#[derive(Debug, Clone)]
pub struct SimulatedGpus {
    gpus: Vec<GpuDevice>,
    started: Instant,
}

/// A `--gpus` spec that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "invalid simulated GPU spec `{spec}`: {reason} (expected TYPE:COUNT[,TYPE:COUNT…], e.g. H100-80GB:8)"
)]
pub struct SimulatedGpusError {
    spec: String,
    reason: String,
}

impl SimulatedGpus {
    /// Parses a spec; an empty spec declares no GPUs.
    pub fn parse(spec: &str) -> Result<SimulatedGpus, SimulatedGpusError> {
        let error = |reason: String| SimulatedGpusError {
            spec: spec.to_owned(),
            reason,
        };
        let mut gpus = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (gpu_type, count) = match part.rsplit_once(':') {
                Some((t, n)) => {
                    let n: u32 = n
                        .trim()
                        .parse()
                        .map_err(|_| error(format!("`{n}` is not a GPU count")))?;
                    (t.trim(), n)
                }
                None => (part, 1),
            };
            if gpu_type.is_empty() || gpu_type.eq_ignore_ascii_case("cpu") {
                return Err(error(format!("`{part}` names no GPU type")));
            }
            if count == 0 || count > 64 {
                return Err(error(format!(
                    "a host has 1 to 64 GPUs of a type, not {count}"
                )));
            }
            for _ in 0..count {
                let index = gpus.len() as u32;
                gpus.push(GpuDevice {
                    index,
                    uuid: format!("SIMULATED-{gpu_type}-{index}"),
                    name: format!("Simulated {gpu_type}"),
                    gpu_type: gpu_type.to_owned(),
                    memory_gb: memory_from_type(gpu_type).unwrap_or(0.0),
                });
            }
        }
        Ok(SimulatedGpus {
            gpus,
            started: Instant::now(),
        })
    }

    /// The synthetic sample of GPU `index` at `t_s` seconds after the source's creation;
    /// all fields absent for an index the source does not have.
    pub fn sample_at(&self, index: u32, t_s: f64) -> GpuSample {
        let Some(gpu) = self.gpus.iter().find(|g| g.index == index) else {
            return GpuSample::default();
        };
        let limit_w = power_limit_w(&gpu.gpu_type);
        let idle_w = limit_w * IDLE_FRACTION;
        let phase = f64::from(index) * 0.7;
        let angle = TAU * t_s / LOAD_PERIOD_S + phase;
        let load = LOAD_MEAN + LOAD_AMPLITUDE * angle.sin();
        let power_w = idle_w + (limit_w - idle_w) * load;
        // ∫ power dt from 0 to t, in J.
        let load_integral =
            LOAD_MEAN * t_s + LOAD_AMPLITUDE * LOAD_PERIOD_S / TAU * (phase.cos() - angle.cos());
        let energy_j = idle_w * t_s + (limit_w - idle_w) * load_integral;
        let memory_mib = (gpu.memory_gb * 1024.0) as u64;
        let throttle_mask = if load > 0.85 { 0x4 } else { 0 };
        GpuSample {
            sm_util_pct: Some((load * 100.0).round() as u32),
            mem_util_pct: Some((load * 60.0).round() as u32),
            mem_used_mib: (memory_mib > 0).then_some(memory_mib * 9 / 10),
            power_w: Some((power_w * 1000.0).round() / 1000.0),
            energy_mj: Some((ENERGY_START_MJ + energy_j * 1000.0).round() as u64),
            temperature_c: Some((40.0 + 35.0 * load).round() as u32),
            sm_clock_mhz: Some(if throttle_mask != 0 { 1755 } else { 1980 }),
            mem_clock_mhz: Some(2619),
            throttle: Some(ThrottleReasons::from_mask(throttle_mask)),
            pcie_rx_kb_s: Some((2_000.0 * load).round() as u32),
            pcie_tx_kb_s: Some((800.0 * load).round() as u32),
            xid_errors: Some(0),
            last_xid: None,
            ecc_corrected: Some(0),
            ecc_uncorrected: Some(0),
        }
    }
}

/// A made-up board power limit by type, W.
fn power_limit_w(gpu_type: &str) -> f64 {
    let t = gpu_type.to_ascii_uppercase();
    let table = [
        ("B200", 1000.0),
        ("GH200", 900.0),
        ("H200", 700.0),
        ("H100", 700.0),
        ("A100", 400.0),
        ("L40", 350.0),
        ("A10", 150.0),
        ("L4", 72.0),
        ("T4", 70.0),
    ];
    table
        .iter()
        .find(|(prefix, _)| t.starts_with(prefix))
        .map_or(300.0, |(_, w)| *w)
}

/// `H100-80GB` → 80.
fn memory_from_type(gpu_type: &str) -> Option<f64> {
    let (_, tail) = gpu_type.rsplit_once('-')?;
    let digits = tail
        .strip_suffix("GB")
        .or_else(|| tail.strip_suffix("gb"))?;
    digits.parse().ok()
}

impl GpuSource for SimulatedGpus {
    fn inventory(&self) -> Inventory {
        Inventory {
            gpus: self.gpus.clone(),
            driver_version: None,
            cuda_version: None,
            source: "simulated".to_owned(),
        }
    }

    fn sample(&self, index: u32) -> GpuSample {
        self.sample_at(index, self.started.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_counts_with_consecutive_indices() {
        let gpus = SimulatedGpus::parse("H100-80GB:2, L4-24GB")
            .unwrap()
            .inventory();
        let summary: Vec<_> = gpus
            .gpus
            .iter()
            .map(|g| (g.index, g.gpu_type.as_str(), g.memory_gb))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "H100-80GB", 80.0),
                (1, "H100-80GB", 80.0),
                (2, "L4-24GB", 24.0)
            ]
        );
        assert!(gpus.gpus.iter().all(|g| g.uuid.starts_with("SIMULATED-")));
        assert_eq!(gpus.source, "simulated");
    }

    #[test]
    fn empty_spec_is_no_gpus() {
        assert!(
            SimulatedGpus::parse("")
                .unwrap()
                .inventory()
                .gpus
                .is_empty()
        );
    }

    #[test]
    fn samples_are_deterministic_and_the_counter_integrates_power() {
        let gpus = SimulatedGpus::parse("H100-80GB:2").unwrap();
        assert_eq!(gpus.sample_at(1, 3.25), gpus.sample_at(1, 3.25));
        assert_ne!(
            gpus.sample_at(0, 1.0).power_w,
            gpus.sample_at(1, 1.0).power_w
        );
        // Trapezoid over 10 ms steps vs the counter's delta over 0..8 s.
        let mut integral_j = 0.0;
        let mut previous = gpus.sample_at(0, 0.0).power_w.unwrap();
        for i in 1..=800 {
            let p = gpus.sample_at(0, f64::from(i) * 0.01).power_w.unwrap();
            integral_j += (previous + p) / 2.0 * 0.01;
            previous = p;
        }
        let counter_j = (gpus.sample_at(0, 8.0).energy_mj.unwrap()
            - gpus.sample_at(0, 0.0).energy_mj.unwrap()) as f64
            / 1000.0;
        assert!(
            (counter_j - integral_j).abs() < 0.5,
            "{counter_j} vs {integral_j}"
        );
        let p = gpus.sample_at(0, 0.5).power_w.unwrap();
        assert!((105.0..=700.0).contains(&p), "{p}");
        assert_eq!(
            gpus.sample_at(7, 0.0),
            GpuSample::default(),
            "unknown index"
        );
    }

    #[test]
    fn bad_specs_say_what_was_expected() {
        for spec in ["H100:x", "H100:0", ":2", "cpu:1"] {
            let err = SimulatedGpus::parse(spec).unwrap_err().to_string();
            assert!(err.contains("expected TYPE:COUNT"), "{err}");
            assert!(err.contains(spec), "{err}");
        }
    }
}
