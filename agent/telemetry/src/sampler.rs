//! Sampling during a step: a dedicated thread reads the leased GPUs and the host at a fixed
//! rate until the step ends.
//!
//! A thread, not a task: NVML calls block (a few ms each on a busy GPU), and the sampling
//! clock must not depend on how busy the load generator keeps the runtime. Each round reads
//! every GPU then the host and stamps them with one time offset; stopping wakes the thread at
//! once (it waits on a channel, not a sleep), which takes one last round so the step's
//! energy covers it to its end.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use evalctl_results::codec::{self, JsonLinesWriter};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::server::ServerScrape;
use super::{GpuSample, GpuSource};

/// Sampling rate when none is configured, Hz.
pub const DEFAULT_RATE_HZ: f64 = 10.0;
/// Rates outside this range are clamped, Hz.
const RATE_RANGE_HZ: (f64, f64) = (0.1, 100.0);

/// One GPU sample with when it was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRecord {
    /// CUDA index of the GPU.
    pub gpu: u32,
    /// Milliseconds since the sampler started.
    pub t_ms: u64,
    /// The reading.
    #[serde(flatten)]
    pub sample: GpuSample,
}

/// One reading of the host (sysinfo); absent fields were not available.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// CPU use over all cores since the previous round, percent (absent in the first round,
    /// which has nothing to compare with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    /// Memory in use, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_used_mib: Option<u64>,
    /// Memory installed, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_mib: Option<u64>,
    /// One-minute load average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_1m: Option<f64>,
}

/// One host sample with when it was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Milliseconds since the sampler started.
    pub t_ms: u64,
    /// The reading.
    #[serde(flatten)]
    pub sample: HostSample,
}

/// Everything a sampler collected during a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTelemetry {
    /// The GPU source: "nvml", "simulated", "none".
    pub source: String,
    /// Sampling rate, Hz.
    pub rate_hz: f64,
    /// Unix milliseconds when sampling started.
    pub started_at_ms: i64,
    /// Milliseconds from the first to the last round.
    pub duration_ms: u64,
    /// The GPUs sampled.
    pub gpu_indices: Vec<u32>,
    /// GPU samples in round order (each round has one per GPU).
    pub gpus: Vec<GpuRecord>,
    /// Host samples, one per round.
    pub host: Vec<HostRecord>,
}

/// Starts samplers; see the module docs.
#[derive(Debug)]
pub struct Sampler;

/// A running sampler; [`SamplerHandle::finish`] stops it and returns what it collected.
/// Dropping it stops the thread too (what it collected is lost).
#[derive(Debug)]
pub struct SamplerHandle {
    started: Instant,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<StepTelemetry>>,
}

impl Sampler {
    /// Samples GPUs `indices` of `source` and the host `rate_hz` times a second (clamped to
    /// 0.1–100) on a new thread, from now until [`SamplerHandle::finish`].
    pub fn start(
        source: Arc<dyn GpuSource>,
        indices: &[u32],
        rate_hz: f64,
    ) -> std::io::Result<SamplerHandle> {
        let rate_hz = if rate_hz.is_finite() {
            rate_hz.clamp(RATE_RANGE_HZ.0, RATE_RANGE_HZ.1)
        } else {
            DEFAULT_RATE_HZ
        };
        let indices = indices.to_vec();
        let (stop, stopped) = mpsc::channel();
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("telemetry-sampler".to_owned())
            .spawn(move || sample_until_stopped(&*source, indices, rate_hz, started, &stopped))?;
        Ok(SamplerHandle {
            started,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl SamplerHandle {
    /// When sampling started: the time origin of the samples' `t_ms`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops sampling (after one last round) and returns the samples. Blocks for that round
    /// only (milliseconds); call it from a blocking context in async code.
    pub fn finish(mut self) -> StepTelemetry {
        self.stop.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(telemetry)) => telemetry,
            Some(Err(_)) | None => {
                warn!("the telemetry sampler thread panicked; the step has no telemetry");
                StepTelemetry::default()
            }
        }
    }
}

impl Drop for SamplerHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which ends by itself.
        self.stop.take();
    }
}

fn sample_until_stopped(
    source: &dyn GpuSource,
    indices: Vec<u32>,
    rate_hz: f64,
    started: Instant,
    stopped: &mpsc::Receiver<()>,
) -> StepTelemetry {
    let period = Duration::from_secs_f64(1.0 / rate_hz);
    let mut telemetry = StepTelemetry {
        source: source.inventory().source,
        rate_hz,
        started_at_ms: unix_ms(),
        duration_ms: 0,
        gpu_indices: indices,
        gpus: Vec::new(),
        host: Vec::new(),
    };
    let mut host = HostProbe::new();
    let mut next = started;
    loop {
        let t_ms = started.elapsed().as_millis() as u64;
        for &gpu in &telemetry.gpu_indices {
            telemetry.gpus.push(GpuRecord {
                gpu,
                t_ms,
                sample: source.sample(gpu),
            });
        }
        telemetry.host.push(HostRecord {
            t_ms,
            sample: host.sample(),
        });
        telemetry.duration_ms = t_ms;
        // A round that overran skips the ticks it missed rather than bunching up.
        next += period;
        let now = Instant::now();
        if next < now {
            next = now + period;
        }
        match stopped.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // The last round, at the stop.
    let t_ms = started.elapsed().as_millis() as u64;
    for &gpu in &telemetry.gpu_indices {
        telemetry.gpus.push(GpuRecord {
            gpu,
            t_ms,
            sample: source.sample(gpu),
        });
    }
    telemetry.host.push(HostRecord {
        t_ms,
        sample: host.sample(),
    });
    telemetry.duration_ms = t_ms;
    telemetry
}

/// The host's CPU, memory and load through sysinfo.
struct HostProbe {
    system: Option<sysinfo::System>,
    first: bool,
}

impl HostProbe {
    fn new() -> HostProbe {
        HostProbe {
            system: sysinfo::System::new().ok(),
            first: true,
        }
    }

    fn sample(&mut self) -> HostSample {
        let load_1m = sysinfo::System::load_average().ok().map(|l| l.one);
        let Some(system) = self.system.as_mut() else {
            return HostSample {
                load_1m,
                ..HostSample::default()
            };
        };
        system.refresh_cpu_usage();
        system.refresh_memory();
        let cpu_pct = (!std::mem::take(&mut self.first))
            .then(|| f64::from(system.global_cpu_usage()))
            .filter(|p| p.is_finite());
        let total = system.total_memory();
        HostSample {
            cpu_pct: cpu_pct.map(|p| (p * 10.0).round() / 10.0),
            mem_used_mib: (total > 0).then(|| system.used_memory() / (1024 * 1024)),
            mem_total_mib: (total > 0).then_some(total / (1024 * 1024)),
            load_1m,
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Most lines of a step's raw telemetry blob; longer steps keep every k-th round (the
/// aggregates always use every sample).
pub const MAX_RAW_LINES: usize = 50_000;

/// One line of the raw telemetry blob (`StepResult.telemetry_zstd`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TelemetryLine {
    /// A GPU sample.
    Gpu(GpuRecord),
    /// A host sample.
    Host(HostRecord),
    /// A scrape of the server's metrics.
    Server(ServerScrape),
}

impl StepTelemetry {
    /// Keep-one-in-k factor that brings the blob under [`MAX_RAW_LINES`] (1 = every round).
    pub fn downsample_factor(&self, server_lines: usize) -> usize {
        let rounds = self.host.len().max(1);
        let per_round = self.gpu_indices.len() + 1;
        let lines = rounds * per_round;
        let budget = MAX_RAW_LINES.saturating_sub(server_lines).max(per_round);
        lines.div_ceil(budget).max(1)
    }

    /// The samples and `scrapes` as zstd-compressed JSON Lines ([`TelemetryLine`]), every
    /// `factor`-th round kept (the last round always).
    pub fn to_jsonl_zstd(
        &self,
        scrapes: &[ServerScrape],
        factor: usize,
    ) -> std::io::Result<Vec<u8>> {
        let factor = factor.max(1);
        let per_round = self.gpu_indices.len();
        let rounds = self.host.len();
        let mut writer = JsonLinesWriter::new()?;
        let mut write = |line: TelemetryLine| writer.write(&line);
        for round in 0..rounds {
            if round % factor != 0 && round + 1 != rounds {
                continue;
            }
            if per_round > 0 {
                for record in self.gpus.iter().skip(round * per_round).take(per_round) {
                    write(TelemetryLine::Gpu(record.clone()))?;
                }
            }
            write(TelemetryLine::Host(self.host[round].clone()))?;
        }
        for scrape in scrapes {
            write(TelemetryLine::Server(scrape.clone()))?;
        }
        writer.finish()
    }
}

/// Reads back [`StepTelemetry::to_jsonl_zstd`]'s output.
pub fn decode_telemetry(blob: &[u8]) -> std::io::Result<Vec<TelemetryLine>> {
    codec::decode(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NoGpus, SimulatedGpus};

    #[test]
    fn samples_every_gpu_and_the_host_each_round_and_stops_promptly() {
        let source = Arc::new(SimulatedGpus::parse("H100-80GB:4").unwrap());
        // 1 Hz: a stop that waited for the period would take up to a second.
        let handle = Sampler::start(source, &[1, 3], 1.0).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let asked = Instant::now();
        let telemetry = handle.finish();
        assert!(
            asked.elapsed() < Duration::from_millis(300),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(telemetry.source, "simulated");
        assert_eq!(telemetry.host.len(), 2, "first round + last round");
        let gpus: Vec<u32> = telemetry.gpus.iter().map(|r| r.gpu).collect();
        assert_eq!(gpus, [1, 3, 1, 3]);
        assert!(telemetry.gpus.iter().all(|r| r.sample.power_w.is_some()));
        assert!(
            telemetry.host[0].sample.cpu_pct.is_none(),
            "nothing to compare with yet"
        );
        assert!(telemetry.host[1].sample.mem_used_mib.is_some());
    }

    #[test]
    fn samples_at_the_rate_asked() {
        let handle = Sampler::start(Arc::new(NoGpus), &[], 50.0).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let telemetry = handle.finish();
        let rounds = telemetry.host.len();
        assert!(
            (10..=20).contains(&rounds),
            "{rounds} rounds in 300 ms at 50 Hz"
        );
        assert!(telemetry.gpus.is_empty());
    }

    #[test]
    fn raw_lines_round_trip_and_downsample_by_round() {
        let telemetry = StepTelemetry {
            source: "simulated".into(),
            rate_hz: 10.0,
            gpu_indices: vec![0, 1],
            gpus: (0..10)
                .flat_map(|round| {
                    [0, 1].map(|gpu| GpuRecord {
                        gpu,
                        t_ms: round * 100,
                        sample: GpuSample {
                            power_w: Some(100.0),
                            ..GpuSample::default()
                        },
                    })
                })
                .collect(),
            host: (0..10)
                .map(|round| HostRecord {
                    t_ms: round * 100,
                    sample: HostSample::default(),
                })
                .collect(),
            ..StepTelemetry::default()
        };
        let all = decode_telemetry(&telemetry.to_jsonl_zstd(&[], 1).unwrap()).unwrap();
        assert_eq!(all.len(), 30);
        assert_eq!(all[0], TelemetryLine::Gpu(telemetry.gpus[0].clone()));
        let some = decode_telemetry(&telemetry.to_jsonl_zstd(&[], 4).unwrap()).unwrap();
        let hosts: Vec<u64> = some
            .iter()
            .filter_map(|l| match l {
                TelemetryLine::Host(h) => Some(h.t_ms),
                _ => None,
            })
            .collect();
        assert_eq!(hosts, [0, 400, 800, 900], "every 4th round and the last");
        assert_eq!(telemetry.downsample_factor(0), 1);
    }
}
