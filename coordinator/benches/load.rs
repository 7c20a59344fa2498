//! Coordinator load test: thousands of simulated agents, as lightweight gRPC clients in
//! this process, register, heartbeat, and take leases in a loop while their results
//! stream in (one step per unit, each with a blob of request records). The coordinator is
//! the real binary in a process of its own, so its CPU time and memory are read from
//! `/proc`.
//!
//! It reports lease grants per second, heartbeat latency (p50/p99/max), request records
//! ingested per second, and the coordinator's CPU (cores busy) and memory (RSS, peak).
//! DESIGN.md's targets: 10,000 agents, at least 2,000 leases/s and 200,000 records/s on
//! 2 cores.
//!
//! ```sh
//! cargo bench -p evalctl-coordinator --bench load
//! EVALCTL_LOAD_AGENTS=2000 EVALCTL_LOAD_SECS=20 cargo bench -p evalctl-coordinator --bench load
//! ```
//!
//! Knobs (environment): `EVALCTL_LOAD_AGENTS` (10,000), `EVALCTL_LOAD_SECS` (measured
//! window, 30), `EVALCTL_LOAD_RECORDS` (records per step result, 100),
//! `EVALCTL_LOAD_UNITS` (units in the campaign, 80,000: a 100,000-unit matrix of
//! this shape is over the 16 MiB submit limit), `EVALCTL_LOAD_CONNECTIONS`
//! (HTTP/2 connections the agents share; default one per agent, as a real fleet dials), `EVALCTL_LOAD_HEARTBEAT_MS` (default: the
//! interval the coordinator answers, a third of its 30 s TTL).
//!
//! The load generator shares the machine with the coordinator; its own CPU time is
//! printed too, so a saturated client is not mistaken for a slow coordinator.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_client::AgentServiceClient;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Counters shared by every simulated agent.
#[derive(Default)]
struct Counters {
    /// Only counted while this is set (the measured window).
    measuring: AtomicBool,
    leases: AtomicU64,
    records: AtomicU64,
    batches: AtomicU64,
    completes: AtomicU64,
    errors: AtomicU64,
    heartbeats_us: Mutex<Vec<u64>>,
}

/// The coordinator under test.
struct Coordinator {
    child: Child,
    url: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_coordinator(data_dir: &std::path::Path) -> Coordinator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evalctl-coordinator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--lease-ttl",
            "30s",
            "--data-dir",
        ])
        .arg(data_dir)
        // Per-grant info lines would be most of the work at thousands of grants a second.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn evalctl-coordinator");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listen address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Coordinator {
        child,
        url: format!("http://{addr}"),
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |at| &stat[at + 1..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// VmRSS and VmHWM of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn matrix(units: u64) -> String {
    // models × quantizations = units; one workload, one load point: one step per unit.
    let quantizations = 100u64;
    let models = units.div_ceil(quantizations);
    let mut yaml = String::from("campaign: load\nmodels:\n");
    for m in 0..models {
        yaml.push_str(&format!("  - {{ name: m{m}, path: sim }}\n"));
    }
    yaml.push_str("frameworks:\n  - name: sim\nquantizations:\n");
    for q in 0..quantizations {
        yaml.push_str(&format!("  - {{ name: q{q}, bits: 16 }}\n"));
    }
    yaml.push_str(
        "workloads:\n  - name: chat\n    api: chat\n    \
         dataset: { kind: random, input_tokens: 16, output_tokens: 16 }\n    \
         load: { concurrency: [1] }\n    requests: 100\n",
    );
    yaml
}

fn records_blob(records: u64) -> Vec<u8> {
    let mut text = String::new();
    for i in 0..records {
        text.push_str(&format!(
            "{{\"i\":{i},\"scheduled_ms\":{i},\"sent_ms\":{i},\"ttft_ms\":12.5,\"e2el_ms\":80.25,\"output_tokens\":16,\"chunks\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],\"error\":null}}\n"
        ));
    }
    zstd::encode_all(text.as_bytes(), 3).expect("compress records")
}

/// One simulated agent: registers, then leases, reports and completes until `stop`.
async fn agent(
    id: String,
    channel: Channel,
    counters: Arc<Counters>,
    blob: Arc<Vec<u8>>,
    records: u64,
    stop: Arc<AtomicBool>,
) {
    let mut client = AgentServiceClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let Some(lease) = acquire(&mut client, &id, &counters).await else {
            continue;
        };
        let measuring = counters.measuring.load(Ordering::Relaxed);
        if measuring {
            counters.leases.fetch_add(1, Ordering::Relaxed);
        }
        let results: Vec<pb::StepResult> = lease
            .steps
            .iter()
            .filter(|s| !lease.finished_step_ids.contains(&s.step_id))
            .map(|s| pb::StepResult {
                step_id: s.step_id.clone(),
                result_json: "{\"metrics\":{}}".to_owned(),
                environment_json: "{}".to_owned(),
                records_zstd: blob.as_ref().clone(),
                ..Default::default()
            })
            .collect();
        let batch = pb::ResultBatch {
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
            unit_id: lease.unit_id.clone(),
            attempt: lease.attempt,
            sequence: 1,
            results,
        };
        let stored = match client
            .report_results(tokio_stream::once(batch.clone()))
            .await
        {
            Ok(response) => {
                let mut acks = response.into_inner();
                matches!(acks.message().await, Ok(Some(ack)) if ack.accepted)
            }
            Err(_) => false,
        };
        if !stored {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if counters.measuring.load(Ordering::Relaxed) {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .records
                .fetch_add(records * batch.results.len() as u64, Ordering::Relaxed);
        }
        match client
            .complete(pb::CompleteRequest {
                lease_id: lease.lease_id,
                epoch: lease.epoch,
            })
            .await
        {
            Ok(_) => {
                if counters.measuring.load(Ordering::Relaxed) {
                    counters.completes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn acquire(
    client: &mut AgentServiceClient<Channel>,
    id: &str,
    counters: &Counters,
) -> Option<pb::Lease> {
    match client
        .acquire_lease(pb::AcquireLeaseRequest {
            agent_id: id.to_owned(),
            cpu_slots_free: 1,
            wait_ms: 30_000,
            ..Default::default()
        })
        .await
    {
        Ok(response) => response.into_inner().lease,
        Err(_) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// Heartbeats every `interval` until `stop`, timing each.
async fn heartbeats(
    id: String,
    channel: Channel,
    interval: Duration,
    offset: Duration,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut client = AgentServiceClient::new(channel);
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(interval);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let started = Instant::now();
        let ok = client
            .heartbeat(pb::HeartbeatRequest {
                agent_id: id.clone(),
                ..Default::default()
            })
            .await
            .is_ok();
        let us = started.elapsed().as_micros() as u64;
        if !ok {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        } else if counters.measuring.load(Ordering::Relaxed) {
            counters.heartbeats_us.lock().await.push(us);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let w = rank - lo as f64;
    sorted[lo] as f64 * (1.0 - w) + sorted[hi] as f64 * w
}

fn main() {
    let agents = env_number("EVALCTL_LOAD_AGENTS", 10_000);
    let secs = env_number("EVALCTL_LOAD_SECS", 30);
    let records = env_number("EVALCTL_LOAD_RECORDS", 100);
    let units = env_number("EVALCTL_LOAD_UNITS", 80_000);
    // One connection per agent, as in a real fleet (each host dials the coordinator).
    let connections = env_number("EVALCTL_LOAD_CONNECTIONS", agents).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(agents, secs, records, units, connections));
}

async fn run(agents: u64, secs: u64, records: u64, units: u64, connections: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator = start_coordinator(dir.path());
    let pid = coordinator.child.id();
    let load = Instant::now();
    let mut campaigns = CampaignServiceClient::connect(coordinator.url.clone())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let submitted = campaigns
        .submit(pb::SubmitRequest {
            matrix_yaml: matrix(units),
            source_name: "load.yaml".to_owned(),
            dry_run: false,
            submitted_by: "load".to_owned(),
        })
        .await
        .expect("submit the campaign")
        .into_inner();
    eprintln!(
        "load: submitted {} units in {:.1}s",
        submitted.units,
        load.elapsed().as_secs_f64()
    );

    let mut channels = Vec::new();
    for _ in 0..connections {
        let channel = Endpoint::from_shared(coordinator.url.clone())
            .expect("endpoint")
            .connect_lazy();
        channels.push(channel);
    }
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let blob = Arc::new(records_blob(records));

    // Register every agent first.
    let started = Instant::now();
    let mut interval = Duration::from_millis(env_number("EVALCTL_LOAD_HEARTBEAT_MS", 0));
    let mut registrations = Vec::new();
    for i in 0..agents {
        let mut client = AgentServiceClient::new(channels[(i % connections) as usize].clone());
        registrations.push(tokio::spawn(async move {
            client
                .register(pb::RegisterRequest {
                    agent_id: format!("load-{i}"),
                    hostname: format!("host-{i}"),
                    version: "load".to_owned(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().heartbeat_interval_ms)
        }));
    }
    for registration in registrations {
        let answered = registration
            .await
            .expect("register task")
            .expect("register");
        if interval.is_zero() {
            interval = Duration::from_millis(answered);
        }
    }
    let registered = started.elapsed();
    eprintln!(
        "load: {agents} agents registered in {:.1}s; heartbeat every {interval:?}",
        registered.as_secs_f64()
    );

    let mut tasks = Vec::new();
    for i in 0..agents {
        let channel = channels[(i % connections) as usize].clone();
        let id = format!("load-{i}");
        let offset = interval.mul_f64(i as f64 / agents as f64);
        tasks.push(tokio::spawn(heartbeats(
            id.clone(),
            channel.clone(),
            interval,
            offset,
            Arc::clone(&counters),
            Arc::clone(&stop),
        )));
        tasks.push(tokio::spawn(agent(
            id,
            channel,
            Arc::clone(&counters),
            Arc::clone(&blob),
            records,
            Arc::clone(&stop),
        )));
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid_text = pid.to_string();
    let me = std::process::id().to_string();
    let (cpu0, own0, t0) = (cpu_seconds(&pid_text), cpu_seconds(&me), Instant::now());
    counters.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    counters.measuring.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(&pid_text) - cpu0) / elapsed;
    let own = (cpu_seconds(&me) - own0) / elapsed;
    let (rss, peak) = memory_mib(pid);
    stop.store(true, Ordering::SeqCst);

    let mut latencies = counters.heartbeats_us.lock().await.clone();
    latencies.sort_unstable();
    let leases = counters.leases.load(Ordering::Relaxed) as f64 / elapsed;
    let records_per_s = counters.records.load(Ordering::Relaxed) as f64 / elapsed;
    println!("load test: {agents} agents over {connections} connections, {secs}s measured");
    println!(
        "  leases granted:   {leases:>10.0} /s  (target 2,000)   completed {:.0}/s",
        counters.completes.load(Ordering::Relaxed) as f64 / elapsed
    );
    println!(
        "  records ingested: {records_per_s:>10.0} /s  (target 200,000; {records} per result, {:.0} batches/s)",
        counters.batches.load(Ordering::Relaxed) as f64 / elapsed
    );
    println!(
        "  heartbeats:       {:>10.0} /s  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0) / 1000.0,
        percentile(&latencies, 99.0) / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "  coordinator:      CPU {cpu:.2} cores, RSS {rss:.0} MiB (peak {peak:.0} MiB); load generator CPU {own:.2} cores"
    );
    println!(
        "  errors:           {}",
        counters.errors.load(Ordering::Relaxed)
    );
    drop(coordinator);
    // Tasks blocked in long polls end with the runtime.
    drop(tasks);
}
