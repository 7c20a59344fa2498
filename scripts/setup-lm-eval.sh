#!/usr/bin/env bash
# Installs EleutherAI's lm-evaluation-harness (`lm-eval[api]`: its OpenAI-compatible API
# clients, no torch) in its own virtual environment in the cache, for the `api: lm-eval`
# workload's tests (tests/e2e/accuracy.rs against the simulated server, tests/vllm against
# vLLM). Idempotent: does nothing when the venv already runs `lm_eval` at the pinned version.
# Nothing here downloads a model or a dataset: the tests run lm-eval with HF_HUB_OFFLINE=1
# and HF_DATASETS_OFFLINE=1 on the task shipped in datasets/lm-eval/.
set -euo pipefail

version="0.4.13"
cache="${EVALCTL_CACHE:-$HOME/.cache/evalctl}"
venv="$cache/lm-eval-venv"
installed() {
    [[ -x "$venv/bin/lm_eval" ]] &&
        [[ "$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("lm_eval"))' 2>/dev/null)" == "$version" ]]
}
if installed; then
    echo "setup-lm-eval: $venv has lm-eval $version"
    exit 0
fi
echo "setup-lm-eval: installing lm-eval $version into $venv"
mkdir -p "$cache"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "lm-eval[api]==$version"
installed || { echo "setup-lm-eval: lm_eval $version is not runnable after the install" >&2; exit 1; }
echo "setup-lm-eval: lm-eval $version in $venv ($(du -sh "$venv" | cut -f1))"
