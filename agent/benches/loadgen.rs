//! Load generator benchmarks (`cargo bench -p evalctl-agent --bench loadgen`).
//!
//! 1. **Chunk classification**: nanoseconds per chunk of [`chunk::classify`] (the fast scan)
//!    and [`chunk::classify_full`] (serde) on the chunks vLLM and the simulator send.
//! 2. **Streamed-token rate on one core**: the client on a single-threaded runtime against the
//!    simulated server (instant latency model, on its own threads), reporting token-bearing
//!    chunks received per second and the client thread's CPU time per chunk. Each load runs
//!    several times; the best and the median are reported, since CPU time on a shared machine
//!    is inflated by whatever else runs there. With `EVALCTL_BENCH_PYTHON` set to a Python that
//!    has aiohttp, `python_client.py` runs against the same server, interleaved with the Rust
//!    runs, and the ratio of chunks per CPU-second is printed.
//! 3. **Timing overhead**: many concurrent streams against the scripted test server, which logs
//!    when each first token left it; the client's first-token stamp minus that instant is the
//!    instrument's own delay (p50, p99, max).
//!
//! 4. **Trace replay lag**: a bursty Mooncake-format trace of 1,200 requests (20 bursts of
//!    50 in one millisecond) replayed at 10× against the simulator; p50, p99 and max schedule
//!    lag.
//!
//! Arguments: `[streams-for-overhead]` (default 1000), or `trace` for part 4 alone. `EVALCTL_BENCH_REPEAT` sets the runs per
//! load (default 5).

#[allow(
    dead_code,
    reason = "the scripted server is shared with the test suite"
)]
#[path = "../loadgen/tests/support/scripted_server.rs"]
mod scripted_server;

use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};

use evalctl_loadgen::{
    Api, Dataset, Load, Prompt, PromptInput, StepOutcome, StepPlan, Stop, Summary, Tokenization,
    chunk, client::now_ns, run_step,
};
use evalctl_sim_server::{LatencyModel, SimConfig, SimServer};
use scripted_server::{ScriptedServer, Step, chunks};

fn dataset(output: u32) -> Dataset {
    Dataset::new(
        vec![Prompt {
            input: PromptInput::Text("bench prompt".into()),
            input_tokens: 2,
            max_tokens: output,
        }],
        Tokenization::Whitespace,
    )
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

fn repeat() -> usize {
    std::env::var("EVALCTL_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Best and median of `values` (higher is better).
fn best_median(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() - 1], values[values.len() / 2])
}

fn classify_cost() {
    let samples: [(&str, &[u8]); 3] = [
        (
            "completions (simulator)",
            br#"{"id":"cmpl-5f0c3b0e9c2d4c0a8f1e2d3c4b5a6978","object":"text_completion","created":1718000000,"model":"evalctl-sim","system_fingerprint":"evalctl-sim","choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":null,"stop_reason":null}]}"#,
        ),
        (
            "chat (vLLM)",
            br#"{"id":"chatcmpl-5f0c3b0e9c2d4c0a8f1e2d3c4b5a6978","object":"chat.completion.chunk","created":1718000000,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":{"content":" the"},"logprobs":null,"finish_reason":null}]}"#,
        ),
        (
            "usage (full parser either way)",
            br#"{"id":"cmpl-5f0c3b0e9c2d4c0a8f1e2d3c4b5a6978","object":"text_completion","created":1718000000,"model":"evalctl-sim","choices":[],"usage":{"prompt_tokens":12,"total_tokens":1012,"completion_tokens":1000}}"#,
        ),
    ];
    type Classify = for<'a> fn(&'a [u8]) -> Result<chunk::Payload<'a>, serde_json::Error>;
    let parsers: [(&str, Classify); 2] =
        [("fast", chunk::classify), ("full", chunk::classify_full)];
    const N: u32 = 200_000;
    for (shape, data) in samples {
        let mut line = format!("classify: {shape:<31}");
        for (name, parse) in parsers {
            let mut per_chunk = Vec::new();
            for _ in 0..repeat() {
                let cpu = thread_cpu();
                for _ in 0..N {
                    let parsed = parse(std::hint::black_box(data));
                    std::hint::black_box(parsed.is_ok());
                }
                per_chunk.push(-((thread_cpu() - cpu).as_secs_f64() * 1e9 / f64::from(N)));
            }
            let (best, median) = best_median(per_chunk);
            line += &format!(" {name} {:>6.1} ns (median {:>6.1})", -best, -median);
        }
        println!("{line}");
    }
}

/// Runs the Python peer once; its chunks per CPU-second.
fn python_rate(python: &str, url: &str, concurrency: u32, requests: u64, tokens: u32) -> f64 {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_client.py");
    let output = std::process::Command::new(python)
        .args([
            script,
            url,
            &concurrency.to_string(),
            &requests.to_string(),
            &tokens.to_string(),
        ])
        .output()
        .expect("the Python client runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "... (N chunks per CPU-second)"
    text.rsplit('(')
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected python output: {text}"))
}

/// Pins the calling thread to CPU `cpu` (the trace bench keeps client and simulator off each
/// other's core, as a GPU host's cores keep a real server apart from the client).
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// The simulator on its own named threads, so the client's core is the client's alone and a
/// profiler can tell the two apart; its URL, and what stops it.
fn sim_on_its_threads(config: SimConfig, cpu: Option<usize>) -> (String, impl FnOnce()) {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sim = std::thread::Builder::new()
        .name("sim".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sim-worker")
                .on_thread_start(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                })
                .enable_all()
                .build()
                .expect("sim runtime");
            rt.block_on(async {
                let sim = SimServer::start(config).await.expect("sim starts");
                url_tx.send(sim.base_url()).expect("send url");
                let _ = stop_rx.await;
                sim.shutdown().await.expect("sim stops");
            });
        })
        .expect("sim thread");
    let url = url_rx.recv().expect("sim url");
    let stop = move || {
        let _ = stop_tx.send(());
        sim.join().expect("sim thread");
    };
    (url, stop)
}

fn token_rate() {
    let (url, stop_sim) = sim_on_its_threads(
        SimConfig {
            latency: LatencyModel::instant(),
            ..SimConfig::default()
        },
        None,
    );
    let python = std::env::var("EVALCTL_BENCH_PYTHON").ok();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    for (concurrency, requests, tokens) in [(1, 20, 2000), (16, 64, 2000), (64, 128, 1000)] {
        let (mut rates, mut python_rates) = (Vec::new(), Vec::new());
        for run in 0..repeat() {
            let plan = StepPlan::new(
                url.clone(),
                Api::Completions,
                "evalctl-sim",
                dataset(tokens),
                Load::Concurrency(concurrency),
                Stop::Requests(requests),
            );
            let cpu = thread_cpu();
            let wall = Instant::now();
            let outcome = rt.block_on(run_step(plan, |_| {})).expect("step");
            let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
            let chunks: usize = outcome.records.iter().map(|r| r.token_ns.len()).sum();
            assert_eq!(outcome.metrics.failed, 0, "{:?}", outcome.metrics.errors);
            rates.push(chunks as f64 / cpu.as_secs_f64());
            println!(
                "token rate: c={concurrency:<3} run {run}: {chunks:>7} token chunks in {:.3} s wall: \
                 {:>9.0} chunks/s; client thread CPU {:.3} s = {:.2} µs/chunk ({:.0} chunks per CPU-second)",
                wall.as_secs_f64(),
                chunks as f64 / wall.as_secs_f64(),
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / chunks as f64,
                chunks as f64 / cpu.as_secs_f64(),
            );
            if let Some(python) = &python {
                python_rates.push(python_rate(python, &url, concurrency, requests, tokens));
            }
        }
        let (best, median) = best_median(rates);
        println!(
            "token rate: c={concurrency:<3} chunks per CPU-second: best {best:.0}, median {median:.0}"
        );
        if !python_rates.is_empty() {
            let (py_best, py_median) = best_median(python_rates);
            println!(
                "token rate: c={concurrency:<3} python aiohttp chunks per CPU-second: best {py_best:.0}, \
                 median {py_median:.0}; ratio best/best {:.1}x, median/median {:.1}x",
                best / py_best,
                median / py_median
            );
        }
    }
    stop_sim();
}

fn overhead(streams: u32) {
    let server = ScriptedServer::start(|seq, _| {
        let mut steps = vec![
            Step::Head {
                request_id: Some(seq.to_string()),
            },
            Step::Sleep(Duration::from_millis(100 + (seq * 7) % 50)),
        ];
        for i in 0..4 {
            if i > 0 {
                steps.push(Step::Sleep(Duration::from_millis(50)));
            }
            steps.push(Step::token(chunks::text(" tok")));
        }
        steps.extend([
            Step::event(chunks::text_finish()),
            Step::event(chunks::done()),
            Step::End,
        ]);
        steps
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let mut plan = StepPlan::new(
        server.url(),
        Api::Completions,
        "scripted",
        dataset(4),
        Load::Concurrency(streams),
        Stop::Requests(u64::from(streams) * 2),
    );
    plan.warmup = u64::from(streams);
    let outcome: StepOutcome = rt.block_on(run_step(plan, |_| {})).expect("step");
    assert_eq!(outcome.metrics.failed, 0, "{:?}", outcome.metrics.errors);

    let log = server.log();
    let base = Instant::now();
    let base_ns = now_ns();
    let at = |rel: u64| {
        let ns = rel + outcome.epoch_ns;
        if ns >= base_ns {
            base + Duration::from_nanos(ns - base_ns)
        } else {
            base - Duration::from_nanos(base_ns - ns)
        }
    };
    let mut delays = Vec::new();
    for r in outcome.records.iter().filter(|r| !r.warmup) {
        let seq: u64 = r
            .server_request_id
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("sequence id");
        let l = log.iter().find(|l| l.seq == seq).expect("logged");
        for (client, server) in r.token_ns.iter().zip(&l.token_writes) {
            let client = at(*client);
            let signed = if client >= *server {
                client.duration_since(*server).as_secs_f64()
            } else {
                -server.duration_since(client).as_secs_f64()
            };
            delays.push(signed * 1e6);
        }
    }
    let s = Summary::of(delays).expect("delays");
    println!(
        "timing overhead: {streams} streams, client token stamp - server write return (signed): \
         p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; |p99| bounds the instrument's delay",
        s.p50, s.p99, s.max
    );
}

/// A Mooncake-format trace of 1,200 requests over 60 s: 20 bursts of 50 requests stamped
/// with one millisecond, every 3 s, and 200 single requests between them; prompts of 1 to
/// 4 blocks of 512 tokens from 8 shared prefix blocks.
fn bursty_trace() -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut stamps: Vec<u64> = (0..20u64)
        .flat_map(|burst| std::iter::repeat_n(burst * 3000 + 1500, 50))
        .collect();
    stamps.extend((0..200).map(|_| rng.random_range(0..60_000u64)));
    stamps.sort_unstable();
    let mut next_block = 100u64;
    stamps
        .iter()
        .map(|&ms| {
            let blocks = rng.random_range(1..=4u64);
            let input = (blocks - 1) * 512 + rng.random_range(1..=512u64);
            let mut ids = vec![rng.random_range(0..8u64)];
            for _ in 1..blocks {
                ids.push(next_block);
                next_block += 1;
            }
            format!(
                "{{\"timestamp\": {ms}, \"input_length\": {input}, \"output_length\": 8, \"hash_ids\": {ids:?}}}\n"
            )
        })
        .collect()
}

/// Part 4, trace replay: the bursty trace at 10× (6 s) against the simulator (10 µs of
/// prefill a token, 5 ms decode steps, prefix cache on), the simulator pinned to the last
/// CPU and the client (one worker) to the first, as a GPU host keeps a real server's cores
/// apart from the client's; the schedule lag (send − scheduled) of every request, alone and
/// in bursts.
fn trace_lag() {
    // A server's pace: 10 µs of prefill a token, 5 ms decode steps.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (url, stop_sim) = sim_on_its_threads(
        SimConfig {
            latency: LatencyModel {
                prefill_us_per_token: 10.0,
                decode_ms_per_token: 5.0,
                decode_ms_per_extra_request: 0.0,
            },
            prefix_caching: true,
            ..SimConfig::default()
        },
        (cpus > 1).then_some(cpus - 1),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bursty.jsonl");
    std::fs::write(&path, bursty_trace()).expect("write the trace");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| pin_to(0))
        .enable_all()
        .build()
        .expect("client runtime");
    let data = rt
        .block_on(evalctl_loadgen::dataset::prepare(
            &evalctl_loadgen::DatasetPlan {
                source: evalctl_loadgen::DatasetSource::Trace {
                    path,
                    options: evalctl_loadgen::trace::TraceOptions::default(),
                },
                count: 10_000,
                seed: 1,
                filter: evalctl_loadgen::dataset::LengthFilter::default(),
                server_url: Some(url.clone()),
                model: None,
                tokenizer_json: None,
            },
        ))
        .expect("trace dataset");
    assert_eq!(data.prompts.len(), 1200);
    let mut p99s = Vec::new();
    for run in 0..repeat() {
        let plan = StepPlan::new(
            format!("{url}/v1"),
            Api::Completions,
            "evalctl-sim",
            data.clone(),
            Load::Trace { time_scale: 10.0 },
            Stop::Requests(1200),
        );
        let outcome = rt.block_on(run_step(plan, |_| {})).expect("step");
        let m = &outcome.metrics;
        assert_eq!(m.failed, 0, "{:?}", m.errors);
        let lag = m.client_lag_ms.expect("trace replay reports lag");
        p99s.push(-lag.p99);
        // Lags of requests alone at their instant and of those in a burst, apart.
        let mut at: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for r in &outcome.records {
            *at.entry(r.scheduled_ns).or_default() += 1;
        }
        let (mut alone, mut burst): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        for r in &outcome.records {
            let lag = r.lag_ms().unwrap_or(f64::NAN);
            if at[&r.scheduled_ns] == 1 {
                alone.push(lag)
            } else {
                burst.push(lag)
            }
        }
        let pct = |mut v: Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p) as usize]
        };
        println!(
            "trace replay: run {run}: alone ({}) p50 {:.3} p99 {:.3} ms; in bursts ({}) p50 {:.3} p99 {:.3} ms",
            alone.len(),
            pct(alone.clone(), 0.5),
            pct(alone, 0.99),
            burst.len(),
            pct(burst.clone(), 0.5),
            pct(burst, 0.99)
        );
        println!(
            "trace replay: run {run}: {} requests (20 bursts of 50 in one ms) at 10x in {:.2} s: \
             schedule lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {} connections",
            m.completed, m.duration_s, lag.p50, lag.p99, lag.max, outcome.connections_opened
        );
    }
    let (best, median) = best_median(p99s);
    println!(
        "trace replay: p99 schedule lag: best {:.3} ms, median {:.3} ms",
        -best, -median
    );
    stop_sim();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `-- trace` runs the trace replay part alone.
    if args.iter().any(|a| a == "trace") {
        trace_lag();
        return;
    }
    let streams = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1000);
    classify_cost();
    token_rate();
    overhead(streams);
    trace_lag();
}
