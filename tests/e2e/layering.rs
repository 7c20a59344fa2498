//! The crate layout's invariants (docs/ARCHITECTURE.md, "Crates and who may depend on whom"),
//! read from `cargo metadata` and the sources, so a new dependency that breaks one fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use evalctl_tests::workspace_root;
use serde_json::Value;

/// The host's target triple, as rustc names it.
fn host_triple() -> String {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// Normal (non-dev, non-build) dependency edges of every package built for this host, by
/// package name. Offline: everything it needs was downloaded to build the tests.
fn normal_edges() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|dep| names[dep["pkg"].as_str().unwrap()].to_owned())
                .collect();
            (names[node["id"].as_str().unwrap()].to_owned(), deps)
        })
        .collect()
}

/// Every package `root` reaches through normal dependencies, itself excluded.
fn reaches(edges: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        for dep in edges.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

fn evalctl_deps(edges: &BTreeMap<String, BTreeSet<String>>, krate: &str) -> Vec<String> {
    edges[krate]
        .iter()
        .filter(|d| d.starts_with("evalctl"))
        .cloned()
        .collect()
}

#[test]
fn crates_depend_only_on_the_crates_the_architecture_allows() {
    let edges = normal_edges();
    let allowed: &[(&str, &[&str])] = &[
        ("evalctl-proto", &[]),
        ("evalctl-results", &[]),
        ("evalctl-common", &[]),
        ("evalctl-tokenizer", &[]),
        ("evalctl-loadgen", &["evalctl-results", "evalctl-tokenizer"]),
        ("evalctl-telemetry", &["evalctl-common", "evalctl-results"]),
        ("evalctl-sim-server", &["evalctl-tokenizer"]),
        (
            "evalctl-agent",
            &[
                "evalctl-common",
                "evalctl-loadgen",
                "evalctl-proto",
                "evalctl-results",
                "evalctl-sim-server",
                "evalctl-telemetry",
            ],
        ),
        (
            "evalctl-coordinator",
            &["evalctl-common", "evalctl-proto", "evalctl-results"],
        ),
        (
            "evalctl-gpu-proof",
            &[
                "evalctl-common",
                "evalctl-results",
                "evalctl-sim-server",
                "evalctl-telemetry",
            ],
        ),
        (
            "evalctl",
            &[
                "evalctl-agent",
                "evalctl-coordinator",
                "evalctl-loadgen",
                "evalctl-proto",
                "evalctl-results",
            ],
        ),
    ];
    for (krate, deps) in allowed {
        assert_eq!(
            evalctl_deps(&edges, krate),
            *deps,
            "evalctl crates {krate} depends on"
        );
    }
}

#[test]
fn the_load_generator_links_no_simulator_nvml_web_server_or_sqlite() {
    let edges = normal_edges();
    let reached = reaches(&edges, "evalctl-loadgen");
    for banned in [
        "evalctl-sim-server",
        "nvml-wrapper",
        "axum",
        "rusqlite",
        "libsqlite3-sys",
    ] {
        assert!(
            !reached.contains(banned),
            "evalctl-loadgen reaches {banned}"
        );
    }
    // Its dev-dependencies too: its tests stand alone.
    let manifest =
        std::fs::read_to_string(workspace_root().join("agent/loadgen/Cargo.toml")).unwrap();
    assert!(!manifest.contains("sim-server"), "{manifest}");
}

#[test]
fn results_readers_in_ctl_use_no_agent_code() {
    let commands = workspace_root().join("ctl/src");
    let mut offenders = Vec::new();
    visit(&commands, &mut |path, text| {
        let local = path.ends_with("commands/local.rs");
        // What the agent would launch (rendered commands, the preflight), not what it
        // measured.
        let plan = path.ends_with("commands/plan.rs");
        if !local && !plan && text.contains("evalctl_agent") {
            offenders.push(path.display().to_string());
        }
        let bench = path.ends_with("commands/bench.rs");
        if !bench && !local && text.contains("evalctl_loadgen") {
            offenders.push(format!(
                "{} (the load generator is for bench)",
                path.display()
            ));
        }
    });
    assert!(offenders.is_empty(), "{offenders:?}");
}

#[test]
fn coordinator_and_agent_meet_only_on_the_wire() {
    let edges = normal_edges();
    let coordinator = reaches(&edges, "evalctl-coordinator");
    for agent_part in [
        "evalctl-agent",
        "evalctl-loadgen",
        "evalctl-telemetry",
        "evalctl-sim-server",
    ] {
        assert!(
            !coordinator.contains(agent_part),
            "coordinator reaches {agent_part}"
        );
    }
    assert!(!reaches(&edges, "evalctl-agent").contains("evalctl-coordinator"));
}

fn visit(dir: &Path, f: &mut impl FnMut(&Path, &str)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, f);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            f(&path, &text);
        }
    }
}
