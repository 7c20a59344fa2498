//! Coordinator load test: thousands of simulated agents, as lightweight gRPC clients in
//! this process, register, heartbeat, and take leases in a loop while their results
//! stream in (one step per unit, each with a blob of request records). Each agent keeps
//! one `ReportResults` stream open for its life, as the real agent does. The coordinator
//! is the real binary in a process of its own, so its CPU time and memory are read from
//! `/proc`.
//!
//! At the end the coordinator is restarted on the same address and the whole fleet
//! registers again at once (every agent retrying with backoff and jitter, as agents do);
//! the bench reports how long that took.
//!
//! It reports lease grants per second, heartbeat latency (p50/p99/max), the latency of
//! each phase of an agent's cycle, request records ingested per second, the
//! coordinator's CPU (cores busy, and per grant: the whole process and its store writer
//! thread, the one part that cannot use a second core) and memory (RSS, peak).
//! DESIGN.md's targets: 10,000 agents, at least 2,000 leases/s and 200,000 records/s on
//! 2 cores.
//!
//! ```sh
//! cargo bench -p evalctl-coordinator --bench load
//! EVALCTL_LOAD_AGENTS=2000 EVALCTL_LOAD_SECS=20 cargo bench -p evalctl-coordinator --bench load
//! EVALCTL_LOAD_COORDINATOR_CPUS=0 cargo bench -p evalctl-coordinator --bench load
//! ```
//!
//! Knobs (environment): `EVALCTL_LOAD_AGENTS` (10,000), `EVALCTL_LOAD_SECS` (measured
//! window, 30), `EVALCTL_LOAD_RECORDS` (records per step result, 100),
//! `EVALCTL_LOAD_UNITS` (units in the campaign, 80,000: a 100,000-unit matrix of
//! this shape is over the 16 MiB submit limit), `EVALCTL_LOAD_CONNECTIONS`
//! (HTTP/2 connections the agents share; default one per agent, as a real fleet dials),
//! `EVALCTL_LOAD_HEARTBEAT_MS` (default: the interval the coordinator answers, a third of
//! its 30 s TTL), `EVALCTL_LOAD_COORDINATOR_CPUS` (a `taskset` CPU list: the coordinator
//! runs on those CPUs and the load generator on the others; default: both anywhere).
//!
//! Unless placed apart, the load generator shares the machine with the coordinator; its
//! own CPU time is printed too, so a saturated client is not mistaken for a slow
//! coordinator.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_client::AgentServiceClient;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The coordinator's store writer thread (`store/mod.rs` names it).
const WRITER_THREAD: &str = "store-writer";

/// The step document every simulated result carries: a small one of the current schema, which
/// the coordinator checks like any other.
const STEP_DOCUMENT: &str = "{\"schema\":1,\"schema_minor\":1,\"simulated\":true,\
    \"step_label\":\"chat @ c=1 #0\",\"metrics\":null,\"tokenization\":null,\
    \"connections_opened\":1,\"served_model\":\"m\",\"started_at_ms\":0,\"finished_at_ms\":1}";

/// Registrations (and so connections being opened) in flight at once, in the first
/// registration of the fleet.
const REGISTER_CONCURRENCY: usize = 512;

/// Longest an agent keeps retrying its registration.
const REGISTER_DEADLINE: Duration = Duration::from_secs(120);

/// The loopback source address of connection `c`: 32 connections per address, from
/// 127.1.0.1 on.
fn source_address(c: u64) -> std::net::IpAddr {
    let host = c / 32;
    std::net::IpAddr::from([127, 1, (host / 250) as u8, (host % 250 + 1) as u8])
}

/// How a fleet's registration went.
struct Registration {
    took: Duration,
    heartbeat_interval_ms: u64,
    retries: u64,
    max_tries: u64,
    failed: u64,
}

/// Registers agents `load-0` … on `channels` (agent `i` on channel `i % len`), each
/// retrying a failed registration with exponential backoff and jitter (200 ms doubling to
/// 5 s, as the agent does) until [`REGISTER_DEADLINE`]; at most `concurrency` at once.
async fn register_all(
    channels: &[Channel],
    agents: u64,
    concurrency: Option<usize>,
) -> Registration {
    let started = Instant::now();
    let dialing = Arc::new(tokio::sync::Semaphore::new(
        concurrency.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut registrations = Vec::new();
    for i in 0..agents {
        let mut client = AgentServiceClient::new(channels[(i as usize) % channels.len()].clone());
        let dialing = Arc::clone(&dialing);
        registrations.push(tokio::spawn(async move {
            let _slot = dialing.acquire_owned().await.expect("semaphore open");
            let mut tries = 0u64;
            let mut delay = Duration::from_millis(200);
            loop {
                tries += 1;
                let answer = client
                    .register(pb::RegisterRequest {
                        agent_id: format!("load-{i}"),
                        hostname: format!("host-{i}"),
                        version: "load".to_owned(),
                        ..Default::default()
                    })
                    .await;
                match answer {
                    Ok(answer) => break (Some(answer.into_inner().heartbeat_interval_ms), tries),
                    Err(_) if started.elapsed() < REGISTER_DEADLINE => {
                        let jittered = delay.mul_f64(rand::random_range(0.5..1.0));
                        tokio::time::sleep(jittered).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(status) => {
                        eprintln!("load: load-{i} did not register: {status}");
                        break (None, tries);
                    }
                }
            }
        }));
    }
    let mut outcome = Registration {
        took: Duration::ZERO,
        heartbeat_interval_ms: 0,
        retries: 0,
        max_tries: 0,
        failed: 0,
    };
    for registration in registrations {
        let (interval, tries) = registration.await.expect("register task");
        match interval {
            Some(ms) => outcome.heartbeat_interval_ms = ms,
            None => outcome.failed += 1,
        }
        outcome.retries += tries - 1;
        outcome.max_tries = outcome.max_tries.max(tries);
    }
    outcome.took = started.elapsed();
    outcome
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
    /// How long each phase of an agent's cycle took, in µs: the `AcquireLease` that
    /// granted a unit, the result batch from send to acknowledgement, the `Complete`.
    acquire_us: Mutex<Vec<u64>>,
    report_us: Mutex<Vec<u64>>,
    complete_us: Mutex<Vec<u64>>,
}

impl Counters {
    /// Records one phase's latency while measuring.
    async fn time(&self, phase: &Mutex<Vec<u64>>, started: Instant) {
        if self.measuring.load(Ordering::Relaxed) {
            phase
                .lock()
                .await
                .push(started.elapsed().as_micros() as u64);
        }
    }
}

/// The coordinator under test.
struct Coordinator {
    child: Child,
    url: String,
}

impl Coordinator {
    /// Stops the coordinator as an operator would (SIGTERM) and waits for it.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the coordinator and the load generator may run, from
/// `EVALCTL_LOAD_COORDINATOR_CPUS` (a `taskset` CPU list such as `0` or `0-1`): the
/// coordinator on those CPUs, the load generator on the others, so neither takes the
/// other's cores. Unset: both anywhere.
struct Placement {
    coordinator: Option<String>,
    generator: Option<String>,
}

impl Placement {
    fn from_env() -> Placement {
        let Some(coordinator) = std::env::var("EVALCTL_LOAD_COORDINATOR_CPUS")
            .ok()
            .filter(|v| !v.trim().is_empty())
        else {
            return Placement {
                coordinator: None,
                generator: None,
            };
        };
        let taken = cpu_list(&coordinator);
        let all = std::thread::available_parallelism().map_or(1, usize::from);
        let rest: Vec<String> = (0..all)
            .filter(|c| !taken.contains(c))
            .map(|c| c.to_string())
            .collect();
        assert!(
            !rest.is_empty(),
            "EVALCTL_LOAD_COORDINATOR_CPUS={coordinator} leaves no CPU of {all} for the load generator"
        );
        Placement {
            coordinator: Some(coordinator),
            generator: Some(rest.join(",")),
        }
    }

    /// Confines this process (and the threads it starts afterwards) to the generator's CPUs.
    fn confine_generator(&self) {
        if let Some(cpus) = &self.generator {
            taskset(&["-p", "-c", cpus, &std::process::id().to_string()]);
        }
    }
}

/// The CPUs of a `taskset` list (`0,2-3`).
fn cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        let bad = || panic!("EVALCTL_LOAD_COORDINATOR_CPUS: {part:?} is not a CPU or a range");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (
                    a.parse().unwrap_or_else(|_| bad()),
                    b.parse().unwrap_or_else(|_| bad()),
                );
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().unwrap_or_else(|_| bad())),
        }
    }
    cpus
}

fn taskset(args: &[&str]) {
    let status = Command::new("taskset")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run taskset (util-linux) to place the processes");
    assert!(status.success(), "taskset {args:?} failed");
}

fn start_coordinator(data_dir: &std::path::Path, cpus: Option<&str>, listen: &str) -> Coordinator {
    let binary = env!("CARGO_BIN_EXE_evalctl-coordinator");
    let mut command = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, binary]);
            c
        }
        None => Command::new(binary),
    };
    command
        .args(["--listen", listen, "--lease-ttl", "30s", "--data-dir"])
        .arg(data_dir)
        // Per-grant info lines would be most of the work at thousands of grants a second.
        .env("RUST_LOG", "warn");
    let (child, addr) = support::spawn_coordinator(command);
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

/// utime + stime of the thread of `pid` named `name`, in seconds (0 when there is none).
fn thread_cpu_seconds(pid: &str, name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let tid = task.file_name().to_string_lossy().into_owned();
            return cpu_seconds(&format!("{pid}/task/{tid}"));
        }
    }
    0.0
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
    // Like a real agent (agent/src/runner/outbox.rs), one `ReportResults` stream carries
    // every batch for the agent's life and is reopened only when it breaks.
    let mut stream: Option<ResultStream> = None;
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let Some(lease) = acquire(&mut client, &id, &counters).await else {
            continue;
        };
        counters.time(&counters.acquire_us, asked).await;
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
                result_json: STEP_DOCUMENT.to_owned(),
                environment_json: "{}".to_owned(),
                records_zstd: blob.as_ref().clone(),
                ..Default::default()
            })
            .collect();
        sequence += 1;
        let batch = pb::ResultBatch {
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
            unit_id: lease.unit_id.clone(),
            attempt: lease.attempt,
            sequence,
            results,
        };
        let sent_results = batch.results.len() as u64;
        let sent = Instant::now();
        if !report(&mut client, &mut stream, batch).await {
            stream = None;
            counters.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.time(&counters.report_us, sent).await;
        if counters.measuring.load(Ordering::Relaxed) {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .records
                .fetch_add(records * sent_results, Ordering::Relaxed);
        }
        let completing = Instant::now();
        match client
            .complete(pb::CompleteRequest {
                lease_id: lease.lease_id,
                epoch: lease.epoch,
            })
            .await
        {
            Ok(_) => {
                counters.time(&counters.complete_us, completing).await;
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

/// An agent's open `ReportResults` call: where batches go and where their
/// acknowledgements come back.
struct ResultStream {
    batches: mpsc::Sender<pb::ResultBatch>,
    acks: tonic::Streaming<pb::ResultAck>,
}

/// Sends `batch` on the agent's result stream, opening one if there is none, and waits
/// for its acknowledgement; false when it was not accepted or the stream broke.
async fn report(
    client: &mut AgentServiceClient<Channel>,
    stream: &mut Option<ResultStream>,
    batch: pb::ResultBatch,
) -> bool {
    if stream.is_none() {
        let (batches, rx) = mpsc::channel(4);
        // Queued before the call: tonic answers the call once the response headers arrive.
        if batches.send(batch).await.is_err() {
            return false;
        }
        let Ok(response) = client.report_results(ReceiverStream::new(rx)).await else {
            return false;
        };
        *stream = Some(ResultStream {
            batches,
            acks: response.into_inner(),
        });
    } else if let Some(open) = stream.as_mut()
        && open.batches.send(batch).await.is_err()
    {
        return false;
    }
    let Some(open) = stream.as_mut() else {
        return false;
    };
    matches!(open.acks.message().await, Ok(Some(ack)) if ack.accepted)
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
    let placement = Placement::from_env();
    // Before the runtime starts its threads, which inherit the placement.
    placement.confine_generator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(agents, secs, records, units, connections, placement));
}

async fn run(
    agents: u64,
    secs: u64,
    records: u64,
    units: u64,
    connections: u64,
    placement: Placement,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut coordinator =
        start_coordinator(dir.path(), placement.coordinator.as_deref(), "127.0.0.1:0");
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
            allow_empty: false,
        })
        .await
        .expect("submit the campaign")
        .into_inner();
    eprintln!(
        "load: submitted {} units in {:.1}s",
        submitted.units,
        load.elapsed().as_secs_f64()
    );

    // Each connection from a source address of its own, as each host of a fleet has one
    // (and as the coordinator's per-peer connection cap expects): loopback answers on all
    // of 127.0.0.0/8.
    let mut channels = Vec::new();
    for c in 0..connections {
        let channel = Endpoint::from_shared(coordinator.url.clone())
            .expect("endpoint")
            .local_address(Some(source_address(c)))
            .connect_lazy();
        channels.push(channel);
    }
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let blob = Arc::new(records_blob(records));

    // Register every agent first. A fleet does not dial all at once: at most this many
    // registrations (and so new connections) are in flight.
    let mut interval = Duration::from_millis(env_number("EVALCTL_LOAD_HEARTBEAT_MS", 0));
    let first = register_all(&channels, agents, Some(REGISTER_CONCURRENCY)).await;
    if interval.is_zero() {
        interval = Duration::from_millis(first.heartbeat_interval_ms);
    }
    let registered = first.took;
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
    let writer0 = thread_cpu_seconds(&pid_text, WRITER_THREAD);
    counters.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    counters.measuring.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(&pid_text) - cpu0) / elapsed;
    let own = (cpu_seconds(&me) - own0) / elapsed;
    let writer = (thread_cpu_seconds(&pid_text, WRITER_THREAD) - writer0) / elapsed;
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
    for (phase, samples) in [
        ("acquire (granted)", &counters.acquire_us),
        ("result batch ack", &counters.report_us),
        ("complete", &counters.complete_us),
    ] {
        let mut samples = samples.lock().await.clone();
        samples.sort_unstable();
        println!(
            "  {:<17} p50 {:.2} ms  p99 {:.2} ms",
            format!("{phase}:"),
            percentile(&samples, 50.0) / 1000.0,
            percentile(&samples, 99.0) / 1000.0
        );
    }
    println!(
        "  coordinator:      CPU {cpu:.2} cores, RSS {rss:.0} MiB (peak {peak:.0} MiB); load generator CPU {own:.2} cores"
    );
    let placed = placement.coordinator.as_deref().map_or_else(
        || "anywhere, sharing CPUs with the load generator".to_owned(),
        |cpus| format!("on CPUs {cpus} alone"),
    );
    println!("  placement:        coordinator {placed}");
    if leases > 0.0 {
        // The writer thread is the one part that cannot use a second core; its CPU time
        // per grant bounds the grant rate whatever the machine.
        println!(
            "  per grant:        coordinator {:.3} ms CPU, of which the store writer {:.3} ms \
             (one thread: at most {:.0} grants/s)",
            cpu / leases * 1e3,
            writer / leases * 1e3,
            if writer > 0.0 {
                leases / writer
            } else {
                f64::INFINITY
            }
        );
    }
    println!(
        "  errors:           {}",
        counters.errors.load(Ordering::Relaxed)
    );

    // A coordinator restart: every agent's connection breaks at once, and the whole fleet
    // registers again on the same address, all at once, with retries and backoff.
    let port = coordinator
        .url
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    coordinator.terminate();
    drop(coordinator);
    let restarted = start_coordinator(
        dir.path(),
        placement.coordinator.as_deref(),
        &format!("127.0.0.1:{port}"),
    );
    let again = register_all(&channels, agents, None).await;
    println!(
        "  after a restart:  {agents} agents registered again in {:.1}s ({} retries, at most {} tries \
         for one agent, {} failed)",
        again.took.as_secs_f64(),
        again.retries,
        again.max_tries,
        again.failed
    );
    drop(restarted);
    // Tasks blocked in long polls end with the runtime.
    drop(tasks);
}
