//! The JSON shape of each schema version, pinned.
//!
//! `schema/v{major}.{minor}.json` holds the step document, environment and request record of
//! that version, every field set. The current version's file must equal what this build
//! writes: a change to a field's name, type or presence without a version bump fails here.
//! Every older file must still be read by this build (same major version). To add a version,
//! bump `STEP_DOCUMENT_SCHEMA_MINOR` (an optional field added) or `STEP_DOCUMENT_SCHEMA` (a
//! field changed or removed), then write its file with `EVALCTL_BLESS=1 cargo test -p
//! evalctl-results --test schema`, and add a line to the version table in `document.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use evalctl_results::Slo;
use evalctl_results::document::{ProbeFacts, RunSummary, SearchFacts};
use evalctl_results::probe::{Goal, ProbeJudgment, Tally};
use evalctl_results::search::{
    Probe, ProbeOutcome, SearchAxis, SearchSpec, SearchVerdict, StopReason,
};
use evalctl_results::settle::ProbeRun;
use evalctl_results::{
    EnergyMethod, Environment, ErrorKind, GpuDevice, GpuSummary, HostSummary, LagSummary,
    RequestError, RequestRecord, STEP_DOCUMENT_SCHEMA, SchemaVersion, SeriesKind, SeriesSummary,
    ServerMetricsSummary, StepDocument, StepMetrics, Summary, TelemetrySummary, TokenSource,
    Tokenization, check_step_document,
};
use evalctl_results::{
    LengthReport, PrefixCacheFacts, PrefixCachePolicy, TurnFigures, TurnMetrics, WorkloadFacts,
};
use serde_json::{Value, json};

fn summary(base: f64) -> Summary {
    Summary {
        mean: base,
        p50: base,
        p90: base + 1.0,
        p95: base + 2.0,
        p99: base + 3.0,
        max: base + 4.0,
    }
}

fn turn_figures(turn: u32, ttft: f64) -> TurnFigures {
    TurnFigures {
        turn,
        requests: 8,
        mean_input_tokens: 300.0,
        ttft_ms: Some(summary(ttft)),
        itl_ms: Some(summary(9.0)),
    }
}

/// A step document with every field set.
fn full_document() -> StepDocument {
    let current = SchemaVersion::CURRENT;
    StepDocument {
        schema: current.major,
        schema_minor: current.minor,
        simulated: false,
        step_label: "chat @ c=8 #0".into(),
        metrics: Some(StepMetrics {
            ttft_ms: Some(summary(100.0)),
            tpot_ms: Some(summary(10.0)),
            itl_ms: Some(summary(9.0)),
            e2el_ms: Some(summary(2000.0)),
            ttfa_ms: Some(summary(300.0)),
            request_throughput: 4.0,
            output_token_throughput: 800.0,
            total_token_throughput: 1200.0,
            goodput: Some(3.5),
            interactivity_tok_s: Some(100.0),
            completed: 99,
            failed: 1,
            errors: BTreeMap::from([(ErrorKind::Stall, 1)]),
            duration_s: 25.0,
            total_input_tokens: 9900,
            total_output_tokens: 19800,
            reasoning_tokens: Some(9900),
            answer_tokens: Some(9900),
            output_tokens_from_usage: 99,
            output_tokens_counted: 0,
            warmup_excluded: 10,
            client_lag_ms: Some(LagSummary {
                p50: 0.1,
                p99: 0.5,
                max: 1.0,
            }),
            client_fell_behind: false,
            turns: Some(TurnMetrics {
                conversations: 8,
                mean_turns: 3.5,
                first: turn_figures(1, 40.0),
                later: Some(turn_figures(2, 12.0)),
                by_position: vec![turn_figures(1, 40.0), turn_figures(2, 12.0)],
            }),
        }),
        harness_metrics: BTreeMap::from([("accuracy".to_owned(), json!(0.75))]),
        scores: vec![evalctl_results::Score {
            name: "gsm8k/exact_match,strict-match".into(),
            value: 0.62,
            stderr: Some(0.013),
            samples: Some(1319),
            higher_is_better: true,
        }],
        tokenization: Some(Tokenization::ServerTokenize),
        connections_opened: 8,
        served_model: "llama".into(),
        started_at_ms: 1_700_000_000_000,
        finished_at_ms: 1_700_000_025_000,
        telemetry: Some(TelemetrySummary {
            source: "nvml".into(),
            rate_hz: 10.0,
            duration_s: 25.0,
            gpu_count: 1,
            rounds: 250,
            energy_j: Some(10_000.0),
            energy_method: Some(EnergyMethod::Counter),
            mean_power_w: Some(400.0),
            max_power_w: Some(650.0),
            mean_sm_util_pct: Some(90.0),
            peak_mem_used_mib: Some(70_000),
            max_temperature_c: Some(70),
            throttle_reasons_seen: Some(vec!["sw_power_cap".into()]),
            throttled: Some(true),
            power_valid: Some(true),
            joules_per_output_token: Some(0.5),
            output_tok_s_per_kw: Some(2000.0),
            output_tok_s_per_gpu: Some(800.0),
            gpus: vec![GpuSummary {
                gpu: 0,
                samples: 250,
                energy_j: Some(10_000.0),
                energy_method: Some(EnergyMethod::Counter),
                energy_integrated_j: Some(10_050.0),
                counter_resets: 1,
                mean_power_w: Some(400.0),
                max_power_w: Some(650.0),
                mean_sm_util_pct: Some(90.0),
                mean_mem_util_pct: Some(60.0),
                peak_mem_used_mib: Some(70_000),
                max_temperature_c: Some(70),
                min_sm_clock_mhz: Some(1500),
                throttle_reasons_seen: Some(vec!["sw_power_cap".into()]),
                throttled: Some(true),
                xid_errors: Some(0),
                ecc_corrected: Some(0),
                ecc_uncorrected: Some(0),
                max_gap_ms: Some(120),
                power_valid: Some(true),
            }],
            host: Some(HostSummary {
                mean_cpu_pct: Some(20.0),
                max_cpu_pct: Some(40.0),
                peak_mem_used_mib: Some(10_000),
                mem_total_mib: Some(500_000),
                max_load_1m: Some(3.0),
            }),
            server: Some(ServerMetricsSummary {
                url: "http://127.0.0.1:8000/metrics".into(),
                scrapes: 25,
                failed_scrapes: 1,
                series: BTreeMap::from([
                    (
                        "vllm:kv_cache_usage_perc".to_owned(),
                        SeriesSummary {
                            kind: SeriesKind::Gauge,
                            scrapes: 25,
                            mean: Some(0.4),
                            max: Some(0.8),
                            delta: None,
                        },
                    ),
                    (
                        "vllm:generation_tokens_total".to_owned(),
                        SeriesSummary {
                            kind: SeriesKind::Counter,
                            scrapes: 25,
                            mean: None,
                            max: None,
                            delta: Some(19_800.0),
                        },
                    ),
                ]),
            }),
            raw_downsample: 2,
        }),
        workload: Some(WorkloadFacts {
            dataset: "shared_prefix".into(),
            lengths: Some(LengthReport {
                target: 512,
                suffix_target: Some(64),
                texts: 108,
                missed: 1,
                max_miss: 1,
            }),
            prefix_cache: Some(PrefixCacheFacts {
                policy: PrefixCachePolicy::Reset,
                reset_by: Some("/reset_prefix_cache".into()),
                reset_refused: Some("POST /flush_cache: 404".into()),
                salted: false,
                expected_hit_rate: Some(0.82),
                server_hit_rate: Some(0.8),
                server_hit_rate_from: Some(
                    "vllm:prefix_cache_hits_total/vllm:prefix_cache_queries_total".into(),
                ),
            }),
        }),
        // A probe run's facts and a search's verdict never share a document; both are set
        // here to pin their shapes.
        probe: Some(ProbeFacts {
            search_step: "s-0123456789abcdef".into(),
            axis: SearchAxis::Rate,
            run: ProbeRun {
                load: 40.5,
                run: 1,
                judgment: ProbeJudgment {
                    outcome: ProbeOutcome::Pass { score: 0.8 },
                    window_ns: (100_000_000, 900_000_000),
                    requests: 32,
                    sent_rps: 40.1,
                    completed_rps: 39.8,
                    reason: Some("none".into()),
                    tallies: vec![Tally {
                        objective: "ttft".into(),
                        within: 31,
                        of: 32,
                    }],
                },
            },
        }),
        search: Some(SearchFacts {
            spec: SearchSpec {
                axis: SearchAxis::Rate,
                min: 1.0,
                max: 64.0,
                max_probes: 8,
                precision: 0.05,
                max_repeats: 2,
            },
            goal: Goal::Percentile {
                percentile: 90.0,
                limits: Slo {
                    ttft_ms: Some(500.0),
                    tpot_ms: Some(50.0),
                    e2el_ms: None,
                },
            },
            verdict: SearchVerdict {
                capacity: Some(40.5),
                first_failing: Some(42.0),
                probes: 7,
                runs: 8,
                stopped: StopReason::PrecisionReached,
            },
            probes: vec![Probe {
                load: 40.5,
                outcome: ProbeOutcome::Inconclusive { score: Some(1.01) },
            }],
            runs: vec![RunSummary {
                step_id: "s-0123456789abcdef~rate=40.5#1".into(),
                load: 40.5,
                run: 1,
                outcome: ProbeOutcome::Fail { score: None },
            }],
        }),
    }
}

/// An environment with every field set.
fn full_environment() -> Environment {
    Environment {
        host: "gpu-1.lab".into(),
        agent_id: "a-1".into(),
        agent_version: "0.1.0".into(),
        gpus: vec![GpuDevice {
            index: 0,
            uuid: "GPU-0".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            gpu_type: "H100-80GB".into(),
            memory_gb: 80.0,
        }],
        gpu_source: "nvml".into(),
        driver_version: Some("560.35".into()),
        cuda_version: Some("12.6".into()),
        framework: "vllm".into(),
        framework_version: Some("0.32.0".into()),
        launch_command: "vllm serve m --port 8000".into(),
        image: Some("vllm/vllm-openai:v0.32.0".into()),
        image_id: Some("sha256:5a92d9d49ae0".into()),
        image_digest: Some("sha256:b459680e1084".into()),
        container_runtime: Some("podman 4.3.1".into()),
        cuda_visible_devices: Some("0".into()),
        os: "linux x86_64".into(),
        cpus: 64,
        server_start: Some(evalctl_results::ServerStart {
            started_at_ms: 1_700_000_000_000,
            listening_s: Some(2.5),
            weights_loaded_s: Some(41.0),
            ready_s: 63.2,
            reused: false,
        }),
    }
}

/// A request record with every field set.
fn full_record() -> RequestRecord {
    RequestRecord {
        index: 3,
        warmup: false,
        prompt_index: 1,
        scheduled_ns: 10,
        sent_ns: Some(20),
        token_ns: vec![100, 110],
        first_answer_ns: Some(105),
        end_ns: Some(120),
        input_tokens: 12,
        server_prompt_tokens: Some(13),
        output_tokens: 2,
        output_tokens_source: Some(TokenSource::Usage),
        reasoning_tokens: Some(1),
        reused_connection: true,
        http_status: Some(200),
        server_request_id: Some("cmpl-1".into()),
        error: Some(RequestError {
            kind: ErrorKind::Truncated,
            message: "no [DONE]".into(),
        }),
        conversation: Some(2),
        turn: Some(3),
    }
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

fn written_now() -> Value {
    json!({
        "step_document": full_document(),
        "environment": full_environment(),
        "request_record": full_record(),
    })
}

#[test]
fn the_current_version_has_the_pinned_shape() {
    let version = SchemaVersion::CURRENT;
    let path = snapshot_dir().join(format!("v{version}.json"));
    let now = written_now();
    if std::env::var_os("EVALCTL_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&now).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let pinned: Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(err) => panic!(
            "no snapshot of schema {version} at {} ({err}): bump the version you meant to, \
             then write it with EVALCTL_BLESS=1",
            path.display()
        ),
    };
    assert!(
        pinned == now,
        "the JSON this build writes differs from the snapshot of schema {version} ({}): bump \
         STEP_DOCUMENT_SCHEMA_MINOR for an added optional field or STEP_DOCUMENT_SCHEMA for a \
         changed or removed one, and write the new version's snapshot; never edit an old one.\n\
         written now:\n{}",
        path.display(),
        serde_json::to_string_pretty(&now).unwrap()
    );
}

#[test]
fn every_pinned_version_of_this_major_is_still_read() {
    let mut seen = 0;
    for entry in std::fs::read_dir(snapshot_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (major, _minor) = name
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .unwrap_or_else(|| panic!("{}: expected vMAJOR.MINOR.json", path.display()));
        if major.parse::<u32>().unwrap() != STEP_DOCUMENT_SCHEMA {
            continue;
        }
        let pinned: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let document = pinned["step_document"].to_string();
        let version =
            check_step_document(&document).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        assert_eq!(format!("v{version}"), name);
        let read: StepDocument = serde_json::from_str(&document).unwrap();
        assert_eq!(read.version(), version);
        serde_json::from_value::<Environment>(pinned["environment"].clone())
            .unwrap_or_else(|e| panic!("{}: environment: {e}", path.display()));
        serde_json::from_value::<RequestRecord>(pinned["request_record"].clone())
            .unwrap_or_else(|e| panic!("{}: request record: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2, "the 1.0 and current snapshots are both read");
}

#[test]
fn a_newer_minor_version_is_accepted_with_its_unknown_fields() {
    let mut value = serde_json::to_value(full_document()).unwrap();
    value["schema_minor"] = json!(SchemaVersion::CURRENT.minor + 1);
    value["prefix_cache_hit_rate"] = json!(0.9);
    value["metrics"]["ttft_ms"]["p999"] = json!(500.0);
    let text = value.to_string();
    let version = check_step_document(&text).unwrap();
    assert_eq!(version.minor, SchemaVersion::CURRENT.minor + 1);
    let read: StepDocument = serde_json::from_str(&text).unwrap();
    assert_eq!(read.step_label, "chat @ c=8 #0");
}

#[test]
fn another_major_version_or_a_wrong_shape_is_refused() {
    let mut value = serde_json::to_value(full_document()).unwrap();
    value["schema"] = json!(STEP_DOCUMENT_SCHEMA + 1);
    let err = check_step_document(&value.to_string()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to accept a step document of schema {}.{}: this build reads schema {}.x \
             only (hint: upgrade the coordinator first, then the agents)",
            STEP_DOCUMENT_SCHEMA + 1,
            SchemaVersion::CURRENT.minor,
            STEP_DOCUMENT_SCHEMA
        )
    );

    let mut value = serde_json::to_value(full_document()).unwrap();
    value["metrics"]["ttft_ms"]["p99"] = json!("slow");
    let err = check_step_document(&value.to_string()).unwrap_err();
    assert!(
        err.to_string()
            .contains("field `metrics.ttft_ms.p99` does not match the schema"),
        "{err}"
    );

    for text in ["", "[]", "{\"metrics\": {}}", "{\"schema\": \"1\"}"] {
        let err = check_step_document(text).unwrap_err();
        assert!(
            err.to_string().contains("schema version"),
            "{text:?}: {err}"
        );
    }
}
