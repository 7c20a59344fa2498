//! scripts/gpu-proof.sh, the GPU proof, run whole on this machine: without a GPU it must
//! say so and do nothing else; on the named fake driver libraries (tests/fakes, one fake
//! H100 whose NVML readings follow the fake CUDA's kernel launches) every phase runs — the
//! NVML check, the proof campaign through `evalctl local` with the agent leasing the GPU,
//! the CUDA load server, the summary — and the summary's figures and checks are verified.

use std::path::Path;
use std::process::{Command, Output};

use evalctl_tests::{FakeGpu, binary, workspace_root};
use serde_json::Value;

/// Runs the script into `out` with `env` and a short load step, from a directory that
/// holds only the two binaries the bundle carries (hard links to the workspace's), with
/// no cargo directories on `PATH`: what a GPU machine is lent with.
fn proof(out: &Path, env: &[(&'static str, std::ffi::OsString)]) -> Output {
    let bin_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for program in ["evalctl", "evalctl-gpu-proof"] {
        std::fs::hard_link(binary(program), bin_dir.path().join(program)).unwrap();
    }
    Command::new(workspace_root().join("scripts/gpu-proof.sh"))
        .arg(out)
        .env("EVALCTL_BIN_DIR", bin_dir.path())
        .env("PATH", "/usr/bin:/bin")
        .env("EVALCTL_GPU_PROOF_SECONDS", "5")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("run scripts/gpu-proof.sh")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The summary of a proof that passed, with the figures every fake-GPU run shares checked.
fn passed_summary(out: &Path, output: &Output) -> Value {
    let log = text(output);
    assert!(output.status.success(), "the proof failed:\n{log}");
    assert!(log.contains("gpu-proof: every check passed"), "{log}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
            .expect("summary is JSON");
    for check in [
        "campaign_succeeded",
        "cuda_visible_devices_reached",
        "cuda_uuid_matches_nvml",
        "memory_held_seen",
        "load_ran",
        "energy_agrees",
    ] {
        assert_eq!(summary["checks"][check], true, "{check}: {summary:#}");
    }
    assert_eq!(summary["driver_version"], "550.90.07-fake");
    assert_eq!(summary["cuda_version"], "12.4");
    let gpu = &summary["gpus"][0];
    assert_eq!(
        (gpu["name"].as_str(), gpu["gpu_type"].as_str()),
        (Some("NVIDIA H100 80GB HBM3"), Some("H100-80GB"))
    );
    // The idle check sampled at about the 20 Hz asked; the fake idles at 68 W.
    let idle = &summary["idle_check"];
    let rate = idle["samples_per_s"].as_f64().unwrap();
    assert!((15.0..=25.0).contains(&rate), "{idle}");
    assert!((idle["gpus"][0]["mean_power_w"].as_f64().unwrap() - 68.0).abs() < 1.0);
    // The load step: the agent's 10 Hz, the fake's loaded 420 W, the 1 GiB the server
    // held over the driver's 512 MiB, the power cap the fake reports under load, and the
    // energy counter agreeing with the integrated power.
    let step = &summary["campaign"]["step"];
    assert_eq!(step["source"], "nvml", "{step}");
    assert!(step["samples_per_s"].as_f64().unwrap() >= 8.0, "{step}");
    let loaded = &step["gpus"][0];
    assert!(loaded["mean_power_w"].as_f64().unwrap() > 350.0, "{loaded}");
    assert!(
        loaded["peak_mem_used_mib"].as_u64().unwrap() >= 1536,
        "{loaded}"
    );
    assert_eq!(
        loaded["throttle_reasons_seen"][0], "sw_power_cap",
        "{loaded}"
    );
    assert!(
        loaded["energy"]["difference_pct"].as_f64().unwrap().abs() < 5.0,
        "{loaded}"
    );
    // What the server's CUDA saw: the agent's CUDA_VISIBLE_DEVICES and the leased GPU.
    let cuda = &summary["server"]["cuda"];
    assert_eq!(cuda["cuda_visible_devices"], "0", "{cuda}");
    assert_eq!(cuda["cuda_device_order"], "PCI_BUS_ID", "{cuda}");
    assert_eq!(cuda["device_count"], 1, "{cuda}");
    assert!(summary["server"]["progress"]["launches"].as_u64().unwrap() > 0);
    summary
}

#[test]
fn without_a_gpu_the_proof_says_so_and_does_nothing_else() {
    if Path::new("/dev/nvidiactl").exists() {
        eprintln!("this host has an NVIDIA driver: the no-GPU path cannot be shown here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = proof(&out, &[]);
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.starts_with("no NVIDIA GPU found: "), "{log}");
    assert_eq!(log.lines().count(), 1, "it said more than that:\n{log}");
    assert!(!out.exists(), "it wrote {}", out.display());
}

#[test]
fn the_proof_runs_whole_on_the_fake_gpu() {
    let fake = FakeGpu::build();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = proof(&out, &fake.env(false));
    let summary = passed_summary(&out, &output);
    let gpu = &summary["gpus"][0];
    assert_eq!(gpu["mig_enabled"], false);
    assert_eq!(
        summary["server"]["cuda"]["uuid"], gpu["uuid"],
        "{summary:#}"
    );
    // ECC off and no XID events on the fake, as on many cloud GPUs: named, not zeros.
    let missing: Vec<&str> = gpu["fields_missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        missing,
        ["xid_errors", "last_xid", "ecc_corrected", "ecc_uncorrected"]
    );
    let step = &summary["campaign"]["step"]["gpus"][0];
    assert_eq!(step["mean_sm_util_pct"], 100.0, "{step}");
    for file in ["check.json", "matrix.yaml", "local.json", "serve.json"] {
        assert!(out.join(file).exists(), "{file} is missing");
    }
}

#[test]
fn under_mig_the_proof_matches_the_instance_and_names_what_mig_hides() {
    let fake = FakeGpu::build();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = proof(&out, &fake.env(true));
    let summary = passed_summary(&out, &output);
    let gpu = &summary["gpus"][0];
    assert_eq!(gpu["mig_enabled"], true);
    assert_eq!(
        gpu["mig_devices"][0], "MIG-fa4efa4e-0000-4000-8000-0000000000aa",
        "{gpu}"
    );
    // CUDA names the MIG instance; NVML's GPU UUID differs, its instance's matches.
    assert_eq!(
        summary["server"]["cuda"]["uuid"],
        "GPU-fa4efa4e-0000-4000-8000-0000000000aa"
    );
    let missing = gpu["fields_missing"].as_array().unwrap();
    assert!(
        missing.iter().any(|f| f == "sm_util_pct") && missing.iter().any(|f| f == "mem_util_pct"),
        "{gpu}"
    );
    assert!(summary["campaign"]["step"]["gpus"][0]["mean_sm_util_pct"].is_null());
}
