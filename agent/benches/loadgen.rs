//! Load generator benchmarks (`cargo bench -p evalctl-agent --bench loadgen`).
//!
//! 1. **Streamed-token rate on one core**: the client on a single-threaded runtime against the
//!    simulated server (instant latency model, on its own thread), reporting token-bearing chunks
//!    received per second and the client thread's CPU time per chunk.
//! 2. **Timing overhead**: many concurrent streams against the scripted test server, which logs
//!    when each first token left it; the client's first-token stamp minus that instant is the
//!    instrument's own delay (p50, p99, max).
//!
//! Arguments: `[streams-for-overhead]` (default 1000).

#[allow(
    dead_code,
    reason = "the scripted server is shared with the test suite"
)]
#[path = "../tests/support/scripted_server.rs"]
mod scripted_server;

use std::time::{Duration, Instant};

use evalctl_agent::loadgen::{
    Api, Dataset, Load, Prompt, PromptInput, StepOutcome, StepPlan, Stop, Summary, Tokenization,
    client::now_ns, run_step,
};
use evalctl_agent::sim_server::{LatencyModel, SimConfig, SimServer};
use scripted_server::{ScriptedServer, Step, chunks};

fn dataset(output: u32) -> Dataset {
    Dataset {
        prompts: vec![Prompt {
            input: PromptInput::Text("bench prompt".into()),
            input_tokens: 2,
            max_tokens: output,
        }]
        .into(),
        tokenization: Tokenization::Whitespace,
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

fn token_rate() {
    // The simulator on its own runtime thread, so the client's core is the client's alone.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sim = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("sim runtime");
        rt.block_on(async {
            let sim = SimServer::start(SimConfig {
                latency: LatencyModel::instant(),
                ..SimConfig::default()
            })
            .await
            .expect("sim starts");
            url_tx.send(sim.base_url()).expect("send url");
            let _ = stop_rx.await;
            sim.shutdown().await.expect("sim stops");
        });
    });
    let url = url_rx.recv().expect("sim url");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    for (concurrency, requests, tokens) in [(1, 20, 2000), (16, 64, 2000), (64, 128, 1000)] {
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
        println!(
            "token rate: c={concurrency:<3} {chunks:>7} token chunks in {:.3} s wall: \
             {:>9.0} chunks/s; client thread CPU {:.3} s = {:.2} µs/chunk ({:.0} chunks per CPU-second)",
            wall.as_secs_f64(),
            chunks as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / chunks as f64,
            chunks as f64 / cpu.as_secs_f64(),
        );
    }
    let _ = stop_tx.send(());
    sim.join().expect("sim thread");
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

fn main() {
    let streams = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    token_rate();
    overhead(streams);
}
