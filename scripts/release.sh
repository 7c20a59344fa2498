#!/usr/bin/env bash
# Builds the release binaries and writes what ships into a folder (default dist/):
#
#   dist/evalctl, dist/evalctl-agent, dist/evalctl-coordinator   stripped of debug info (their
#                                                                symbol tables stay, so a panic's
#                                                                backtrace still names functions)
#   dist/<binary>.debug                                          the debug info (line tables),
#                                                                linked from the binary by
#                                                                .gnu_debuglink
#
# With the .debug file beside its binary, panic backtraces (RUST_BACKTRACE=1), gdb and addr2line
# show file and line; without it they show function names. Keep the .debug files of every build
# you ship: they are what turns a crash report into source lines (README: "Symbols for a crash
# report").
#
# Usage: scripts/release.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
target=${CARGO_TARGET_DIR:-target}
bins=(evalctl evalctl-agent evalctl-coordinator)

command -v objcopy >/dev/null || {
  echo "release.sh: objcopy not found (hint: apt-get install binutils)" >&2
  exit 1
}
cargo build --release --locked --bins
mkdir -p "$out"
for bin in "${bins[@]}"; do
  built="$target/release/$bin"
  debug="$out/$bin.debug"
  objcopy --only-keep-debug "$built" "$debug"
  chmod -x "$debug"
  # --add-gnu-debuglink records the debug file's name and checksum; it is looked up beside the
  # binary, in .debug/ beside it, and under /usr/lib/debug.
  (cd "$out" && objcopy --strip-debug --add-gnu-debuglink="$bin.debug" "$OLDPWD/$built" "$bin")
  printf 'release.sh: %-22s %6s MiB  (%s.debug %s MiB)\n' "$out/$bin" \
    "$(( $(stat -c %s "$out/$bin") / 1048576 ))" "$bin" "$(( $(stat -c %s "$debug") / 1048576 ))"
done
