#!/usr/bin/env bash
# Builds what scripts/gpu-proof.sh runs, and nothing else: the `evalctl` and
# `evalctl-gpu-proof` release binaries, stripped, into dist/gpu-proof/ (git-ignored), and
# checks that they fit the 64 MiB a GPU machine is lent with beside the checkout. Then, on
# the GPU machine, from the checkout:
#     EVALCTL_BIN_DIR=dist/gpu-proof scripts/gpu-proof.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dist="$root/dist/gpu-proof"
limit_bytes=$((64 * 1024 * 1024))
cd "$root"
cargo build --release --locked --bin evalctl --bin evalctl-gpu-proof
mkdir -p "$dist"
target="${CARGO_TARGET_DIR:-$root/target}/release"
for program in evalctl evalctl-gpu-proof; do
    cp "$target/$program" "$dist/$program.partial"
    strip "$dist/$program.partial"
    mv "$dist/$program.partial" "$dist/$program"
done
total=$(du -cb "$dist/evalctl" "$dist/evalctl-gpu-proof" | tail -n 1 | cut -f 1)
ls -l "$dist"
echo "gpu-proof-bundle: $((total / 1024 / 1024)) MiB in $dist (limit 64 MiB)"
if ((total > limit_bytes)); then
    echo "gpu-proof-bundle: the binaries exceed 64 MiB" >&2
    exit 1
fi
