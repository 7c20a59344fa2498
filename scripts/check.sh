#!/usr/bin/env bash
# Everything CI checks, in order: formatting, lints (warnings are errors), then the tests.
# Developers run this before pushing; .ci/run runs exactly this. Each phase prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
phase_started=$SECONDS
phase() {
  if [ -n "${phase_name:-}" ]; then
    echo "==> ${phase_name}: $((SECONDS - phase_started)) s"
  fi
  phase_name=$1
  phase_started=$SECONDS
  [ -n "$phase_name" ] && echo "==> $phase_name"
  return 0
}

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "tests (scripts/test.sh)"
scripts/test.sh
phase ""
echo "==> total: $((SECONDS - started)) s"
