#!/usr/bin/env bash
# Runs evalctl's test suite: builds every binary (the end-to-end tests start the real
# coordinator, agent and CLI processes), then runs all tests of the workspace and ends
# with one totals line: "summary: N passed, N failed, N skipped".
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked

log=$(mktemp "${TMPDIR:-/tmp}/evalctl-test.XXXXXX")
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# cargo prints one "test result:" line per test binary; add them up.
awk '/^test result:/ {
  for (i = 2; i <= NF; i++) {
    if ($i ~ /^passed/)  passed  += $(i - 1)
    if ($i ~ /^failed/)  failed  += $(i - 1)
    if ($i ~ /^ignored/) ignored += $(i - 1)
  }
}
END { printf "summary: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
