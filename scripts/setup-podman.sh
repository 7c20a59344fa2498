#!/usr/bin/env bash
# Installs Podman and runc from the distribution's packages, for the container tests
# (tests/e2e/containers.rs): they run the simulated server's image with a private image store
# per test. Idempotent: a second run checks and returns. Needs root and apt-get (Debian,
# Ubuntu); elsewhere install podman and runc with the system's package manager.
# runc, not Podman's default crun: crun refuses hosts whose cgroups are in hybrid mode.
set -euo pipefail

if command -v podman >/dev/null && command -v runc >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup-podman.sh: install podman and runc (as root, with apt-get on Debian/Ubuntu)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends podman runc >/dev/null 2>&1; then
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends podman runc >/dev/null
fi
podman --version
