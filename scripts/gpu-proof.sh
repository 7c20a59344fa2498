#!/usr/bin/env bash
# The GPU proof (docs/telemetry.md#gpu-proof): on a host with an NVIDIA GPU and its driver,
# and nothing else (no CUDA toolkit, no Python, no network), it shows that evalctl's GPU
# path works against the real driver:
#
#   1. check     NVML through the agent's telemetry code: the GPUs (MIG mode and instances
#                too), which sample fields the driver reports, and 5 s of sampling at 20 Hz
#                with the energy counter against the integrated power;
#   2. campaign  a matrix whose one unit asks for 1 GPU of the detected type; its server is
#                `evalctl-gpu-proof serve`, which loads the GPU with a PTX kernel through
#                the CUDA driver API (libcuda ships with the driver) and holds 1 GiB;
#   3. run       `evalctl local` runs it: the agent leases the GPU, starts the server with
#                CUDA_VISIBLE_DEVICES, drives a load step and samples NVML throughout;
#   4. summarize summary.json: GPUs, driver and CUDA versions, samples per second, power
#                and energy (counter vs integrated power, their difference), memory used,
#                throttle reasons, what CUDA_VISIBLE_DEVICES the server got and whether its
#                CUDA device is the GPU the agent leased.
#
# Usage: scripts/gpu-proof.sh [OUT_DIR]          (default ./gpu-proof-out)
# Binaries: $EVALCTL_BIN_DIR (default target/release) must hold `evalctl` and
# `evalctl-gpu-proof`; scripts/gpu-proof-bundle.sh builds and strips just those two.
# Knobs: EVALCTL_GPU_PROOF_SECONDS (load step, default 20), EVALCTL_GPU_PROOF_HOLD_MIB
# (device memory the server holds, default 1024).
#
# Exit codes: 0 the proof passed, or there is no GPU ("no NVIDIA GPU found", nothing else
# done); 1 a step failed to run; 4 the summary was written and a check failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${EVALCTL_BIN_DIR:-$root/target/release}"
out="${1:-gpu-proof-out}"
load_s="${EVALCTL_GPU_PROOF_SECONDS:-20}"
hold_mib="${EVALCTL_GPU_PROOF_HOLD_MIB:-1024}"
proof="$bin_dir/evalctl-gpu-proof"
evalctl="$bin_dir/evalctl"

for program in "$proof" "$evalctl"; do
    if [[ ! -x "$program" ]]; then
        echo "gpu-proof: $program is missing: build it (scripts/gpu-proof-bundle.sh) or set EVALCTL_BIN_DIR" >&2
        exit 1
    fi
done

started=$SECONDS
phase_started=$SECONDS
phase() {
    echo "gpu-proof: $1 ($((SECONDS - phase_started)) s)"
    phase_started=$SECONDS
}

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# 1. NVML. Exit 3 means no driver or no GPU: say so and do nothing else.
set +e
"$proof" check --seconds 5 --rate 20 -o "$scratch/check.json" 2>"$scratch/check.err"
status=$?
set -e
if [[ $status -eq 3 ]]; then
    cat "$scratch/check.err"
    exit 0
elif [[ $status -ne 0 ]]; then
    cat "$scratch/check.err" >&2
    echo "gpu-proof: the NVML check failed" >&2
    exit 1
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -f "$out/serve.json" "$out/summary.json"
cp "$scratch/check.json" "$out/check.json"
phase "check: NVML sampled, $out/check.json"

# 2. The campaign for the detected GPU.
"$proof" campaign --check "$out/check.json" --serve-report "$out/serve.json" \
    --hold-mib "$hold_mib" --seconds "$load_s" -o "$out/matrix.yaml"
phase "campaign: $out/matrix.yaml"

# 3. Run it. A failed campaign still gets its summary, which says what failed.
set +e
"$evalctl" local "$out/matrix.yaml" --data-dir "$out/data" --fresh --json \
    >"$out/local.json" 2>"$out/local.log"
status=$?
set -e
phase "run: evalctl local exited $status (log: $out/local.log)"
if [[ ! -s "$out/local.json" ]]; then
    tail -n 20 "$out/local.log" >&2
    echo "gpu-proof: evalctl local wrote no results" >&2
    exit 1
fi

# 4. The summary and its checks.
set +e
"$proof" summarize --check "$out/check.json" --local "$out/local.json" \
    --serve-report "$out/serve.json" -o "$out/summary.json"
status=$?
set -e
phase "summarize: $out/summary.json"
cat "$out/summary.json"
echo "gpu-proof: finished in $((SECONDS - started)) s"
case $status in
    0) echo "gpu-proof: every check passed" ;;
    4) echo "gpu-proof: a check failed: see \"checks\" in $out/summary.json" >&2 ;;
    *) echo "gpu-proof: the summary could not be made" >&2; status=1 ;;
esac
exit "$status"
