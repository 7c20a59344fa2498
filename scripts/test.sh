#!/usr/bin/env bash
# Runs evalctl's test suite: installs the real llama.cpp server and its tiny models
# (scripts/setup-llamacpp.sh: about 20 minutes the first time, then a second), vLLM's CPU
# build and its tiny model (scripts/setup-vllm.sh: about 4 minutes and 5.4 GB the first time,
# then a second), as root with apt-get, Podman and runc for the container tests
# (scripts/setup-podman.sh) and headless Chromium for the report test
# (scripts/setup-chromium.sh), pymcdm in a test venv for the TOPSIS cross-check
# (scripts/setup-pymcdm.sh: a few seconds), lm-evaluation-harness in its own venv for the
# accuracy tests (scripts/setup-lm-eval.sh: about 30 s and 760 MB), builds every
# binary (the end-to-end tests start the real coordinator, agent and CLI processes), then
# runs all tests of the workspace and ends with one totals line:
# "summary: N passed, N failed, N skipped".
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Prints how long each phase took, so a slow CI run says where its time went.
mark=$SECONDS
took() {
  echo "test.sh: $1: $((SECONDS - mark)) s"
  mark=$SECONDS
}

# tests/e2e/llamacpp.rs needs llama-server and the models; without them it fails, and says why.
if ! scripts/setup-llamacpp.sh; then
  echo "test.sh: scripts/setup-llamacpp.sh failed; the llama.cpp end-to-end test will fail" >&2
fi
took "setup llama.cpp"
# tests/vllm/ needs vLLM and its model; without them it fails, and says why.
if ! scripts/setup-vllm.sh; then
  echo "test.sh: scripts/setup-vllm.sh failed; the vLLM tests will fail" >&2
fi
took "setup vLLM"
# tests/e2e/containers.rs needs Podman and runc; without them it fails, and says why.
if ! scripts/setup-podman.sh; then
  echo "test.sh: scripts/setup-podman.sh failed; the container tests will fail" >&2
fi
took "setup Podman"
# tests/e2e/report.rs renders the HTML report in headless Chromium when it is installed.
if ! scripts/setup-chromium.sh; then
  echo "test.sh: scripts/setup-chromium.sh failed; the report test will skip its rendering part" >&2
fi
took "setup Chromium"
# tests/e2e/capacity.rs checks `recommend --rank topsis` against pymcdm; without it that test fails, and says why.
if ! scripts/setup-pymcdm.sh; then
  echo "test.sh: scripts/setup-pymcdm.sh failed; the capacity end-to-end test will fail" >&2
fi
took "setup pymcdm"
# tests/e2e/accuracy.rs and tests/vllm run lm-eval; without it they fail, and say why.
if ! scripts/setup-lm-eval.sh; then
  echo "test.sh: scripts/setup-lm-eval.sh failed; the accuracy tests will fail" >&2
fi
took "setup lm-eval"

cargo build --workspace --bins --locked
took "build the binaries"

log=$(mktemp "${TMPDIR:-/tmp}/evalctl-test.XXXXXX")
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
took "cargo test"

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
