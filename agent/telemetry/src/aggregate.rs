//! A step's samples turned into the figures stored with its result: energy, power,
//! utilisation, memory, temperature, throttling, and the derived energy efficiency.
//!
//! Pure functions of the samples. Every figure is absent when what it needs was absent:
//! a GPU without an energy counter and without power readings has no energy, never 0 J.
//!
//! Energy of a GPU, in order of preference:
//! 1. `counter`: the delta of NVML's total-energy counter over the step. A decrease between
//!    two samples is a wrap when reading it as one (of a 32- or 64-bit counter) gives a
//!    plausible power (≤ [`MAX_PLAUSIBLE_W`]); otherwise the counter was reset (driver
//!    reload): the monotone segments are summed and the interval across the reset is
//!    bridged by integrating power (method `counter_segments`).
//! 2. `power_integration`: the trapezoid integral of the power samples, when the GPU has no
//!    counter (before Volta) or fewer than two counter readings.
//!
//! Cross-check (docs/DESIGN "Telemetry"): a GPU's power data is `power_valid = false` when
//! counter and integrated power differ by more than [`MAX_DISAGREEMENT`] or two samples are
//! more than [`MAX_GAP_MS`] apart.

use std::collections::{BTreeMap, BTreeSet};

use evalctl_results::telemetry::{EnergyMethod, GpuSummary, HostSummary, TelemetrySummary};

use super::sampler::{GpuRecord, HostRecord, StepTelemetry};

/// A counter decrease read as a wrap must imply at most this power, W.
pub const MAX_PLAUSIBLE_W: f64 = 5_000.0;
/// Counter and integrated power may differ by this fraction before the data is flagged.
pub const MAX_DISAGREEMENT: f64 = 0.05;
/// Samples further apart than this flag the data, ms.
pub const MAX_GAP_MS: u64 = 3_000;

/// What the load generator measured, for the derived figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    /// Output tokens of the measured requests.
    pub output_tokens: Option<u64>,
    /// The measured window, s.
    pub duration_s: Option<f64>,
}

/// The step's figures from its samples and what the load generator measured.
pub fn summarise(telemetry: &StepTelemetry, throughput: Throughput) -> TelemetrySummary {
    let mut by_gpu: BTreeMap<u32, Vec<&GpuRecord>> = BTreeMap::new();
    for record in &telemetry.gpus {
        by_gpu.entry(record.gpu).or_default().push(record);
    }
    let gpus: Vec<GpuSummary> = telemetry
        .gpu_indices
        .iter()
        .map(|&gpu| gpu_summary(gpu, by_gpu.get(&gpu).map_or(&[][..], Vec::as_slice)))
        .collect();
    let all = |f: fn(&GpuSummary) -> Option<f64>| -> Option<f64> {
        if gpus.is_empty() {
            return None;
        }
        gpus.iter().map(f).sum::<Option<f64>>()
    };
    let energy_j = all(|g| g.energy_j);
    let energy_method = energy_j.and_then(|_| {
        let methods: BTreeSet<_> = gpus
            .iter()
            .filter_map(|g| g.energy_method.map(|m| m as u8))
            .collect();
        match methods.len() {
            0 => None,
            1 => gpus[0].energy_method,
            _ => Some(EnergyMethod::Mixed),
        }
    });
    let mean_power_w = all(|g| g.mean_power_w);
    // Highest total power among rounds where every GPU reported power.
    let mut rounds: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for record in &telemetry.gpus {
        if let Some(p) = record.sample.power_w {
            let round = rounds.entry(record.t_ms).or_default();
            round.0 += p;
            round.1 += 1;
        }
    }
    let max_power_w = rounds
        .values()
        .filter(|(_, n)| *n == gpus.len())
        .map(|(p, _)| *p)
        .reduce(f64::max);
    let sm: Vec<f64> = telemetry
        .gpus
        .iter()
        .filter_map(|r| r.sample.sm_util_pct.map(f64::from))
        .collect();
    let throttle_reasons_seen = gpus
        .iter()
        .filter_map(|g| g.throttle_reasons_seen.clone())
        .reduce(|mut a, b| {
            a.extend(b);
            a.sort();
            a.dedup();
            a
        });
    let valid: Vec<bool> = gpus.iter().filter_map(|g| g.power_valid).collect();
    let tok_s = match (throughput.output_tokens, throughput.duration_s) {
        (Some(tokens), Some(s)) if s > 0.0 => Some(tokens as f64 / s),
        _ => None,
    };
    let joules_per_output_token = match (energy_j, throughput.output_tokens) {
        (Some(j), Some(tokens)) if tokens > 0 => Some(j / tokens as f64),
        _ => None,
    };
    let output_tok_s_per_kw = match (tok_s, mean_power_w) {
        (Some(t), Some(w)) if w > 0.0 => Some(t / (w / 1000.0)),
        _ => None,
    };
    let gpu_count = telemetry.gpu_indices.len() as u32;
    TelemetrySummary {
        source: telemetry.source.clone(),
        rate_hz: telemetry.rate_hz,
        duration_s: telemetry.duration_ms as f64 / 1000.0,
        gpu_count,
        rounds: telemetry.host.len() as u64,
        energy_j,
        energy_method,
        mean_power_w,
        max_power_w,
        mean_sm_util_pct: mean(&sm),
        peak_mem_used_mib: gpus.iter().filter_map(|g| g.peak_mem_used_mib).max(),
        max_temperature_c: gpus.iter().filter_map(|g| g.max_temperature_c).max(),
        throttled: throttle_reasons_seen
            .as_ref()
            .and(Some(gpus.iter().any(|g| g.throttled == Some(true)))),
        throttle_reasons_seen,
        power_valid: (!valid.is_empty()).then(|| valid.iter().all(|v| *v)),
        joules_per_output_token,
        output_tok_s_per_kw,
        output_tok_s_per_gpu: tok_s
            .filter(|_| gpu_count > 0)
            .map(|t| t / f64::from(gpu_count)),
        gpus,
        host: host_summary(&telemetry.host),
        server: None,
        raw_downsample: 1,
    }
}

/// One GPU's figures from its records (time order).
pub fn gpu_summary(gpu: u32, records: &[&GpuRecord]) -> GpuSummary {
    let energy = energy_from_counter(records);
    let integrated = integrate_power(records);
    let (energy_j, energy_method) = match (&energy, integrated) {
        (Some(e), _) => (Some(e.joules), Some(e.method)),
        (None, Some(j)) => (Some(j), Some(EnergyMethod::PowerIntegration)),
        (None, None) => (None, None),
    };
    let power: Vec<(u64, f64)> = records
        .iter()
        .filter_map(|r| r.sample.power_w.map(|p| (r.t_ms, p)))
        .collect();
    let mean_power_w = match (integrated, power.first(), power.last()) {
        (Some(j), Some(first), Some(last)) if last.0 > first.0 => {
            Some(j / ((last.0 - first.0) as f64 / 1000.0))
        }
        _ => mean(&power.iter().map(|p| p.1).collect::<Vec<_>>()),
    };
    let timed: Vec<u64> = records
        .iter()
        .filter(|r| r.sample.power_w.is_some() || r.sample.energy_mj.is_some())
        .map(|r| r.t_ms)
        .collect();
    let max_gap_ms = timed.windows(2).map(|w| w[1].saturating_sub(w[0])).max();
    let power_valid = (!timed.is_empty()).then(|| {
        let gaps_ok = max_gap_ms.is_none_or(|g| g <= MAX_GAP_MS);
        let agree = match (&energy, integrated) {
            (Some(e), Some(i)) if e.joules > 0.0 => {
                (e.joules - i).abs() / e.joules <= MAX_DISAGREEMENT
            }
            _ => true,
        };
        gaps_ok && agree
    });
    let throttles: Vec<_> = records
        .iter()
        .filter_map(|r| r.sample.throttle.as_ref())
        .collect();
    let throttle_reasons_seen = (!throttles.is_empty()).then(|| {
        let names: BTreeSet<&str> = throttles
            .iter()
            .flat_map(|t| t.names.iter().map(String::as_str))
            .filter(|n| *n != "gpu_idle")
            .collect();
        names.into_iter().map(str::to_owned).collect::<Vec<_>>()
    });
    let field = |f: fn(&GpuRecord) -> Option<u64>| -> Vec<u64> {
        records.iter().filter_map(|r| f(r)).collect()
    };
    let counter_delta =
        |values: Vec<u64>| -> Option<u64> { Some(values.last()?.saturating_sub(*values.first()?)) };
    GpuSummary {
        gpu,
        samples: records.len() as u64,
        energy_j,
        energy_method,
        energy_integrated_j: integrated,
        counter_resets: energy.as_ref().map_or(0, |e| e.resets),
        mean_power_w,
        max_power_w: power.iter().map(|p| p.1).reduce(f64::max),
        mean_sm_util_pct: mean(
            &records
                .iter()
                .filter_map(|r| r.sample.sm_util_pct.map(f64::from))
                .collect::<Vec<_>>(),
        ),
        mean_mem_util_pct: mean(
            &records
                .iter()
                .filter_map(|r| r.sample.mem_util_pct.map(f64::from))
                .collect::<Vec<_>>(),
        ),
        peak_mem_used_mib: field(|r| r.sample.mem_used_mib).into_iter().max(),
        max_temperature_c: records.iter().filter_map(|r| r.sample.temperature_c).max(),
        min_sm_clock_mhz: records.iter().filter_map(|r| r.sample.sm_clock_mhz).min(),
        throttled: (!throttles.is_empty()).then(|| throttles.iter().any(|t| t.slows_down())),
        throttle_reasons_seen,
        xid_errors: counter_delta(field(|r| r.sample.xid_errors)),
        ecc_corrected: counter_delta(field(|r| r.sample.ecc_corrected)),
        ecc_uncorrected: counter_delta(field(|r| r.sample.ecc_uncorrected)),
        max_gap_ms,
        power_valid,
    }
}

/// Energy from a GPU's counter readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterEnergy {
    /// J.
    pub joules: f64,
    /// `Counter` or `CounterSegments`.
    pub method: EnergyMethod,
    /// Resets seen.
    pub resets: u32,
}

/// Energy from the counter readings of `records` (time order); `None` with fewer than two.
/// See the module docs for wraps and resets.
pub fn energy_from_counter(records: &[&GpuRecord]) -> Option<CounterEnergy> {
    let readings: Vec<(u64, u64, Option<f64>)> = records
        .iter()
        .filter_map(|r| r.sample.energy_mj.map(|e| (r.t_ms, e, r.sample.power_w)))
        .collect();
    if readings.len() < 2 {
        return None;
    }
    let mut mj = 0.0;
    let mut resets = 0;
    for pair in readings.windows(2) {
        let ((t0, e0, p0), (t1, e1, p1)) = (pair[0], pair[1]);
        if e1 >= e0 {
            mj += (e1 - e0) as f64;
            continue;
        }
        let dt_s = t1.saturating_sub(t0) as f64 / 1000.0;
        let plausible = |candidate_mj: f64| candidate_mj / 1000.0 <= MAX_PLAUSIBLE_W * dt_s + 1.0;
        let wrap32 = (e0 < 1 << 32).then(|| ((1u64 << 32) - e0 + e1) as f64);
        let wrap64 = e1.wrapping_sub(e0) as f64;
        if let Some(w) = wrap32.filter(|w| plausible(*w)) {
            mj += w;
        } else if plausible(wrap64) {
            mj += wrap64;
        } else {
            // Reset: bridge the interval with power when both ends have it.
            resets += 1;
            if let (Some(p0), Some(p1)) = (p0, p1) {
                mj += (p0 + p1) / 2.0 * dt_s * 1000.0;
            }
        }
    }
    Some(CounterEnergy {
        joules: mj / 1000.0,
        method: if resets == 0 {
            EnergyMethod::Counter
        } else {
            EnergyMethod::CounterSegments
        },
        resets,
    })
}

/// Trapezoid integral of the power readings of `records` (time order), J; `None` with
/// fewer than two.
pub fn integrate_power(records: &[&GpuRecord]) -> Option<f64> {
    let power: Vec<(u64, f64)> = records
        .iter()
        .filter_map(|r| r.sample.power_w.map(|p| (r.t_ms, p)))
        .collect();
    if power.len() < 2 {
        return None;
    }
    Some(
        power
            .windows(2)
            .map(|w| (w[0].1 + w[1].1) / 2.0 * (w[1].0.saturating_sub(w[0].0)) as f64 / 1000.0)
            .sum(),
    )
}

fn host_summary(records: &[HostRecord]) -> Option<HostSummary> {
    if records.is_empty() {
        return None;
    }
    let cpu: Vec<f64> = records.iter().filter_map(|r| r.sample.cpu_pct).collect();
    Some(HostSummary {
        mean_cpu_pct: mean(&cpu).map(|p| (p * 10.0).round() / 10.0),
        max_cpu_pct: cpu.iter().copied().reduce(f64::max),
        peak_mem_used_mib: records.iter().filter_map(|r| r.sample.mem_used_mib).max(),
        mem_total_mib: records.iter().find_map(|r| r.sample.mem_total_mib),
        max_load_1m: records
            .iter()
            .filter_map(|r| r.sample.load_1m)
            .reduce(f64::max),
    })
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GpuSample, HostSample, ThrottleReasons};

    fn record(gpu: u32, t_ms: u64, power_w: Option<f64>, energy_mj: Option<u64>) -> GpuRecord {
        GpuRecord {
            gpu,
            t_ms,
            sample: GpuSample {
                power_w,
                energy_mj,
                ..GpuSample::default()
            },
        }
    }

    fn refs(records: &[GpuRecord]) -> Vec<&GpuRecord> {
        records.iter().collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn energy_from_the_counter_delta() {
        // 1 s at 200 W: the counter grows by 200 J = 200,000 mJ.
        let records: Vec<_> = (0..=10)
            .map(|i| record(0, i * 100, Some(200.0), Some(5_000_000 + i * 20_000)))
            .collect();
        let s = gpu_summary(0, &refs(&records));
        assert_eq!(s.energy_method, Some(EnergyMethod::Counter));
        assert!(close(s.energy_j.unwrap(), 200.0), "{:?}", s.energy_j);
        assert!(close(s.energy_integrated_j.unwrap(), 200.0));
        assert!(close(s.mean_power_w.unwrap(), 200.0));
        assert_eq!(s.power_valid, Some(true));
        assert_eq!(s.counter_resets, 0);
    }

    #[test]
    fn energy_from_power_integration_without_a_counter() {
        // 0 → 2 s, power rising 100 → 300 W: trapezoid = 400 J.
        let records = [
            record(0, 0, Some(100.0), None),
            record(0, 1000, Some(200.0), None),
            record(0, 2000, Some(300.0), None),
        ];
        let s = gpu_summary(0, &refs(&records));
        assert_eq!(s.energy_method, Some(EnergyMethod::PowerIntegration));
        assert!(close(s.energy_j.unwrap(), 400.0));
        assert!(close(s.mean_power_w.unwrap(), 200.0));
        assert_eq!(s.max_power_w, Some(300.0));
    }

    #[test]
    fn a_32_bit_counter_wrap_is_unwrapped() {
        let top = (1u64 << 32) - 10_000;
        let records = [
            record(0, 0, Some(100.0), Some(top)),
            // +10,000 mJ to the wrap, then 10,000 more: 20 J in 200 ms (100 W).
            record(0, 200, Some(100.0), Some(10_000)),
        ];
        let e = energy_from_counter(&refs(&records)).unwrap();
        assert_eq!(e.method, EnergyMethod::Counter);
        assert!(close(e.joules, 20.0), "{e:?}");
    }

    #[test]
    fn a_counter_reset_sums_segments_and_bridges_with_power() {
        let records = [
            record(0, 0, Some(100.0), Some(9_000_000)),
            record(0, 1000, Some(100.0), Some(9_100_000)), // +100 J
            record(0, 2000, Some(100.0), Some(50)),        // reset: bridged, 100 J
            record(0, 3000, Some(100.0), Some(100_050)),   // +100 J
        ];
        let s = gpu_summary(0, &refs(&records));
        assert_eq!(s.energy_method, Some(EnergyMethod::CounterSegments));
        assert_eq!(s.counter_resets, 1);
        assert!(close(s.energy_j.unwrap(), 300.0), "{:?}", s.energy_j);
        // Without power the reset interval is lost, not guessed.
        let no_power: Vec<_> = records
            .iter()
            .map(|r| record(0, r.t_ms, None, r.sample.energy_mj))
            .collect();
        let e = energy_from_counter(&refs(&no_power)).unwrap();
        assert!(close(e.joules, 200.0), "{e:?}");
        assert_eq!(e.resets, 1);
    }

    #[test]
    fn disagreement_and_gaps_flag_the_power_data() {
        // Counter says 1000 J over 1 s, power says 100 J.
        let records = [
            record(0, 0, Some(100.0), Some(0)),
            record(0, 1000, Some(100.0), Some(1_000_000)),
        ];
        assert_eq!(gpu_summary(0, &refs(&records)).power_valid, Some(false));
        let gap = [
            record(0, 0, Some(100.0), None),
            record(0, 4000, Some(100.0), None),
        ];
        let s = gpu_summary(0, &refs(&gap));
        assert_eq!(s.max_gap_ms, Some(4000));
        assert_eq!(s.power_valid, Some(false));
    }

    #[test]
    fn absent_inputs_give_absent_figures_not_zeros() {
        let records = [record(0, 0, None, None), record(0, 100, None, None)];
        let s = gpu_summary(0, &refs(&records));
        assert_eq!(s.samples, 2);
        assert_eq!(
            s,
            GpuSummary {
                gpu: 0,
                samples: 2,
                ..GpuSummary::default()
            }
        );
        let telemetry = StepTelemetry {
            source: "nvml".into(),
            gpu_indices: vec![0],
            gpus: records.to_vec(),
            ..StepTelemetry::default()
        };
        let summary = summarise(
            &telemetry,
            Throughput {
                output_tokens: Some(1000),
                duration_s: Some(10.0),
            },
        );
        assert_eq!(summary.energy_j, None);
        assert_eq!(summary.joules_per_output_token, None);
        assert_eq!(summary.output_tok_s_per_kw, None);
        assert_eq!(summary.output_tok_s_per_gpu, Some(100.0));
        assert_eq!(summary.power_valid, None);
        assert_eq!(summary.throttled, None);
        let json = serde_json::to_value(&summary).unwrap();
        assert!(json.get("energy_j").is_none(), "{json}");
        // A single power reading has no energy either.
        let one = [record(0, 0, Some(100.0), Some(7))];
        assert_eq!(gpu_summary(0, &refs(&one)).energy_j, None);
    }

    #[test]
    fn step_figures_add_gpus_and_derive_efficiency() {
        let mut gpus = Vec::new();
        for i in 0..=10u64 {
            // GPU 0: 300 W with a counter; GPU 1: 100 W, power only.
            gpus.push(record(0, i * 100, Some(300.0), Some(i * 30_000)));
            let mut r = record(1, i * 100, Some(100.0), None);
            r.sample.throttle = Some(ThrottleReasons::from_mask(if i == 5 { 0x4 } else { 0x1 }));
            r.sample.sm_util_pct = Some(50);
            gpus.push(r);
        }
        let telemetry = StepTelemetry {
            source: "simulated".into(),
            rate_hz: 10.0,
            duration_ms: 1000,
            gpu_indices: vec![0, 1],
            gpus,
            host: vec![HostRecord {
                t_ms: 0,
                sample: HostSample {
                    cpu_pct: Some(25.0),
                    mem_used_mib: Some(2048),
                    ..HostSample::default()
                },
            }],
            ..StepTelemetry::default()
        };
        let s = summarise(
            &telemetry,
            Throughput {
                output_tokens: Some(800),
                duration_s: Some(1.0),
            },
        );
        assert!(close(s.energy_j.unwrap(), 400.0), "{:?}", s.energy_j);
        assert_eq!(s.energy_method, Some(EnergyMethod::Mixed));
        assert!(close(s.mean_power_w.unwrap(), 400.0));
        assert_eq!(s.max_power_w, Some(400.0));
        assert!(close(s.joules_per_output_token.unwrap(), 0.5));
        assert!(close(s.output_tok_s_per_kw.unwrap(), 2000.0));
        assert_eq!(s.output_tok_s_per_gpu, Some(400.0));
        assert_eq!(s.mean_sm_util_pct, Some(50.0));
        assert_eq!(
            s.throttle_reasons_seen.as_deref(),
            Some(&["sw_power_cap".to_owned()][..])
        );
        assert_eq!(s.throttled, Some(true));
        assert_eq!(s.gpus[0].throttled, None, "GPU 0 reported no reasons");
        assert_eq!(s.host.as_ref().unwrap().mean_cpu_pct, Some(25.0));
        assert_eq!(s.duration_s, 1.0);
        // A GPU without energy leaves the step without a total.
        let mut partial = telemetry.clone();
        partial.gpus.retain(|r| r.gpu == 0 || r.t_ms == 0);
        assert_eq!(summarise(&partial, Throughput::default()).energy_j, None);
    }
}
