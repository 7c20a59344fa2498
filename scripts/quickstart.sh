#!/usr/bin/env bash
# Quickstart: build evalctl, show the quickstart campaign's expansion, start a coordinator
# on loopback with a throwaway SQLite database, submit the campaign and show its status.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked --quiet
bin="${CARGO_TARGET_DIR:-target}/debug"
data=$(mktemp -d "${TMPDIR:-/tmp}/evalctl-quickstart.XXXXXX")
coordinator_pid=
cleanup() {
  if [ -n "$coordinator_pid" ]; then kill -TERM "$coordinator_pid" 2>/dev/null || true; wait "$coordinator_pid" 2>/dev/null || true; fi
  rm -rf "$data"
}
trap cleanup EXIT

echo "==> evalctl submit --dry-run matrices/quickstart.yaml"
"$bin/evalctl" submit --dry-run matrices/quickstart.yaml

echo "==> starting evalctl-coordinator (database in $data)"
"$bin/evalctl-coordinator" --listen 127.0.0.1:0 --data-dir "$data" >"$data/addr" 2>"$data/coordinator.log" &
coordinator_pid=$!
for _ in $(seq 100); do [ -s "$data/addr" ] && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$data/addr")
[ -n "$addr" ] || { echo "coordinator did not start:"; cat "$data/coordinator.log"; exit 1; }
export EVALCTL_COORDINATOR="http://$addr"

echo "==> evalctl submit matrices/quickstart.yaml"
"$bin/evalctl" submit matrices/quickstart.yaml
echo "==> evalctl status quickstart"
"$bin/evalctl" status quickstart
