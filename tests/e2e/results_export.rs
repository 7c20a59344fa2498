//! `evalctl export`: step and request rows checked against the coordinator's SQLite file,
//! opened read-only, and the three formats against each other; Parquet read back with its
//! schema.

use std::collections::HashMap;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType as T, Schema};
use evalctl_tests::{CoordinatorProcess, evalctl, json_stdout};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::results_fixture::{parse_csv, run_local_ok, stderr};

/// One simulated model on a fake H100 (so steps carry synthetic GPU telemetry), two load
/// points; a price so the cost column is filled.
const MATRIX: &str = r#"
campaign: export-e2e
models:
  - { name: sim-1b, path: sim-1b, params_b: 1 }
gpus:
  - { type: H100-80GB, memory_gb: 80, counts: [1], price_per_hour: 3.6 }
frameworks:
  - name: sim
quantizations:
  - { name: bf16, bits: 16 }
workloads:
  - name: chat
    api: chat
    dataset: { kind: random, input_tokens: 32, output_tokens: 8 }
    load: { concurrency: [1, 4] }
    requests: 12
    warmup: 2
    slo: { ttft_ms: 500, tpot_ms: 50 }
include:
  - { model: sim-1b, extra_args: --decode-ms-per-token 2 --prefill-us-per-token 20 }
"#;

/// A stored step result as the database holds it.
struct Stored {
    result: Value,
    agent_id: String,
    attempt: i64,
    finished_at_ms: i64,
    records: i64,
}

fn stored_results(database: &Path) -> HashMap<String, Stored> {
    let conn =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the coordinator database read-only");
    let mut stmt = conn
        .prepare(
            "SELECT r.step_id, r.result_json, r.agent_id, r.attempt, r.finished_at_ms,
                    COALESCE((SELECT SUM(record_count) FROM request_records q
                              WHERE q.result_id = r.result_id), 0)
             FROM step_results r",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |row| {
            let json: String = row.get(1)?;
            Ok((
                row.get::<_, String>(0)?,
                Stored {
                    result: serde_json::from_str(&json).expect("stored result is JSON"),
                    agent_id: row.get(2)?,
                    attempt: row.get(3)?,
                    finished_at_ms: row.get(4)?,
                    records: row.get(5)?,
                },
            ))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(path)
        .expect("read the JSON Lines export")
        .lines()
        .map(
            |line| match serde_json::from_str(line).expect("a JSON line") {
                Value::Object(map) => map,
                other => panic!("not an object: {other}"),
            },
        )
        .collect()
}

fn read_parquet(path: &Path) -> (Schema, Vec<RecordBatch>) {
    let file = std::fs::File::open(path).expect("open the Parquet export");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("a Parquet file");
    let schema = builder.schema().as_ref().clone();
    let batches = builder
        .build()
        .expect("reader")
        .map(|b| b.expect("a record batch"))
        .collect();
    (schema, batches)
}

fn f64_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn export(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    all.push("--json");
    json_stdout(&evalctl(Some(url), &all))
}

/// numpy's default percentile (linear between closest ranks), as docs/metrics.md.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q / 100.0;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - h.floor()) * (sorted[hi] - sorted[lo])
}

#[test]
fn exports_match_the_store_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    run_local_ok(
        dir.path(),
        "export.yaml",
        MATRIX,
        &["--gpus", "H100-80GB:1"],
    );
    let stored = stored_results(&dir.path().join("coordinator.sqlite"));
    assert_eq!(stored.len(), 2, "two steps stored");
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    // Steps, JSON Lines: one row per stored step, every figure as stored.
    let jsonl = dir.path().join("steps.jsonl");
    let summary = export(&url, &["export-e2e", "-o", jsonl.to_str().unwrap()]);
    assert_eq!(summary["rows"], 2, "{summary}");
    assert_eq!(summary["format"], "jsonl");
    let rows = read_jsonl(&jsonl);
    assert_eq!(rows.len(), stored.len());
    for row in &rows {
        let step_id = row["step_id"].as_str().expect("step_id");
        let s = &stored[step_id];
        let m = &s.result["metrics"];
        let t = &s.result["telemetry"];
        assert_eq!(row["campaign"], "export-e2e");
        assert_eq!(row["model"], "sim-1b");
        assert_eq!(row["gpu_type"], "H100-80GB");
        assert_eq!(row["gpu_count"], 1);
        assert_eq!(row["framework"], "sim");
        assert_eq!(row["quantization"], "bf16");
        assert_eq!(row["workload"], "chat");
        assert_eq!(row["dataset_input_tokens"], 32);
        assert_eq!(row["slo_ttft_ms"], 500.0);
        assert_eq!(row["step_label"], s.result["step_label"]);
        assert_eq!(row["simulated"], true);
        assert_eq!(row["agent_id"], s.agent_id.as_str());
        assert_eq!(row["attempt"], s.attempt);
        assert_eq!(row["finished_at_ms"], s.finished_at_ms);
        assert!(
            row["extra_args"]
                .as_str()
                .unwrap()
                .contains("--decode-ms-per-token 2")
        );
        for (column, stored) in [
            ("completed", &m["completed"]),
            ("failed", &m["failed"]),
            ("total_output_tokens", &m["total_output_tokens"]),
            ("warmup_excluded", &m["warmup_excluded"]),
        ] {
            assert_eq!(&row[column], stored, "{column} of {step_id}");
        }
        for (column, stored) in [
            (
                "output_token_throughput_tok_s",
                &m["output_token_throughput"],
            ),
            ("request_throughput_rps", &m["request_throughput"]),
            ("goodput_rps", &m["goodput"]),
            ("ttft_p50_ms", &m["ttft_ms"]["p50"]),
            ("ttft_p90_ms", &m["ttft_ms"]["p90"]),
            ("tpot_p99_ms", &m["tpot_ms"]["p99"]),
            ("itl_mean_ms", &m["itl_ms"]["mean"]),
            ("e2el_max_ms", &m["e2el_ms"]["max"]),
            ("duration_s", &m["duration_s"]),
            ("energy_j", &t["energy_j"]),
            ("mean_power_w", &t["mean_power_w"]),
            ("joules_per_output_token", &t["joules_per_output_token"]),
        ] {
            let (got, want) = (row[column].as_f64(), stored.as_f64());
            assert!(
                got.zip(want).is_some_and(|(a, b)| f64_close(a, b)),
                "{column} of {step_id}: exported {got:?}, stored {want:?}"
            );
        }
        // Derived: 3.6 per GPU-hour, 1 GPU.
        let tput = m["output_token_throughput"].as_f64().unwrap();
        let cost = row["cost_per_million_output_tokens"].as_f64().unwrap();
        assert!(f64_close(cost, 3.6 / 3600.0 / tput * 1e6), "{cost}");
        assert_eq!(row["telemetry_source"], "simulated");
    }

    // CSV: the same columns and cells.
    let csv = dir.path().join("steps.csv");
    export(&url, &["export-e2e", "-o", csv.to_str().unwrap()]);
    let records = parse_csv(&std::fs::read_to_string(&csv).unwrap());
    let header = &records[0];
    // JSON objects parse into sorted maps here: compare the names as sets, and the order
    // through the first line's text and the Parquet schema below.
    let mut keys: Vec<&String> = rows[0].keys().collect();
    let mut sorted_header: Vec<&String> = header.iter().collect();
    sorted_header.sort();
    keys.sort();
    assert_eq!(sorted_header, keys, "CSV header");
    let first_line = std::fs::read_to_string(&jsonl).unwrap();
    assert!(
        first_line.starts_with(r#"{"campaign":"export-e2e","campaign_id":""#),
        "{first_line:.80}"
    );
    assert_eq!(records.len(), rows.len() + 1);
    for (record, row) in records[1..].iter().zip(&rows) {
        for (name, cell) in header.iter().zip(record) {
            match &row[name] {
                Value::Null => assert_eq!(cell, "", "{name}"),
                Value::String(s) => assert_eq!(cell, s, "{name}"),
                Value::Bool(b) => assert_eq!(cell, &b.to_string(), "{name}"),
                Value::Number(n) => assert!(
                    f64_close(cell.parse().expect("a number"), n.as_f64().unwrap()),
                    "{name}: {cell} vs {n}"
                ),
                other => panic!("{name}: unexpected {other}"),
            }
        }
    }

    // Parquet: typed columns, the same rows.
    let pq = dir.path().join("steps.parquet");
    export(&url, &["export-e2e", "-o", pq.to_str().unwrap()]);
    let (schema, batches) = read_parquet(&pq);
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, header.iter().map(|k| k.as_str()).collect::<Vec<_>>());
    for (column, want) in [
        ("step_id", T::Utf8),
        ("gpu_count", T::UInt64),
        ("ttft_p90_ms", T::Float64),
        ("finished_at_ms", T::Int64),
        ("simulated", T::Boolean),
        ("energy_j", T::Float64),
    ] {
        let field = schema.field_with_name(column).expect("column present");
        assert_eq!(field.data_type(), &want, "{column}");
    }
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(total, rows.len());
    let batch = &batches[0];
    let col = |name: &str| batch.column(schema.index_of(name).unwrap()).clone();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(col("step_id").as_string::<i32>().value(i), row["step_id"]);
        assert_eq!(
            col("completed").as_primitive::<UInt64Type>().value(i),
            row["completed"].as_u64().unwrap()
        );
        assert_eq!(
            col("ttft_p90_ms").as_primitive::<Float64Type>().value(i),
            row["ttft_p90_ms"].as_f64().unwrap()
        );
        assert_eq!(
            col("finished_at_ms").as_primitive::<Int64Type>().value(i),
            row["finished_at_ms"].as_i64().unwrap()
        );
        assert!(col("ttfa_p50_ms").is_null(i), "no reasoning, no TTFA");
    }

    // Requests: one row per stored record; measured TTFTs give the stored percentiles.
    let requests = dir.path().join("requests.jsonl");
    let summary = export(
        &url,
        &["export-e2e", "--requests", "-o", requests.to_str().unwrap()],
    );
    let request_rows = read_jsonl(&requests);
    let stored_records: i64 = stored.values().map(|s| s.records).sum();
    assert_eq!(request_rows.len() as i64, stored_records);
    assert_eq!(summary["rows"], stored_records);
    assert_eq!(summary["rows_kind"], "requests");
    for (step_id, s) in &stored {
        let mine: Vec<_> = request_rows
            .iter()
            .filter(|r| r["step_id"] == step_id.as_str())
            .collect();
        assert_eq!(mine.len() as i64, s.records, "records of {step_id}");
        assert_eq!(mine.iter().filter(|r| r["warmup"] == true).count(), 2);
        let mut ttft: Vec<f64> = mine
            .iter()
            .filter(|r| r["warmup"] == false && r["error_kind"].is_null())
            .map(|r| r["ttft_ms"].as_f64().expect("ttft"))
            .collect();
        ttft.sort_by(f64::total_cmp);
        let stored_p90 = s.result["metrics"]["ttft_ms"]["p90"].as_f64().unwrap();
        assert!(
            f64_close(percentile(&ttft, 90.0), stored_p90),
            "TTFT p90 of {step_id} from the request rows"
        );
    }
    let requests_pq = dir.path().join("requests.parquet");
    export(
        &url,
        &[
            "export-e2e",
            "--requests",
            "-o",
            requests_pq.to_str().unwrap(),
        ],
    );
    let (schema, batches) = read_parquet(&requests_pq);
    assert_eq!(
        schema.field_with_name("sent_ns").unwrap().data_type(),
        &T::UInt64
    );
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(total as i64, stored_records);

    // Errors name what failed: an unknown campaign exits 4, an unwritable path names it.
    let missing = evalctl(Some(&url), &["export", "nope", "-o", "/tmp/x.csv"]);
    assert_eq!(missing.status.code(), Some(4), "{}", stderr(&missing));
    let bad = evalctl(
        Some(&url),
        &["export", "export-e2e", "-o", "/nonexistent-dir/x.csv"],
    );
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("/nonexistent-dir/x.csv"),
        "{}",
        stderr(&bad)
    );
    let unknown = evalctl(Some(&url), &["export", "export-e2e", "-o", "x.xlsx"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}
