//! Long prompts through the load generator against the simulated server over real HTTP.
//! A test binary of its own: its 64K-token prompts keep a core busy, which would disturb the
//! timing tests of `sim_server.rs` running beside it (cargo runs test binaries one after
//! another).

use evalctl_loadgen::dataset::{self, DatasetPlan, LengthFilter};
use evalctl_loadgen::{Api, DatasetSource, Load, StepPlan, Stop, Tokenization, run_step};
use evalctl_sim_server::{LatencyModel, SimConfig, SimServer};

/// A 64K-token prompt streams through the load generator as the latency model says: the
/// whole prompt reaches the server (its /tokenize count and the usage agree), TTFT is the
/// prefill cost of 65,536 tokens and the decode steps keep their pace. Nothing in the client
/// (buffers, request and stall timeouts) is sized for short prompts.
#[tokio::test]
async fn a_64k_token_prompt_streams_at_the_latency_models_pace() {
    const INPUT: u64 = 65_536;
    const OUTPUT: u32 = 64;
    let sim = SimServer::start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 20.0,
            decode_ms_per_token: 2.0,
            decode_ms_per_extra_request: 0.0,
        },
        ..SimConfig::default()
    })
    .await
    .expect("sim server starts");
    let data = dataset::prepare(&DatasetPlan {
        source: DatasetSource::Random {
            input_tokens: INPUT as u32,
            output_tokens: OUTPUT,
        },
        count: 2,
        seed: 5,
        filter: LengthFilter::default(),
        server_url: Some(sim.base_url()),
        model: None,
        tokenizer_json: None,
    })
    .await
    .expect("dataset");
    assert_eq!(data.tokenization, Tokenization::ServerTokenize);
    assert!(data.prompts.iter().all(|p| p.input_tokens == INPUT));
    for api in [Api::Chat, Api::Completions] {
        let plan = StepPlan::new(
            format!("{}/v1", sim.base_url()),
            api,
            "evalctl-sim",
            data.clone(),
            Load::Concurrency(1),
            Stop::Requests(2),
        );
        let outcome = run_step(plan, |_| {}).await.expect("step runs");
        let m = &outcome.metrics;
        assert_eq!((m.completed, m.failed), (2, 0), "{api:?}: {:?}", m.errors);
        assert_eq!(m.total_output_tokens, 2 * u64::from(OUTPUT));
        for r in &outcome.records {
            assert_eq!(
                r.server_prompt_tokens,
                Some(INPUT),
                "{api:?}: the whole prompt arrived"
            );
            assert_eq!(r.token_ns.len(), OUTPUT as usize);
        }
        // Prefill: 65,536 tokens × 20 µs = 1,310.72 ms; the request's transfer, parsing and
        // tokenising add to it, a few hundred ms at most on a busy 2-core machine.
        let ttft = m.ttft_ms.expect("ttft");
        eprintln!(
            "{api:?}: TTFT p50 {:.1} ms, {:.1} output tok/s",
            ttft.p50, m.output_token_throughput
        );
        assert!(
            (1_310.0..2_500.0).contains(&ttft.p50),
            "{api:?} ttft {ttft:?}"
        );
        // Decode steps of 2 ms, the first token's prefill excluded.
        let tpot = m.tpot_ms.expect("tpot");
        assert!((1.9..4.0).contains(&tpot.p50), "{api:?} tpot {tpot:?}");
        // Output throughput of one stream: 64 tokens over TTFT + 63 decode steps.
        let e2el = m.e2el_ms.expect("e2el");
        assert!(
            (1_310.0 + 63.0 * 2.0..3_000.0).contains(&e2el.p50),
            "{api:?} e2el {e2el:?}"
        );
        // One request at a time: the step's output throughput is 64 tokens per E2E latency.
        let modelled = f64::from(OUTPUT) / (e2el.mean / 1000.0);
        assert!(
            (m.output_token_throughput / modelled - 1.0).abs() < 0.2,
            "{api:?}: {} tok/s, {modelled} modelled",
            m.output_token_throughput
        );
    }
}
