#!/usr/bin/env bash
# Everything CI checks, in order: formatting, lints (warnings are errors), then the tests.
# Developers run this before pushing; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> tests (scripts/test.sh)"
scripts/test.sh
