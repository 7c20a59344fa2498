//! Benchmark: expand a 100,000-unit matrix and insert the campaign into a fresh SQLite
//! store. Target (DESIGN.md, issue "control plane"): under 2 s together on a 2-core machine.
//!
//! Run with `cargo bench -p evalctl-coordinator --bench expand_insert`. Prints one line per
//! phase and the total; `--units N` changes the size (rounded to the matrix shape).

use std::fmt::Write as _;
use std::time::Instant;

use evalctl_coordinator::matrix;
use evalctl_coordinator::store::Store;

/// Builds a matrix of `models × 10 GPU types × 4 counts × 5 frameworks × 5 quantizations`
/// units, each with 2 steps (one workload, two concurrency points).
fn matrix_yaml(models: usize) -> String {
    let mut y = String::from("campaign: bench-100k\nrepeats: 1\nmodels:\n");
    for m in 0..models {
        writeln!(
            y,
            "  - {{ name: model-{m}, path: org/model-{m}, params_b: 1.0 }}"
        )
        .unwrap();
    }
    y.push_str("gpus:\n");
    for g in 0..10 {
        writeln!(
            y,
            "  - {{ type: GPU{g}-80GB, memory_gb: 80, counts: [1, 2, 4, 8] }}"
        )
        .unwrap();
    }
    y.push_str("frameworks:\n");
    for f in 0..5 {
        writeln!(
            y,
            "  - {{ name: fw{f}, command: \"server-{f} --model {{model.path}} --port {{port}} --tp {{gpu.count}} {{quant.args}}\", health: /health }}"
        )
        .unwrap();
    }
    y.push_str("quantizations:\n");
    for q in 0..5 {
        writeln!(y, "  - {{ name: q{q}, bits: 16 }}").unwrap();
    }
    y.push_str(
        "workloads:\n  - name: chat\n    api: chat\n    dataset: { kind: random, input_tokens: 512, output_tokens: 128 }\n    load: { concurrency: [1, 16] }\n    requests: 100\n",
    );
    y
}

fn main() {
    let units: usize = std::env::args()
        .skip_while(|a| a != "--units")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let models = units.div_ceil(10 * 4 * 5 * 5);
    let yaml = matrix_yaml(models);

    let started = Instant::now();
    let expansion = matrix::expand_str("bench.yaml", &yaml).expect("bench matrix expands");
    let expand_time = started.elapsed();

    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let store = runtime
        .block_on(Store::open(&dir.path().join("bench.sqlite")))
        .expect("open store");
    let started = Instant::now();
    let outcome = runtime
        .block_on(store.submit(&expansion, &yaml, "bench"))
        .expect("insert campaign");
    let insert_time = started.elapsed();

    assert_eq!(outcome.units_added as usize, expansion.units.len());
    println!(
        "matrix: {} units, {} steps ({} bytes of YAML)",
        expansion.units.len(),
        expansion.step_count(),
        yaml.len()
    );
    println!("expand: {:>8.3} s", expand_time.as_secs_f64());
    println!("insert: {:>8.3} s", insert_time.as_secs_f64());
    println!(
        "total:  {:>8.3} s (target < 2 s)",
        (expand_time + insert_time).as_secs_f64()
    );
}
