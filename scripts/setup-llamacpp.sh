#!/usr/bin/env bash
# Installs what the llama.cpp campaign (matrices/cpu-llamacpp.yaml), its end-to-end test
# (tests/e2e/llamacpp.rs) and docs/llamacpp.md need, into a cache outside the checkout:
#
#   $EVALCTL_CACHE/bin/llama-server         llama.cpp's OpenAI-compatible server (CPU build)
#   $EVALCTL_CACHE/venv/                    Python with the pinned `gguf` package
#   $EVALCTL_CACHE/models/tiny-llama-*.gguf tiny random-weight Llama models (scripts/gen-tiny-gguf.py)
#
# EVALCTL_CACHE defaults to ~/.cache/evalctl. Only package registries are used: llama.cpp's
# source comes from the llama-cpp-python sdist on PyPI (it vendors llama.cpp), cmake and gguf
# come from PyPI, the compiler from Debian (build-essential). Nothing is downloaded from a
# model hub.
#
# Idempotent: each part leaves a stamp naming its version and build flags; a second run
# (also from a fresh clone, with the same cache) checks the stamps and finishes in seconds.
# The first run compiles llama-server: about 20 minutes on two busy cores (measured 18.5 min).
#
# Usage: scripts/setup-llamacpp.sh            (then: export PATH="$EVALCTL_CACHE/bin:$PATH")
#        EVALCTL_CACHE=/some/dir scripts/setup-llamacpp.sh
set -euo pipefail

# Pinned versions. Changing one rebuilds the part it belongs to.
LLAMA_CPP_PYTHON_VERSION=0.3.36 # its sdist vendors llama.cpp 0.5.0-dev (2026-10-01)
CMAKE_VERSION=3.31.10
GGUF_VERSION=0.19.0
NUMPY_VERSION=2.3.5

script_dir=$(cd "$(dirname "$0")" && pwd)
cache=${EVALCTL_CACHE:-$HOME/.cache/evalctl}
jobs=${EVALCTL_BUILD_JOBS:-2}

log() { printf 'setup-llamacpp: %s\n' "$*" >&2; }
die() {
  printf 'setup-llamacpp: error: %s\n' "$*" >&2
  exit 1
}

mkdir -p "$cache/bin" "$cache/models"
cache=$(cd "$cache" && pwd)

# One setup at a time per cache: test runs started together wait for the first one's build.
exec 9>"$cache/.setup-lock"
if ! flock -n 9; then
  log "another setup is running on $cache; waiting for it"
  flock 9
fi

# --- Python environment: gguf (model generation) and cmake (the build) -------------------
venv="$cache/venv"
venv_stamp="$venv/.evalctl-stamp"
venv_want="python=$(python3 -c 'import sys; print(sys.version.split()[0])') cmake=$CMAKE_VERSION gguf=$GGUF_VERSION numpy=$NUMPY_VERSION"
if [[ ! -x $venv/bin/python || $(cat "$venv_stamp" 2>/dev/null) != "$venv_want" ]]; then
  command -v python3 >/dev/null || die "python3 not found (hint: apt-get install python3 python3-venv)"
  log "creating $venv ($venv_want)"
  rm -rf "$venv"
  python3 -m venv "$venv" ||
    die "python3 -m venv failed (hint: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "cmake==$CMAKE_VERSION" "gguf==$GGUF_VERSION" "numpy==$NUMPY_VERSION"
  echo "$venv_want" >"$venv_stamp"
fi

# --- llama-server -------------------------------------------------------------------------
# CPU-only static build of the server target alone. GGML_NATIVE tunes for this CPU, so the
# stamp records the CPU's feature flags too: a cache moved to another CPU is rebuilt.
cmake_flags=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=ON
  # No AMX: on CPUs that have it (Sapphire Rapids and later), ggml's AMX matmul segfaults on
  # q8_0 models under hypervisors that do not grant the tile state (seen on CI machines).
  # AVX-512 and AVX2 stay; explicit -mno-* win over what -march=native turns on.
  "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  -DLLAMA_OPENSSL=OFF         # no HTTPS in the server; no libssl-dev needed
  -DLLAMA_BUILD_UI=OFF        # no Web UI: it would need npm ...
  -DLLAMA_USE_PREBUILT_UI=OFF # ... or a download from a model hub
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
)
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-12)
server_want="llama-cpp-python=$LLAMA_CPP_PYTHON_VERSION cmake=$CMAKE_VERSION cpu=$cpu_flags flags=${cmake_flags[*]}"
server="$cache/bin/llama-server"
server_stamp="$cache/bin/.llama-server-stamp"
if [[ -x $server && $(cat "$server_stamp" 2>/dev/null) == "$server_want" ]] &&
  "$server" --version >/dev/null 2>&1; then
  log "llama-server is up to date ($server)"
else
  command -v c++ >/dev/null && command -v make >/dev/null ||
    die "no C++ compiler or make (hint: apt-get install build-essential)"
  start=$SECONDS
  work="$cache/build"
  rm -rf "$work"
  mkdir -p "$work"
  log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist (llama.cpp source) from PyPI"
  # --no-binary for this one package only: its build dependencies (needed by pip to read the
  # sdist's metadata) still come as wheels.
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work"
  sdist="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  [[ -f $sdist ]] || die "pip did not leave $sdist"
  tar -xzf "$sdist" -C "$work" "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  log "building llama-server with $jobs jobs (flags: ${cmake_flags[*]})"
  "$venv/bin/cmake" -S "$src" -B "$work/out" "${cmake_flags[@]}" >"$work/cmake.log" 2>&1 ||
    die "cmake configure failed; see $work/cmake.log"
  "$venv/bin/cmake" --build "$work/out" --target llama-server -j "$jobs" >>"$work/cmake.log" 2>&1 ||
    die "the llama-server build failed; see $work/cmake.log"
  install -m 0755 "$work/out/bin/llama-server" "$server.tmp"
  mv -f "$server.tmp" "$server"
  "$server" --version >/dev/null 2>&1 || die "the built $server does not run"
  echo "$server_want" >"$server_stamp"
  rm -rf "$work"
  log "built llama-server in $((SECONDS - start)) s"
fi

# --- tiny models --------------------------------------------------------------------------
"$venv/bin/python" "$script_dir/gen-tiny-gguf.py" --out "$cache/models"

log "ready: $server ($("$server" --version 2>&1 | grep -m1 -i version || true))"
log "models: $(cd "$cache/models" && ls tiny-llama-*.gguf | tr '\n' ' ')"
if [[ :$PATH: != *":$cache/bin:"* ]]; then
  log "put llama-server on PATH for evalctl: export PATH=\"$cache/bin:\$PATH\""
fi
