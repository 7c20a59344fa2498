//! Step telemetry end to end: a real load step against the `sim-server` binary, sampled
//! with the simulated GPU source (and with NVML where a GPU is present), turned into the
//! step result the coordinator stores.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use evalctl_agent::runner::step::{self, ResultContext, Target};
use evalctl_loadgen as loadgen;
use evalctl_proto::v1 as pb;
use evalctl_results::StepDocument;
use evalctl_telemetry::{
    self as telemetry, EnergyMethod, GpuSource, MetricsEndpoint, NvmlGpus, SimulatedGpus,
    StepRecorder, TelemetryLine, Throughput,
};

/// The simulator as a process, killed on drop.
struct Sim {
    child: Child,
    base_url: String,
}

impl Sim {
    fn start() -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_evalctl-agent"))
            .args(["sim-server", "--port", "0", "--host", "127.0.0.1"])
            .args(["--model", "sim-model", "--decode-ms-per-token", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn evalctl-agent sim-server");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read the address line");
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first line {first:?}"))
            .to_owned();
        Sim {
            child,
            base_url: format!("http://{addr}"),
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn step_spec(duration_ms: u64) -> pb::StepSpec {
    pb::StepSpec {
        step_id: "s-1".into(),
        index: 0,
        workload: Some(pb::WorkloadSpec {
            name: "chat".into(),
            api: "chat".into(),
            dataset: Some(pb::DatasetSpec {
                kind: "random".into(),
                input_tokens: 16,
                output_tokens: 16,
                seed: 1,
                ..Default::default()
            }),
            duration_ms,
            ..Default::default()
        }),
        load: Some(pb::LoadPoint {
            kind: Some(pb::load_point::Kind::Concurrency(4)),
            arrival: String::new(),
            burstiness: 0.0,
        }),
        repeat: 0,
    }
}

/// Runs one load step of `duration_ms` against `sim` with telemetry from `gpus` for GPUs
/// `indices`, as the runner does; the stored result and its document.
async fn run_step(
    sim: &Sim,
    gpus: Arc<dyn GpuSource>,
    indices: &[u32],
    duration_ms: u64,
) -> (pb::StepResult, StepDocument) {
    let spec = step_spec(duration_ms);
    let target = Target {
        base_url: sim.base_url.clone(),
        served_model: "sim-model".into(),
        tokenizer_json: None,
    };
    let plan = step::plan(&spec, &target, None).await.expect("plan");
    let recorder = StepRecorder::start(
        gpus,
        indices,
        20.0,
        Some(MetricsEndpoint {
            base_url: &sim.base_url,
            path: "/metrics",
        }),
    )
    .await;
    let outcome = loadgen::run_step(plan, |_| {}).await.expect("step runs");
    let recorded = recorder
        .finish(Throughput {
            output_tokens: Some(outcome.metrics.total_output_tokens),
            duration_s: Some(outcome.metrics.duration_s),
        })
        .await;
    let lease = pb::Lease {
        campaign: "c".into(),
        unit_id: "u".into(),
        lease_id: "l".into(),
        attempt: 1,
        gpu_indices: indices.to_vec(),
        ..Default::default()
    };
    let context = ResultContext {
        lease: &lease,
        step: &spec,
        agent_id: "a",
        simulated: true,
        served_model: "sim-model",
        environment_json: "{}",
        started_at_ms: 0,
        finished_at_ms: 1,
    };
    let result = step::result(&context, &outcome, recorded, None, None).expect("result");
    let document: StepDocument = serde_json::from_str(&result.result_json).expect("document");
    (result, document)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_with_simulated_gpus_stores_aggregates_and_raw_samples() {
    let sim = Sim::start();
    let gpus: Arc<dyn GpuSource> = Arc::new(SimulatedGpus::parse("H100-80GB:4").unwrap());
    let (result, document) = run_step(&sim, gpus, &[1, 2], 1_500).await;

    let metrics = document.metrics.as_ref().expect("metrics");
    assert!(metrics.completed > 0);
    let t = document.telemetry.as_ref().expect("telemetry summary");
    assert_eq!(t.source, "simulated");
    assert_eq!(t.gpu_count, 2);
    assert!(t.duration_s >= 1.4, "{}", t.duration_s);
    assert!(t.rounds >= 20, "{} rounds at 20 Hz over 1.5 s", t.rounds);
    assert_eq!(t.gpus.iter().map(|g| g.gpu).collect::<Vec<_>>(), [1, 2]);

    // Energy from the counter, which the cross-check with integrated power confirms.
    assert_eq!(t.energy_method, Some(EnergyMethod::Counter));
    assert_eq!(t.power_valid, Some(true));
    let energy_j = t.energy_j.expect("energy");
    let mean_w = t.mean_power_w.expect("mean power");
    // Two simulated H100s draw 105..700 W each.
    assert!((210.0..=1400.0).contains(&mean_w), "{mean_w} W");
    let expected_j = mean_w * t.duration_s;
    assert!(
        (energy_j - expected_j).abs() / expected_j < 0.05,
        "{energy_j} J vs {mean_w} W × {} s",
        t.duration_s
    );
    for gpu in &t.gpus {
        let counter = gpu.energy_j.unwrap();
        let integrated = gpu.energy_integrated_j.unwrap();
        assert!((counter - integrated).abs() / counter < 0.05, "{gpu:?}");
        assert!(gpu.max_temperature_c.is_some() && gpu.peak_mem_used_mib == Some(73_728));
    }
    let tokens = metrics.total_output_tokens as f64;
    let jpt = t.joules_per_output_token.expect("J/token");
    assert!((jpt - energy_j / tokens).abs() < 1e-9);
    let per_kw = t.output_tok_s_per_kw.expect("tok/s/kW");
    assert!((per_kw - tokens / metrics.duration_s / (mean_w / 1000.0)).abs() < 1e-6);
    assert!(
        t.host
            .as_ref()
            .is_some_and(|h| h.peak_mem_used_mib.is_some())
    );

    // The server's own counters, scraped before, during and after.
    let server = t.server.as_ref().expect("server metrics");
    assert!(server.url.ends_with("/metrics"));
    assert!(server.scrapes >= 3, "{server:?}");
    assert_eq!(server.failed_scrapes, 0);
    let generated = server.series["sim:generation_tokens_total"].delta.unwrap();
    assert!(
        generated >= tokens,
        "the server generated {generated} tokens, the client counted {tokens}"
    );
    assert!(server.series["sim:num_requests_running"].max.unwrap() >= 1.0);

    // The raw samples travel with the result.
    let lines = telemetry::decode_telemetry(&result.telemetry_zstd).expect("raw telemetry");
    let mut gpu_samples: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut host, mut scrapes) = (0, 0);
    for line in &lines {
        match line {
            TelemetryLine::Gpu(r) => {
                assert!(r.sample.power_w.is_some() && r.sample.energy_mj.is_some());
                *gpu_samples.entry(r.gpu).or_default() += 1;
            }
            TelemetryLine::Host(_) => host += 1,
            TelemetryLine::Server(_) => scrapes += 1,
        }
    }
    assert_eq!(host as u64, t.rounds);
    assert_eq!(gpu_samples, BTreeMap::from([(1, host), (2, host)]));
    assert_eq!(scrapes, server.scrapes);
}

#[tokio::test]
async fn a_step_without_gpus_records_the_host_and_no_energy() {
    let sim = Sim::start();
    let (result, document) = run_step(&sim, Arc::new(telemetry::NoGpus), &[], 300).await;
    let t = document.telemetry.expect("telemetry summary");
    assert_eq!(t.source, "none");
    assert_eq!(t.gpu_count, 0);
    assert_eq!(t.energy_j, None);
    assert_eq!(t.joules_per_output_token, None);
    assert!(t.host.is_some());
    assert!(!result.telemetry_zstd.is_empty());
    let json: serde_json::Value = serde_json::from_str(&result.result_json).unwrap();
    assert!(json["telemetry"].get("energy_j").is_none(), "absent, not 0");
}

#[test]
fn without_nvml_detect_finds_zero_gpus() {
    match NvmlGpus::init(&BTreeMap::new()) {
        Err(err) => {
            eprintln!("NVML unavailable ({err}); checking the fallback");
            let source = telemetry::detect(None, &BTreeMap::new()).expect("detect");
            let inventory = source.inventory();
            assert_eq!(inventory.source, "none");
            assert!(inventory.gpus.is_empty());
            assert_eq!(source.sample(0), Default::default());
        }
        Ok(_) => {
            let source = telemetry::detect(None, &BTreeMap::new()).expect("detect");
            assert_eq!(source.inventory().source, "nvml");
        }
    }
}

/// Reads real NVML values and runs one real step with NVML sampling; skips (passing) where
/// NVML does not initialise, as on CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_gpu_reads_real_values_and_samples_a_step() {
    let gpus = match NvmlGpus::init(&BTreeMap::new()) {
        Ok(gpus) => gpus,
        Err(err) => {
            eprintln!(
                "SKIPPED nvml_gpu test: NVML did not initialise ({})",
                evalctl_common::error_chain(&err)
            );
            return;
        }
    };
    let inventory = gpus.inventory();
    eprintln!("NVML inventory: {inventory:#?}");
    assert_eq!(inventory.source, "nvml");
    assert!(!inventory.gpus.is_empty());
    assert!(inventory.driver_version.is_some());
    for gpu in &inventory.gpus {
        assert!(gpu.uuid.starts_with("GPU-"), "{gpu:?}");
        assert!(gpu.memory_gb > 1.0, "{gpu:?}");
        assert!(!gpu.gpu_type.is_empty());
    }
    let sample = gpus.sample(0);
    eprintln!("GPU 0 sample: {sample:#?}");
    let power = sample.power_w.expect("every datacenter GPU reports power");
    assert!(power > 1.0 && power < 2_000.0, "{power} W");
    assert!(sample.mem_used_mib.is_some() && sample.temperature_c.is_some());

    let sim = Sim::start();
    let (result, document) = run_step(&sim, Arc::new(gpus), &[0], 1_500).await;
    let t = document.telemetry.expect("telemetry");
    eprintln!(
        "step telemetry: {}",
        serde_json::to_string_pretty(&t).unwrap()
    );
    assert_eq!(t.source, "nvml");
    assert!(t.rounds >= 20);
    let energy = t.energy_j.expect("energy");
    assert!(energy > 0.0);
    assert!(t.mean_power_w.is_some_and(|w| w > 1.0));
    assert!(matches!(
        t.energy_method,
        Some(EnergyMethod::Counter | EnergyMethod::PowerIntegration)
    ));
    assert!(!result.telemetry_zstd.is_empty());
}
