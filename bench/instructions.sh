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
# --branch-sim=yes"); BENCH_KEEP=DIR: the callgrind files are copied to DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=3000
MODE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N=${2:?}; shift ;;
    --close) MODE+=(close) ;;
    --tls) MODE+=(tls) ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
  shift
done
PORTICO_BIN=${PORTICO_BIN:-$PWD/target/release/portico}
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --bin portico
BASE=${BENCH_BASE_PORT:-18170}
ORIGIN=$((BASE + 1)) NGINX_PORT=$((BASE + 2)) PORTICO_PORT=$((BASE + 3))
SCRATCH=$(mktemp -d /tmp/portico-instr.XXXXXX)
cleanup() { pkill -f "$SCRATCH" 2>/dev/null || true; sleep 0.5; pkill -9 -f "$SCRATCH" 2>/dev/null || true; }
trap 'cleanup; [ -z "${BENCH_KEEP:-}" ] || { mkdir -p "$BENCH_KEEP"; cp "$SCRATCH"/*.cg* "$BENCH_KEEP"/; }' EXIT
nginx_conf() { # NAME BODY
  mkdir -p "$SCRATCH/$1"
  cat >"$SCRATCH/$1.conf" <<EOC
worker_processes 1;
master_process off;
daemon off;
pid $SCRATCH/$1.pid;
error_log $SCRATCH/$1.error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $SCRATCH/$1/body; proxy_temp_path $SCRATCH/$1/proxy;
    fastcgi_temp_path $SCRATCH/$1/fcgi; uwsgi_temp_path $SCRATCH/$1/uwsgi; scgi_temp_path $SCRATCH/$1/scgi;
    access_log off;
    $2
}
EOC
}
LISTEN_TLS="" NGINX_TLS="" PORTICO_TLS="" SCHEME=http
if [[ " ${MODE[*]} " == *" tls "* ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$SCRATCH/tls.key" -out "$SCRATCH/tls.crt" -days 2 \
    -subj /CN=localhost >/dev/null 2>&1
  LISTEN_TLS=" ssl" SCHEME=https
  NGINX_TLS="ssl_certificate $SCRATCH/tls.crt; ssl_certificate_key $SCRATCH/tls.key; ssl_protocols TLSv1.2 TLSv1.3;"
  PORTICO_TLS=", tls: { certificates: [{ cert: $SCRATCH/tls.crt, key: $SCRATCH/tls.key }] }"
fi
nginx_conf origin "keepalive_requests 1000000; server { listen 127.0.0.1:$ORIGIN; location / { return 200 \"ok\"; } }"
nginx_conf proxy "upstream backend { server 127.0.0.1:$ORIGIN; keepalive 64; }
    server { listen 127.0.0.1:$NGINX_PORT$LISTEN_TLS; $NGINX_TLS location / { proxy_pass http://backend; proxy_http_version 1.1;
        proxy_set_header Connection \"\"; proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
cat >"$SCRATCH/portico.yaml" <<EOC
server: { threads: 1, pid_file: $SCRATCH/p.pid, upgrade_sock: $SCRATCH/u.sock, grace_period: 1s, graceful_shutdown_timeout: 1s }
listeners: [{ listen: "127.0.0.1:$PORTICO_PORT"$PORTICO_TLS }]
upstreams: { backend: { keepalive: 64, servers: [{ address: "127.0.0.1:$ORIGIN" }] } }
virtual_hosts: [{ default: true, locations: [{ path: /, proxy_pass: backend }] }]
access_log: "off"
EOC
(nginx -c "$SCRATCH/origin.conf" -p "$SCRATCH" >/dev/null 2>&1 &)
# count NAME PORT CMD... : prints instructions per request
count() {
  local name=$1 port=$2; shift 2
  (valgrind --tool=callgrind ${BENCH_CALLGRIND_ARGS:-} --callgrind-out-file="$SCRATCH/$name.%p.cg" "$@" >"$SCRATCH/$name.vg.log" 2>&1 &)
  for _ in $(seq 600); do curl -skf "$SCHEME://127.0.0.1:$port/" >/dev/null && break; sleep 0.2; done
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
