#!/usr/bin/env bash
# Where a proxied request's CPU goes, nginx vs portico: both proxies
# profiled with `perf record` under the same wrk load, one after the other,
# and their profiles set side by side in CPU microseconds per request.
#   ./dev bench-profile [--close] [--tls] [--pace-ms M] [--conns C] [--duration S] [--period-us P]
# The proxies are those of bench-instructions (bench/pair.sh: one origin,
# nginx one worker, portico one thread, alike configured). Each is warmed up
# for 1 s, then sampled for S seconds (default 5) of `wrk -t2 -cC` (default
# 64 connections): one sample per P µs of its CPU (default 1000), with DWARF
# call stacks. --close: a new connection per request; --tls: HTTPS;
# --pace-ms M: each connection waits M ms before each request (bench/paced.lua,
# the benchmark's paced64 mode: both proxies offered the same load).
# Writes bench/out/profile-<date>/: report.md (also printed), NAME.data
# (perf report -i ...), and when inferno is installed (`cargo install
# inferno`) NAME.folded and NAME.svg, flamegraphs of each proxy.
# PORTICO_BIN: the binary (default target/dist/portico, built unless
# BENCH_NO_BUILD is set); BENCH_PORT_BASE: first of 4 ports (default 18190).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=()
CONNS=64
DURATION=5
PERIOD_US=1000
PACE_MS=
while [ $# -gt 0 ]; do
  case "$1" in
    --close) MODE+=(close) ;;
    --tls) MODE+=(tls) ;;
    --conns) CONNS=${2:?}; shift ;;
    --duration) DURATION=${2:?}; shift ;;
    --period-us) PERIOD_US=${2:?}; shift ;;
    --pace-ms) PACE_MS=${2:?}; shift ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
  shift
done
for n in "$CONNS" "$DURATION" "$PERIOD_US"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-profile: '$n' is not a positive whole number" >&2; exit 2; }
done
[[ -z "$PACE_MS" || "$PACE_MS" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench-profile: --pace-ms takes milliseconds, like 1.5" >&2; exit 2; }
for tool in perf wrk nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-profile: '$tool' not found" >&2; exit 1; }
done
PORTICO_BIN=${PORTICO_BIN:-$PWD/target/dist/portico}
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --profile dist --bin portico
OUT=$PWD/bench/out/profile-$(date -u +%Y-%m-%d_%H%M%S)
mkdir -p "$OUT"
BASE=${BENCH_PORT_BASE:-18190}
# shellcheck source=bench/pair.sh
. bench/pair.sh
HEADER=()
[[ " ${MODE[*]} " == *" close "* ]] && HEADER=(-H "Connection: close")
SCRIPT=() PACED=()     # the sampled run's wrk script, and its argument (after the URL)
[ -n "$PACE_MS" ] && SCRIPT=(-s "$PWD/bench/paced.lua") && PACED=(-- "$PACE_MS")

# profile NAME PORT CMD...: prints the requests served while sampled
profile() {
  local name=$1 port=$2; shift 2
  "$@" >"$SCRATCH/$name.out" 2>&1 &
  local pid=$!
  wait_up "$port"
  wrk -t2 -c"$CONNS" -d1s "${HEADER[@]}" "$SCHEME://127.0.0.1:$port/" >/dev/null
  perf record -q -e cpu-clock -c $((PERIOD_US * 1000)) --call-graph dwarf,16384 -p "$pid" \
    -o "$OUT/$name.data" -- sleep "$DURATION" >"$OUT/$name.perf.log" 2>&1 &
  local perf_pid=$!
  wrk -t2 -c"$CONNS" -d"${DURATION}s" "${HEADER[@]}" "${SCRIPT[@]}" "$SCHEME://127.0.0.1:$port/" "${PACED[@]}" >"$OUT/$name.wrk"
  wait "$perf_pid"
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  awk '/requests in/ { print $1 }' "$OUT/$name.wrk"
}
ng=$(profile nginx "$NGINX_PORT" nginx -c "$SCRATCH/proxy.conf" -p "$SCRATCH")
po=$(profile portico "$PORTICO_PORT" "$PORTICO_BIN" -c "$SCRATCH/portico.yaml")
for name in nginx portico; do
  [ -s "$OUT/$name.data" ] || {
    echo "bench-profile: perf recorded nothing for $name: $(cat "$OUT/$name.perf.log" 2>/dev/null)" >&2
    echo "  (perf needs root or kernel.perf_event_paranoid <= 1)" >&2
    exit 1
  }
done

how="keep-alive, $CONNS connections"
[[ " ${MODE[*]} " == *" close "* ]] && how="a new connection per request, $CONNS at a time"
[[ " ${MODE[*]} " == *" tls "* ]] && how="$how, HTTPS (TLS 1.3, RSA-2048)"
[ -n "$PACE_MS" ] && how="$how, each waiting $PACE_MS ms before each request"
{
  echo "### Where the CPU goes, nginx vs portico: $(date -u '+%Y-%m-%d %H:%M') UTC"
  echo
  echo "$how; wrk -t2, ${DURATION} s each; perf cpu-clock, one sample per $PERIOD_US µs of CPU;"
  echo "portico: $PORTICO_BIN ($(git rev-parse --short HEAD)). Sampling slows both proxies a little."
  echo
  python3 bench/perf_table.py 20 "$OUT/nginx.data:nginx:nginx:$ng" \
    "$OUT/portico.data:portico:$(basename "$PORTICO_BIN"):$po"
} >"$OUT/report.md"
cat "$OUT/report.md"

if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
  for name in nginx portico; do
    perf script -i "$OUT/$name.data" 2>/dev/null | inferno-collapse-perf >"$OUT/$name.folded"
    inferno-flamegraph --title "$name, $how" <"$OUT/$name.folded" >"$OUT/$name.svg"
  done
  echo "flamegraphs: $OUT/nginx.svg $OUT/portico.svg"
else
  echo "no flamegraphs: inferno is not installed (cargo install inferno)"
fi
echo "profiles: $OUT/nginx.data $OUT/portico.data (perf report -i FILE)"
