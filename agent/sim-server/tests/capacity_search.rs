//! The capacity search's core (`evalctl_results::search`, `evalctl_results::probe`) against
//! the simulated server over real HTTP: each probe a real rate step judged on its records,
//! the result checked against a dense sweep of the same server judged the same way. A test
//! binary of its own: its probes time a queue, which a busy core would disturb.

use evalctl_loadgen::dataset::{self, DatasetPlan, LengthFilter};
use evalctl_loadgen::{Api, Arrival, Dataset, DatasetSource, Load, StepPlan, Stop, run_step};
use evalctl_results::Slo;
use evalctl_results::probe::{self, Goal};
use evalctl_results::search::{self, Probe, SearchAxis, SearchSpec, SearchStep, StopReason};
use evalctl_sim_server::{LatencyModel, SimConfig, SimServer};

/// Two sequences at once, 8 output tokens of 4 ms: a request holds a slot for about 34 ms,
/// so the server completes about 59 requests/s and queues what comes faster.
fn server() -> SimConfig {
    SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 40.0,
            decode_ms_per_token: 4.0,
            decode_ms_per_extra_request: 0.0,
        },
        max_num_seqs: 2,
        ..SimConfig::default()
    }
}

/// p90 TTFT within 60 ms (an idle slot answers in about 2 ms).
fn goal() -> Goal {
    Goal::Percentile {
        percentile: 90.0,
        limits: Slo {
            ttft_ms: Some(60.0),
            ..Slo::default()
        },
    }
}

/// One probe: a constant rate for about a second (at least 30 requests, so 24 in the
/// steady-state window), judged.
async fn probe(url: &str, data: &Dataset, rps: f64) -> Probe {
    let requests = rps.ceil().max(30.0) as u64;
    let plan = StepPlan::new(
        format!("{url}/v1"),
        Api::Completions,
        "evalctl-sim",
        data.clone(),
        Load::Rate {
            rps,
            arrival: Arrival::Constant,
            max_in_flight: None,
        },
        Stop::Requests(requests),
    );
    let outcome = run_step(plan, |_| {}).await.expect("probe runs");
    let judgment = probe::judge(&outcome.records, &goal(), true).expect("judged");
    Probe {
        load: rps,
        outcome: judgment.outcome,
    }
}

fn passed(p: &Probe) -> bool {
    matches!(p.outcome, search::ProbeOutcome::Pass { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_finds_the_capacity_a_dense_sweep_finds_and_says_when_it_cannot() {
    let sim = SimServer::start(server()).await.expect("sim starts");
    let url = sim.base_url();
    let data = dataset::prepare(&DatasetPlan {
        source: DatasetSource::Random {
            input_tokens: 32,
            output_tokens: 8,
        },
        count: 64,
        seed: 1,
        filter: LengthFilter::default(),
        server_url: Some(url.clone()),
        model: None,
        tokenizer_json: None,
    })
    .await
    .expect("dataset");

    // The dense sweep: 3% steps from 45 requests/s (which passes: asserted) up to the first
    // rate that fails; the capacity is the rate before it.
    let mut sweep = Vec::new();
    let mut rps: f64 = 45.0;
    while rps <= 100.0 {
        let p = probe(&url, &data, rps).await;
        let ok = passed(&p);
        sweep.push((rps, ok));
        if !ok {
            break;
        }
        rps *= 1.03;
    }
    let truth = sweep
        .iter()
        .take_while(|(_, ok)| *ok)
        .map(|(r, _)| *r)
        .last()
        .expect("the sweep's first rate passes");
    assert!(
        sweep.last().is_some_and(|(_, ok)| !ok),
        "the sweep found no failing rate: {sweep:?}"
    );

    let spec = SearchSpec {
        axis: SearchAxis::Rate,
        min: 20.0,
        max: 320.0,
        max_probes: 8,
        precision: 0.05,
        max_repeats: search::DEFAULT_MAX_REPEATS,
    };
    // The agent running the search is preempted during its fourth probe, whose result is
    // never stored; another agent resumes from the three stored probes (in whatever order
    // the store gives them) and runs that probe again, and no stored one.
    let mut probes: Vec<Probe> = Vec::new();
    let mut preempted = None;
    let verdict = loop {
        match search::next(&spec, &probes) {
            SearchStep::Probe(rps) if probes.len() == 3 && preempted.is_none() => {
                let _lost = probe(&url, &data, rps).await;
                preempted = Some(rps);
                probes.reverse();
            }
            SearchStep::Probe(rps) => {
                assert!(
                    probes.iter().all(|p| p.load != rps),
                    "{rps} was stored already: {probes:?}"
                );
                if probes.len() == 3 {
                    assert_eq!(
                        Some(rps),
                        preempted,
                        "the resumed search reruns the lost probe"
                    );
                }
                probes.push(probe(&url, &data, rps).await);
            }
            SearchStep::Done(verdict) => break verdict,
        }
    };
    assert!(preempted.is_some(), "the search was preempted");
    let sequence: Vec<String> = probes
        .iter()
        .map(|p| format!("{:.1}{}", p.load, if passed(p) { "✓" } else { "✗" }))
        .collect();
    eprintln!(
        "dense sweep capacity {truth:.1} rps ({} probes); search: {verdict:?} via {}",
        sweep.len(),
        sequence.join(" ")
    );
    assert_eq!(
        verdict.stopped,
        StopReason::PrecisionReached,
        "{sequence:?}"
    );
    let found = verdict.capacity.expect("a capacity");
    // Within the search's precision of the sweep's answer, give or take one sweep step
    // (the sweep's own resolution).
    assert!(
        found >= truth / (1.05 * 1.03) && found <= truth * 1.05 * 1.03,
        "search found {found:.1}, the sweep {truth:.1}: {sequence:?}"
    );
    // 1 + ceil(log2(ln 16 / ln 1.05)) = 7 probes at most for 20..320 at 5%.
    assert!(verdict.probes <= 7, "{sequence:?}");
    sim.shutdown().await.expect("sim stops");

    // A server too slow for the goal at `min` (32 prompt tokens at 2.5 ms: 80 ms to the first
    // token): the search says so after one probe, with no capacity.
    let slow = SimServer::start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 2500.0,
            ..server().latency
        },
        ..server()
    })
    .await
    .expect("sim starts");
    let verdict = run_search(&slow.base_url(), &data, &spec).await;
    assert_eq!(
        (
            verdict.capacity,
            verdict.first_failing,
            verdict.probes,
            verdict.stopped
        ),
        (None, Some(20.0), 1, StopReason::LowestFails)
    );
    slow.shutdown().await.expect("sim stops");

    // A server with room for all of it (64 slots, 1 ms a token): `max` passes, and the
    // search says the capacity is at least `max`.
    let roomy = SimServer::start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 20.0,
            decode_ms_per_token: 1.0,
            decode_ms_per_extra_request: 0.0,
        },
        max_num_seqs: 64,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts");
    let verdict = run_search(&roomy.base_url(), &data, &spec).await;
    assert_eq!(
        (verdict.capacity, verdict.stopped),
        (Some(320.0), StopReason::HighestPasses),
        "{verdict:?}"
    );
    assert!(verdict.probes <= 8, "{verdict:?}");
    roomy.shutdown().await.expect("sim stops");
}

/// A whole search against the server at `url`.
async fn run_search(url: &str, data: &Dataset, spec: &SearchSpec) -> search::SearchVerdict {
    let mut probes: Vec<Probe> = Vec::new();
    loop {
        match search::next(spec, &probes) {
            SearchStep::Probe(rps) => probes.push(probe(url, data, rps).await),
            SearchStep::Done(verdict) => return verdict,
        }
    }
}
