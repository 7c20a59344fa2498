#!/usr/bin/env bash
# Runs evalctl's test suite: builds every binary (the end-to-end tests start the real
# coordinator, agent and CLI processes), then runs all tests of the workspace.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
