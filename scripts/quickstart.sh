#!/usr/bin/env bash
# Quickstart: build evalctl, then run the quickstart campaign to its end with
# `evalctl local`: a coordinator (SQLite in a throwaway directory) and one agent in one
# process on loopback, launching evalctl's simulated server for each unit. Prints the
# results table: TTFT, TPOT, ITL and E2EL percentiles and throughput for every step.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked --quiet
bin="${CARGO_TARGET_DIR:-target}/debug"
data=$(mktemp -d "${TMPDIR:-/tmp}/evalctl-quickstart.XXXXXX")
trap 'rm -rf "$data"' EXIT

echo "==> evalctl local matrices/quickstart.yaml"
"$bin/evalctl" local matrices/quickstart.yaml --data-dir "$data"
