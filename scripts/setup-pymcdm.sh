#!/usr/bin/env bash
# Installs pymcdm (with numpy) in a test-only virtual environment, the independent TOPSIS
# implementation that tests/e2e/capacity.rs checks `evalctl recommend --rank topsis`
# against. Idempotent: does nothing when the venv already imports pymcdm.
set -euo pipefail

cache="${EVALCTL_CACHE:-$HOME/.cache/evalctl}"
venv="$cache/pymcdm-venv"
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import pymcdm' 2>/dev/null; then
    echo "setup-pymcdm: $venv has pymcdm"
    exit 0
fi
echo "setup-pymcdm: installing pymcdm into $venv"
mkdir -p "$cache"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'pymcdm==1.4.0'
"$venv/bin/python" -c 'import pymcdm, numpy; print("setup-pymcdm: pymcdm", pymcdm.__version__ if hasattr(pymcdm, "__version__") else "1.4.0", "numpy", numpy.__version__)'
