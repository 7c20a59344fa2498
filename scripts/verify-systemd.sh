#!/usr/bin/env bash
# Runs `systemd-analyze verify` on the units in systemd/. Exits 0 with a "skipped" line
# where systemd-analyze is missing (containers, macOS).
#
# verify insists that ExecStart binaries exist, so the units are verified as copies in a
# temporary root whose ExecStart/ExecReload point at the built binaries
# (${CARGO_TARGET_DIR:-target}/{debug,release}) or, when they are not built, at a stub.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify-systemd: skipped (systemd-analyze not found)"
    exit 0
fi

target="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/units"

binary() {
    local name="$1"
    for profile in debug release; do
        if [[ -x "$target/$profile/$name" ]]; then
            echo "$target/$profile/$name"
            return
        fi
    done
    # Not built: a stub with the same name, so verify still checks everything else.
    printf '#!/bin/sh\nexit 0\n' >"$work/bin/$name"
    chmod +x "$work/bin/$name"
    echo "$work/bin/$name"
}

coordinator="$(binary evalctl-coordinator)"
agent="$(binary evalctl-agent)"
kill_bin="$(command -v kill || echo /bin/kill)"

for unit in "$root"/systemd/*.service; do
    name="$(basename "$unit")"
    sed -e "s|/usr/local/bin/evalctl-coordinator|$coordinator|g" \
        -e "s|/usr/local/bin/evalctl-agent|$agent|g" \
        -e "s|/bin/kill|$kill_bin|g" \
        "$unit" >"$work/units/$name"
done

status=0
for unit in "$work"/units/*.service; do
    name="$(basename "$unit")"
    # verify prints problems on stderr and may still exit 0 for some of them: fail on any.
    if ! output="$(systemd-analyze verify --man=no "$unit" 2>&1)"; then
        status=1
    fi
    if [[ -n "$output" ]]; then
        echo "verify-systemd: $name:"
        echo "$output" | sed 's/^/    /'
        status=1
    else
        echo "verify-systemd: $name ok"
    fi
done
exit "$status"
