#!/usr/bin/env bash
# Cross-checks `evalctl bench` against vLLM's own benchmark client (`vllm bench serve`), both
# driving the same vLLM server with the same load, and prints the medians side by side. The
# figures and the reasons for their differences are in docs/metrics.md ("Cross-check against
# `vllm bench serve`").
#
# What it does:
#   1. starts one `vllm serve` of the tiny model, pinned to CPU 1 (`taskset -c 1`), waits for
#      /health, and kills it (its whole process group) on exit;
#   2. on the chat API, runs R repeats (default 3) of `vllm bench serve` and `evalctl bench`
#      alternately (which tool goes first alternates too), both pinned to CPU 0;
#   3. runs one more pair on the completions API, where no role-only first chunk exists;
#   4. prints, per API and tool, the median over the repeats of TTFT p50, TPOT p50, ITL p50,
#      E2EL p50, output token throughput and request throughput; the tools' means next to the
#      server's own means for the same run (from its /metrics histograms, scraped before and
#      after each run), which separates a tool's offset from the server's speed drifting
#      between runs; and a few diagnostics (ITL gaps per request, tokens counted, requests in
#      flight, vLLM's chat TTFT taken at its second chunk, the first with content).
#
# The load, the same for both tools: random prompts of a fixed length (64 text tokens), a
# fixed output length (32 tokens, `ignore_eos`, usage from the server), 64 measured requests
# at concurrency 4 (`--max-concurrency 4` / `--concurrency 4`), 4 warmup requests, streaming.
# vLLM's random dataset subtracts the tokenizer's special tokens (BOS) from
# --random-input-len; the script adds them back so that both send 64 tokens of text (the
# server's prompt_tokens in both result files show it). The server runs without prefix
# caching, so repeats of the same seeded prompts do not get cheaper prefills.
#
# Needs: scripts/setup-vllm.sh run first (the vLLM CPU venv, its `vllm` command and the tiny
# model under $EVALCTL_CACHE, default ~/.cache/evalctl); evalctl built (target/release/evalctl
# if present, else target/debug/evalctl; the summary says which); python3, taskset, curl.
# At least 2 CPUs (server on CPU 1, clients on CPU 0).
#
# Takes about 2.5 minutes on a 2-core machine with the defaults: 30-60 s server start, then
# 8 client runs of about 5 s each, and each `vllm bench serve` spends about 10-15 s importing
# vLLM before it sends anything. Other work on the machine moves the figures: run it idle.
#
# Usage: scripts/crosscheck-vllm-bench.sh [--out DIR] [--repeats R] [--prompts N]
#          [--concurrency C] [--input-len N] [--output-len N] [--warmup N] [--port P]
#   --out DIR   where the raw result JSONs, run logs, the server log and summary.txt go
#               (default: a new temporary directory, printed)
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
cache=${EVALCTL_CACHE:-$HOME/.cache/evalctl}

out=""
repeats=3
prompts=64
concurrency=4
input_len=64
output_len=32
warmup=4
port=""

log() { printf 'crosscheck: %s\n' "$*" >&2; }
die() {
  printf 'crosscheck: error: %s\n' "$*" >&2
  exit 1
}
usage() {
  sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

while [[ $# -gt 0 ]]; do
  case $1 in
  --out) out=${2:?--out needs a directory} && shift 2 ;;
  --repeats) repeats=${2:?} && shift 2 ;;
  --prompts) prompts=${2:?} && shift 2 ;;
  --concurrency) concurrency=${2:?} && shift 2 ;;
  --input-len) input_len=${2:?} && shift 2 ;;
  --output-len) output_len=${2:?} && shift 2 ;;
  --warmup) warmup=${2:?} && shift 2 ;;
  --port) port=${2:?} && shift 2 ;;
  -h | --help) usage 0 ;;
  *) die "unknown argument $1 (see --help)" ;;
  esac
done

# --- what it needs ------------------------------------------------------------------------
vllm="$cache/vllm-bin/vllm"
vpython="$cache/vllm-venv/bin/python"
model_dir="$cache/models/tiny-llama-hf-0.6m"
[[ -x $vllm && -x $vpython ]] || die "no vLLM in $cache (run scripts/setup-vllm.sh first)"
[[ -f $model_dir/config.json ]] || die "no model in $model_dir (run scripts/setup-vllm.sh first)"
for tool in python3 taskset curl setsid; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ $(nproc --all) -ge 2 ]] || die "needs at least 2 CPUs (server on CPU 1, clients on CPU 0)"
if [[ -x $repo/target/release/evalctl ]]; then
  evalctl="$repo/target/release/evalctl"
  build=release
elif [[ -x $repo/target/debug/evalctl ]]; then
  evalctl="$repo/target/debug/evalctl"
  build=debug
else
  die "no evalctl binary under $repo/target (build it first: cargo build --release)"
fi

if [[ -z $out ]]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/crosscheck-vllm.XXXXXX")
fi
mkdir -p "$out/chat" "$out/completions"
out=$(cd "$out" && pwd)
log "results go to $out"
if [[ -z $port ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
url="http://127.0.0.1:$port"
served_name=tiny-llama

# vLLM's random dataset makes prompts of (--random-input-len − the tokenizer's special
# tokens) text tokens; evalctl's --input-tokens counts text tokens only. Add them back.
num_special=$(HF_HUB_OFFLINE=1 "$vpython" -c '
import sys
from transformers import AutoTokenizer
print(AutoTokenizer.from_pretrained(sys.argv[1]).num_special_tokens_to_add())' "$model_dir" 2>/dev/null) ||
  die "cannot load the tokenizer of $model_dir with the vLLM venv's transformers"
vllm_input_len=$((input_len + num_special))

# --- the server ---------------------------------------------------------------------------
server_pid=""
stop_server() {
  [[ -n $server_pid ]] || return 0
  # setsid made the server the leader of its own process group: end the group (the API
  # server, the engine core and its worker), politely first.
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 -- "-$server_pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$server_pid" 2>/dev/null || true
  server_pid=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

log "starting vllm serve on $url, pinned to CPU 1 (log: $out/server.log)"
setsid taskset -c 1 env \
  VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 \
  "$vllm" serve "$model_dir" --served-model-name "$served_name" \
  --host 127.0.0.1 --port "$port" --dtype float32 --enforce-eager \
  --max-model-len 2048 --max-num-seqs 8 --no-enable-prefix-caching \
  >"$out/server.log" 2>&1 </dev/null &
server_pid=$!
# setsid does not fork here (a background job is no group leader), so once it has run, the
# pid is the id of the server's process group.
for _ in $(seq 1 50); do
  [[ $(ps -o pgid= -p "$server_pid" | tr -d ' ') == "$server_pid" ]] && break
  sleep 0.1
done
[[ $(ps -o pgid= -p "$server_pid" | tr -d ' ') == "$server_pid" ]] ||
  die "vllm serve did not get a process group of its own"
start=$SECONDS
until curl -fsS -o /dev/null "$url/health" 2>/dev/null; do
  kill -0 "$server_pid" 2>/dev/null ||
    die "vllm serve exited during startup; its log ends with:
$(tail -n 20 "$out/server.log")"
  ((SECONDS - start < 300)) || die "vllm serve not healthy after 300 s (see $out/server.log)"
  sleep 1
done
log "server healthy after $((SECONDS - start)) s"
# The CPUs each of the server's processes may run on (vLLM's CPU worker binds none itself
# with VLLM_CPU_OMP_THREADS_BIND=nobind, so all should say 1).
for pid in $(pgrep -g "$server_pid"); do
  printf '%s %s\n' "$(taskset -cp "$pid" 2>/dev/null)" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)"
done >"$out/server-affinity.txt"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# The server's own Prometheus counters before and after each client run: their sums and
# counts give the server's mean TTFT, ITL, TPOT and E2EL for just that run's requests, a
# reference that moves with the server's speed from run to run.
scrape() { curl -fsS "$url/metrics" >"$1" || die "cannot read $url/metrics"; }

# --- the two clients ----------------------------------------------------------------------
# run_vllm API REPEAT: one `vllm bench serve` run; its JSON (with per-request detail) goes to
# $out/API/vllm-rREPEAT.json.
run_vllm() {
  local api=$1 rep=$2 backend endpoint
  if [[ $api == chat ]]; then
    backend=openai-chat endpoint=/v1/chat/completions
  else
    backend=openai endpoint=/v1/completions
  fi
  log "$api repeat $rep: vllm bench serve"
  scrape "$out/$api/vllm-r$rep.metrics-before.txt"
  taskset -c 0 env HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    "$vllm" bench serve --base-url "$url" --backend "$backend" --endpoint "$endpoint" \
    --model "$served_name" --tokenizer "$model_dir" \
    --dataset-name random --random-input-len "$vllm_input_len" \
    --random-output-len "$output_len" --random-range-ratio 0 --ignore-eos \
    --num-prompts "$prompts" --max-concurrency "$concurrency" --request-rate inf \
    --num-warmups "$warmup" --seed 0 \
    --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 \
    --save-result --save-detailed --result-dir "$out/$api" --result-filename "vllm-r$rep.json" \
    --disable-tqdm >"$out/$api/vllm-r$rep.log" 2>&1 ||
    die "vllm bench serve failed; see $out/$api/vllm-r$rep.log"
  scrape "$out/$api/vllm-r$rep.metrics-after.txt"
}

# run_evalctl API REPEAT: one `evalctl bench` run; the result document goes to
# $out/API/evalctl-rREPEAT.json, the same with every per-request record to
# evalctl-rREPEAT.records.json.
run_evalctl() {
  local api=$1 rep=$2
  log "$api repeat $rep: evalctl bench"
  scrape "$out/$api/evalctl-r$rep.metrics-before.txt"
  taskset -c 0 "$evalctl" bench --json --url "$url" --model "$served_name" --api "$api" \
    --input-tokens "$input_len" --output-tokens "$output_len" \
    --requests "$prompts" --concurrency "$concurrency" --warmup "$warmup" --seed 0 \
    --out "$out/$api/evalctl-r$rep.records.json" \
    >"$out/$api/evalctl-r$rep.json" 2>"$out/$api/evalctl-r$rep.log" ||
    die "evalctl bench failed; see $out/$api/evalctl-r$rep.log"
  scrape "$out/$api/evalctl-r$rep.metrics-after.txt"
}

for rep in $(seq 1 "$repeats"); do
  if ((rep % 2)); then
    run_vllm chat "$rep" && run_evalctl chat "$rep"
  else
    run_evalctl chat "$rep" && run_vllm chat "$rep"
  fi
done
run_vllm completions 1
run_evalctl completions 1
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

stop_server

# --- the summary --------------------------------------------------------------------------
{
  printf 'evalctl cross-check against vllm bench serve, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'vllm %s; evalctl %s (%s build); model %s\n' \
    "$("$vpython" -c 'import importlib.metadata as m; print(m.version("vllm"))')" \
    "$("$evalctl" --version | awk '{print $2}')" "$build" "$(basename "$model_dir")"
  printf 'load: %s prompts, %s text tokens in (vllm --random-input-len %s), %s out, ' \
    "$prompts" "$input_len" "$vllm_input_len" "$output_len"
  printf 'concurrency %s, warmup %s, ignore_eos; server on CPU 1, clients on CPU 0; %s CPUs\n' \
    "$concurrency" "$warmup" "$(nproc --all)"
  printf 'load average before the first client run: %s; after the last: %s\n\n' \
    "$load_before" "$load_after"
  python3 - "$out" <<'EOF'
import json, pathlib, re, statistics, sys

out = pathlib.Path(sys.argv[1])
med = statistics.median
nan = float("nan")
KEYS = ("ttft", "tpot", "itl", "e2el")
SERVER = {"ttft": "vllm:time_to_first_token_seconds", "tpot":
          "vllm:request_time_per_output_token_seconds", "itl": "vllm:inter_token_latency_seconds",
          "e2el": "vllm:e2e_request_latency_seconds"}


def prom(path):
    # Sums of every `name{labels} value` sample per name, from a Prometheus text scrape.
    totals = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if m := re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)$", line):
                totals[m[1]] = totals.get(m[1], 0.0) + float(m[2])
    return totals


def server_means(f):
    # The server's own mean of each latency over the requests of one client run (its warmup
    # requests included), in ms: the difference of the histogram sums over that of the counts.
    before = prom(f.with_name(f.stem + ".metrics-before.txt"))
    after = prom(f.with_name(f.stem + ".metrics-after.txt"))
    means = {}
    for k, name in SERVER.items():
        n = after.get(name + "_count", 0) - before.get(name + "_count", 0)
        s = after.get(name + "_sum", 0) - before.get(name + "_sum", 0)
        means["srv_" + k] = 1000 * s / n if n > 0 else nan
    return means


def vllm_run(doc):
    ttfts, itls = doc.get("ttfts") or [], doc.get("itls") or []
    ok = [i for i, e in enumerate(doc.get("errors") or []) if not e] or range(len(ttfts))
    # vLLM's TTFT ends at the first chunk with `choices`; ttft + itls[0] ends at the second.
    second = [1000 * (ttfts[i] + itls[i][0]) for i in ok if itls[i]]
    run = {k: doc[f"median_{k}_ms"] for k in KEYS}
    run |= {"mean_" + k: doc[f"mean_{k}_ms"] for k in KEYS}
    return run | {
        "out_tps": doc["output_throughput"], "req_s": doc["request_throughput"],
        "dur": doc["duration"], "in_tok": doc["total_input_tokens"],
        "out_tok": doc["total_output_tokens"], "done": doc["completed"],
        "gaps": med([len(itls[i]) for i in ok]) if itls else nan,
        "ttft2": med(second) if second else nan,
        # Requests in flight on average: summed request latency / duration.
        "inflight": sum(doc["latencies"][i] for i in ok) / doc["duration"]
        if doc.get("latencies") else nan,
    }


def evalctl_run(doc, records_doc):
    m = doc["metrics"]
    recs = [r for r in records_doc.get("records", [])
            if not r.get("warmup") and not r.get("error")]
    run = {k: m[f"{k}_ms"]["p50"] for k in KEYS}
    run |= {"mean_" + k: m[f"{k}_ms"]["mean"] for k in KEYS}
    return run | {
        "out_tps": m["output_token_throughput"], "req_s": m["request_throughput"],
        "dur": m["duration_s"], "in_tok": m["total_input_tokens"],
        "out_tok": m["total_output_tokens"], "done": m["completed"],
        "gaps": med([len(r["token_ns"]) - 1 for r in recs]) if recs else nan,
        "ttft2": nan,
        "inflight": sum(r["end_ns"] - r["sent_ns"] for r in recs) / 1e9 / m["duration_s"]
        if recs else nan,
    }


runs = {}
for api in ("chat", "completions"):
    for tool in ("vllm", "evalctl"):
        for f in sorted((out / api).glob(f"{tool}-r*.json")):
            if f.name.endswith(".records.json"):
                continue
            doc = json.loads(f.read_text())
            if tool == "vllm":
                run = vllm_run(doc)
            else:
                rec = f.with_name(f.stem + ".records.json")
                run = evalctl_run(doc, json.loads(rec.read_text()) if rec.exists() else {})
            runs.setdefault((api, tool), []).append(run | server_means(f))


def table(title, cols):
    print(title)
    print(f"{'api':<12}{'tool':<9}{'runs':>4}  " + "  ".join(f"{h:>{w}}" for _, h, w in cols))
    for (api, tool), rs in runs.items():
        print(f"{api:<12}{tool:<9}{len(rs):>4}  "
              + "  ".join(f"{med(c(r) for r in rs):>{w}.2f}" for c, _, w in cols))
        if len(rs) > 1:
            print(f"{'':<25}" + "  ".join(
                f"{min(c(r) for r in rs):.2f}-{max(c(r) for r in rs):.2f}".rjust(w)
                for c, _, w in cols))
    print()


key = lambda k: lambda r: r[k]
table("Medians over the repeats of each run's figure (below: the runs' min-max).",
      [(key("ttft"), "TTFT p50 ms", 11), (key("tpot"), "TPOT p50 ms", 11),
       (key("itl"), "ITL p50 ms", 11), (key("e2el"), "E2EL p50 ms", 13),
       (key("out_tps"), "out tok/s", 13), (key("req_s"), "req/s", 11),
       (key("dur"), "dur s", 9)])
diff = lambda k: lambda r: r["mean_" + k] - r["srv_" + k]
table("Means: the client's, and the client's minus the server's own (vllm:*_seconds histograms"
      " over the same run, warmup included), median over the repeats.",
      [(key("mean_ttft"), "TTFT mean", 11), (diff("ttft"), "TTFT - srv", 11),
       (key("mean_tpot"), "TPOT mean", 11), (diff("tpot"), "TPOT - srv", 11),
       (key("mean_itl"), "ITL mean", 11), (diff("itl"), "ITL - srv", 11),
       (key("mean_e2el"), "E2EL mean", 11), (diff("e2el"), "E2EL - srv", 11)])
print("Diagnostics (medians over the repeats):")
for (api, tool), rs in runs.items():
    fig = lambda k: med(r[k] for r in rs)
    print(f"{api:<12}{tool:<9} completed {fig('done'):.0f}, input tokens "
          f"{fig('in_tok'):.0f}, output tokens {fig('out_tok'):.0f}, "
          f"ITL gaps per request {fig('gaps'):.0f}, mean requests in flight {fig('inflight'):.2f}"
          + (f", TTFT to the 2nd chunk with choices p50 {fig('ttft2'):.2f} ms"
             if tool == "vllm" and api == "chat" else ""))
EOF
} | tee "$out/summary.txt"
log "raw results, logs and summary.txt in $out"
