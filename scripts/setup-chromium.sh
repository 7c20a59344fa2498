#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package) for the report rendering test
# (tests/e2e/report.rs). Idempotent: does nothing when /usr/bin/chromium (or
# $EVALCTL_CHROMIUM) is already there, and only tries when running as root with apt-get.
# Without Chromium the test still checks the report's structure and skips the rendering
# part, saying why.
set -euo pipefail

chromium="${EVALCTL_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$chromium" ]]; then
    echo "setup-chromium: $chromium is installed"
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup-chromium: not root, not installing chromium (the report test will skip rendering)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-chromium: no apt-get, not installing chromium (the report test will skip rendering)" >&2
    exit 0
fi
echo "setup-chromium: installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
"$chromium" --version
