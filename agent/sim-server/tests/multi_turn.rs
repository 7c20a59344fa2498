//! Multi-turn conversations through the load generator against the simulated server over
//! real HTTP: the history each turn carries, the prefix cache's effect by turn position, and
//! think times. A test binary of its own, so its timing does not share a core with
//! `sim_server.rs`'s timing tests.

use std::collections::BTreeMap;
use std::time::Duration;

use evalctl_loadgen::conversation::ConversationSource;
use evalctl_loadgen::dataset::{self, DatasetPlan, LengthFilter};
use evalctl_loadgen::{
    Api, Arrival, DatasetSource, Load, RequestRecord, Sampled, StepOutcome, StepPlan, Stop,
    run_step,
};

use evalctl_sim_server::{LatencyModel, SimConfig, SimServer};

/// Prefill 200 µs per uncached token, decode 1 ms per token.
fn latency() -> LatencyModel {
    LatencyModel {
        prefill_us_per_token: 200.0,
        decode_ms_per_token: 1.0,
        decode_ms_per_extra_request: 0.0,
    }
}

/// Conversations of 4 turns: a first message of 400 tokens, follow-ups of 50, answers of 20.
fn conversations(think_time_s: f64) -> DatasetSource {
    DatasetSource::Conversations {
        source: ConversationSource::Synthetic {
            turns: Sampled::fixed(4.0),
            input_tokens: Sampled::fixed(50.0),
            first_input_tokens: Some(Sampled::fixed(400.0)),
            output_tokens: Sampled::fixed(20.0),
        },
        think_time_s: Sampled::fixed(think_time_s),
    }
}

async fn run(sim: &SimServer, source: DatasetSource, load: Load, requests: u64) -> StepOutcome {
    let data = dataset::prepare(&DatasetPlan {
        source,
        count: 16,
        seed: 3,
        filter: LengthFilter::default(),
        server_url: Some(sim.base_url()),
        model: None,
        tokenizer_json: None,
    })
    .await
    .expect("dataset");
    let plan = StepPlan::new(
        format!("{}/v1", sim.base_url()),
        Api::Chat,
        "evalctl-sim",
        data,
        load,
        Stop::Requests(requests),
    );
    run_step(plan, |_| {}).await.expect("step runs")
}

fn by_conversation(records: &[RequestRecord]) -> BTreeMap<u64, Vec<&RequestRecord>> {
    let mut map: BTreeMap<u64, Vec<&RequestRecord>> = BTreeMap::new();
    for r in records {
        map.entry(r.conversation.expect("a conversation"))
            .or_default()
            .push(r);
    }
    for turns in map.values_mut() {
        turns.sort_by_key(|r| r.turn);
    }
    map
}

/// Each turn carries the whole conversation, the server's answers included (the server's
/// prompt count is the history's); with the prefix cache, later turns prefill only what is
/// new and their TTFT drops below the first turn's; without it, they rise above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_turns_carry_the_history_and_hit_the_prefix_cache() {
    let cached = SimServer::start(SimConfig {
        latency: latency(),
        prefix_caching: true,
        ..SimConfig::default()
    })
    .await
    .expect("sim server starts");
    let outcome = run(&cached, conversations(0.0), Load::Concurrency(2), 8).await;
    let m = &outcome.metrics;
    assert_eq!((m.completed, m.failed), (8, 0), "{:?}", m.errors);
    for turns in by_conversation(&outcome.records).values() {
        let positions: Vec<Option<u32>> = turns.iter().map(|r| r.turn).collect();
        let expected: Vec<Option<u32>> = (1..=turns.len() as u32).map(Some).collect();
        assert_eq!(positions, expected, "turns in order");
        // 400 + 20, then + 50 + 20 per turn.
        for (k, r) in turns.iter().enumerate() {
            let history = 400 + 70 * k as u64;
            assert_eq!(r.input_tokens, history, "turn {}", k + 1);
            assert_eq!(r.server_prompt_tokens, Some(history), "turn {}", k + 1);
        }
    }
    let figures = m.turns.as_ref().expect("turn figures");
    let first = figures.first.ttft_ms.expect("first-turn ttft");
    let later = figures
        .later
        .as_ref()
        .and_then(|l| l.ttft_ms)
        .expect("later ttft");
    eprintln!(
        "ttft p50 with the prefix cache: first turns {:.1} ms, later turns {:.1} ms",
        first.p50, later.p50
    );
    // First turns prefill 400 tokens (80 ms); later turns about 54 (a block's worth more
    // than the 50 new tokens: ~11 ms).
    assert!(first.p50 >= 78.0, "first {first:?}");
    assert!(later.p50 < 25.0, "later {later:?}");
    assert_eq!(figures.by_position.len(), 4);

    // The same conversations on a server without a prefix cache: later turns prefill the
    // whole history, so they are slower than first turns.
    let uncached = SimServer::start(SimConfig {
        latency: latency(),
        ..SimConfig::default()
    })
    .await
    .expect("sim server starts");
    let outcome = run(&uncached, conversations(0.0), Load::Concurrency(2), 8).await;
    let figures = outcome.metrics.turns.expect("turn figures");
    let first = figures.first.ttft_ms.expect("first-turn ttft");
    let fourth = figures.by_position[3].ttft_ms.expect("fourth-turn ttft");
    eprintln!(
        "ttft p50 without: first turns {:.1} ms, fourth turns {:.1} ms",
        first.p50, fourth.p50
    );
    // Turn 4 carries 610 tokens: 122 ms of prefill against 80.
    assert!(
        fourth.p50 > first.p50 + 30.0,
        "first {first:?} fourth {fourth:?}"
    );
}

/// A rate starts new conversations; each later turn is scheduled a think time after the
/// previous answer ended and is sent then (its lag is measured from there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_starts_conversations_and_turns_wait_their_think_time() {
    let sim = SimServer::start(SimConfig {
        latency: LatencyModel::instant(),
        ..SimConfig::default()
    })
    .await
    .expect("sim server starts");
    let load = Load::Rate {
        rps: 20.0,
        arrival: Arrival::Constant,
        max_in_flight: None,
    };
    let outcome = run(&sim, conversations(0.1), load, 12).await;
    let m = &outcome.metrics;
    assert_eq!((m.completed, m.failed), (12, 0), "{:?}", m.errors);
    let conversations = by_conversation(&outcome.records);
    assert!(
        conversations.len() >= 3,
        "{} conversations",
        conversations.len()
    );
    let starts: Vec<u64> = conversations.values().map(|t| t[0].scheduled_ns).collect();
    for pair in starts.windows(2) {
        let gap = Duration::from_nanos(pair[1] - pair[0]);
        assert!(
            (Duration::from_millis(45)..Duration::from_millis(55)).contains(&gap),
            "conversations start 50 ms apart, got {gap:?}"
        );
    }
    for turns in conversations.values() {
        for pair in turns.windows(2) {
            let ended = pair[0].end_ns.expect("ended");
            let think = Duration::from_nanos(pair[1].scheduled_ns - ended);
            assert!(
                (Duration::from_millis(100)..Duration::from_millis(105)).contains(&think),
                "think time {think:?}"
            );
            let lag = pair[1].lag_ms().expect("sent");
            assert!(lag < 5.0, "sent {lag} ms after its instant");
        }
    }
    assert!(m.client_lag_ms.is_some());
}
