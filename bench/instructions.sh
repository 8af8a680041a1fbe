#!/usr/bin/env bash
# User-space instructions per proxied request, nginx vs portico, counted by
# valgrind's callgrind: a deterministic figure (about 0.3% between runs)
# for changes too small for the wall-clock benchmark's noise to show.
#   ./dev bench-instructions [--requests N] [--close] [--tls]
# Each proxy runs under callgrind in front of one nginx origin; after 300
# warm-up requests the counters are zeroed, N keep-alive requests go through
# 4 connections (bench/ka_client.py), and the counters are dumped.
# --close: a new connection per request (`Connection: close`, 4 at a time).
# --tls: HTTPS listeners (TLS 1.3, the same self-signed RSA-2048 certificate
# for both); with --close every request is a full handshake.
# Kernel time is not counted: wall-clock CPU is bench/run.sh's job.
# BENCH_CALLGRIND_ARGS: more valgrind options (e.g. "--cache-sim=yes
# --branch-sim=yes"); BENCH_KEEP=DIR: the callgrind files are copied to DIR;
# BENCH_PORT_BASE: first of 3 ports (default 18170).
set -euo pipefail
cd "$(dirname "$0")/.."
N=3000
MODE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N=${2:?}; shift ;;
    --close) MODE+=(close) ;;
    --tls) MODE+=(tls) ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
  shift
done
PORTICO_BIN=${PORTICO_BIN:-$PWD/target/release/portico}
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --bin portico
BASE=${BENCH_PORT_BASE:-18170}
# shellcheck source=bench/pair.sh
. bench/pair.sh
keep() { [ -z "${BENCH_KEEP:-}" ] || { mkdir -p "$BENCH_KEEP"; cp "$SCRATCH"/*.cg* "$BENCH_KEEP"/; }; }
trap 'keep; pair_cleanup' EXIT
# count NAME PORT CMD... : prints instructions per request
count() {
  local name=$1 port=$2; shift 2
  (valgrind --tool=callgrind ${BENCH_CALLGRIND_ARGS:-} --callgrind-out-file="$SCRATCH/$name.%p.cg" "$@" >"$SCRATCH/$name.vg.log" 2>&1 &)
  wait_up "$port"
  python3 bench/ka_client.py "$port" 300 4 "${MODE[@]}" >/dev/null
  local pid; pid=$(pgrep -f "callgrind-out-file=$SCRATCH/$name" | head -1)
  callgrind_control -z "$pid" >/dev/null 2>&1
  python3 bench/ka_client.py "$port" "$N" 4 "${MODE[@]}" >/dev/null
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  local ir; ir=$(grep -h '^summary:' "$SCRATCH/$name".*.cg.1 | awk '{print $2}')
  kill -INT "$pid" 2>/dev/null || true
  echo $((ir / N))
}
ng=$(count nginx "$NGINX_PORT" nginx -c "$SCRATCH/proxy.conf" -p "$SCRATCH")
po=$(count portico "$PORTICO_PORT" "$PORTICO_BIN" -c "$SCRATCH/portico.yaml")
echo "### User-space instructions per proxied request: $(date -u '+%Y-%m-%d %H:%M') UTC"
echo
how="$N keep-alive requests over 4 connections"
[[ " ${MODE[*]} " == *" close "* ]] && how="$N requests, each on a new connection (4 at a time)"
[[ " ${MODE[*]} " == *" tls "* ]] && how="$how, HTTPS (TLS 1.3, RSA-2048)"
echo "$how, one origin, callgrind; portico: $(basename "$PORTICO_BIN") ($(git rev-parse --short HEAD))."
echo
echo "| nginx | portico | portico ÷ nginx |"
echo "|--:|--:|--:|"
awk -v n="$ng" -v p="$po" 'BEGIN{printf "| %d | %d | %.2fx |\n", n, p, p/n}'
