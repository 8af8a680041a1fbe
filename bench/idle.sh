#!/usr/bin/env bash
# Memory per idle connection, Portico vs nginx. See bench/README.md.
#
#   ./dev bench-idle [--conns N] [--ws-conns M] [--tls-conns T] [--tcp-conns C] [--runs R]
#
# For each proxy (nginx one worker, portico one thread, as in run.sh): open N
# keep-alive client connections through it (one request each, then idle),
# then M WebSocket upgrades left idle, then T HTTPS keep-alive connections
# (TLS 1.3, one request each), then C connections through a TCP (layer 4)
# listener (nginx's stream module; one request each through the relayed
# bytes, then idle, each holding its own server connection), and report the proxy's RSS growth per
# connection (bench/idle.py does the opening and measuring). 127.0.0.1 only;
# every step is time-limited. With --runs R the whole sequence runs R times
# and each cell is the median, with the lowest and highest figure: how much
# an allocator keeps after a burst varies from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=10000
WS_CONNS=2000
TLS_CONNS=2000
TCP_CONNS=2000
RUNS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) CONNS=${2:?}; shift ;;
    --ws-conns) WS_CONNS=${2:?}; shift ;;
    --tls-conns) TLS_CONNS=${2:?}; shift ;;
    --tcp-conns) TCP_CONNS=${2:?}; shift ;;
    --runs) RUNS=${2:?}; shift ;;
    *) echo "bench-idle: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

BASE=${BENCH_PORT_BASE:-18100}
ORIGIN=$((BASE + 51)) WS_ORIGIN=$((BASE + 52)) NGINX=$((BASE + 53)) PORTICO=$((BASE + 54))
NGINX_TLS=$((BASE + 55)) PORTICO_TLS=$((BASE + 56)) NGINX_TCP=$((BASE + 57)) PORTICO_TCP=$((BASE + 58))
STAMP=$(date -u +%Y-%m-%d_%H%M%S)
DIR=$PWD/bench/out/idle-$STAMP
mkdir -p "$DIR/tmp"
PORTICO_BIN=${PORTICO_BIN:-$PWD/target/dist/portico}
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  cargo build --profile dist --bin portico
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

USER_LINE=""
[ "$(id -u)" = 0 ] && USER_LINE="user $(id -un) $(id -gn);"
nginx_conf() { # NAME BODY
  cat >"$DIR/$1.conf" <<EOF
$USER_LINE
worker_processes 1;
worker_rlimit_nofile 50000;
daemon off;
pid $DIR/$1.pid;
error_log $DIR/$1.error.log warn;
events { worker_connections 25000; }
http {
    client_body_temp_path $DIR/tmp/body; proxy_temp_path $DIR/tmp/proxy;
    fastcgi_temp_path $DIR/tmp/fcgi; uwsgi_temp_path $DIR/tmp/uwsgi; scgi_temp_path $DIR/tmp/scgi;
    access_log off;
    keepalive_timeout 300s;
$2
}
EOF
}
# One certificate for both proxies' HTTPS listeners (P-256: quick handshakes).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$DIR/tls.key" \
  -out "$DIR/tls.crt" -days 2 -subj /CN=localhost >/dev/null 2>&1
nginx_conf origin "    server { listen 127.0.0.1:$ORIGIN; location / { return 200 \"ok\"; } }"
nginx_conf proxy "    upstream app { server 127.0.0.1:$ORIGIN; keepalive 64; }
    upstream ws { server 127.0.0.1:$WS_ORIGIN; }
    server {
        listen 127.0.0.1:$NGINX;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
        location /ws {
            proxy_pass http://ws; proxy_http_version 1.1; proxy_read_timeout 1h;
            proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection upgrade;
        }
    }
    server {
        listen 127.0.0.1:$NGINX_TLS ssl;
        ssl_certificate $DIR/tls.crt; ssl_certificate_key $DIR/tls.key; ssl_protocols TLSv1.3;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
cat >"$DIR/proxy_tcp.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
$USER_LINE
worker_processes 1;
worker_rlimit_nofile 50000;
daemon off;
pid $DIR/proxy_tcp.pid;
error_log $DIR/proxy_tcp.error.log warn;
events { worker_connections 25000; }
stream { server { listen 127.0.0.1:$NGINX_TCP; proxy_pass 127.0.0.1:$ORIGIN; } }
EOF
cat >"$DIR/portico.yaml" <<EOF
server: { threads: 1, keepalive_timeout: 300s,${BENCH_IDLE_SERVER:+ $BENCH_IDLE_SERVER,} pid_file: $DIR/p.pid, upgrade_sock: $DIR/u.sock }
listeners:
  - { listen: "127.0.0.1:$PORTICO" }
  - { listen: "127.0.0.1:$PORTICO_TLS", tls: { certificates: [{ cert: $DIR/tls.crt, key: $DIR/tls.key }], http2: false } }
tcp:
  - { listen: "127.0.0.1:$PORTICO_TCP", proxy_pass: app }
access_log: "off"
upstreams:
  app: { keepalive: 64, servers: [{ address: "127.0.0.1:$ORIGIN" }] }
  ws: { servers: [{ address: "127.0.0.1:$WS_ORIGIN" }] }
virtual_hosts:
  - default: true
    locations:
      - { path: /, proxy_pass: app }
      - { path: /ws, proxy_pass: ws }
EOF

nginx -c "$DIR/origin.conf" -p "$DIR" >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

# measure NAME PORT KIND: start the proxy, open the connections, stop it.
measure() {
  local name=$1 port=$2 ws=$3 pid pids
  if [ "$name" = nginx ]; then
    local conf=$DIR/proxy.conf
    [ "$ws" = tcp ] && conf=$DIR/proxy_tcp.conf
    nginx -c "$conf" -p "$DIR" >/dev/null 2>&1 &
  else
    "$PORTICO_BIN" -c "$DIR/portico.yaml" >"$DIR/portico.out" 2>&1 &
  fi
  pid=$!
  PIDS+=("$pid")
  sleep 1
  pids=$pid
  for c in $(ps -o pid= --ppid "$pid" | tr -d ' '); do pids="$pids,$c"; done
  local args=(--port "$port" --pids "$pids" --conns "$CONNS")
  case "$ws" in
    ws) args=(--port "$port" --pids "$pids" --conns "$WS_CONNS" --ws --ws-port "$WS_ORIGIN") ;;
    tls) args=(--port "$port" --pids "$pids" --conns "$TLS_CONNS" --tls) ;;
    tcp) args=(--port "$port" --pids "$pids" --conns "$TCP_CONNS") ;;
  esac
  timeout 300 python3 bench/idle.py "${args[@]}" | tee -a "$DIR/raw.txt" |
    awk -v n="$name" -v k="$ws" '{for(i=1;i<=NF;i++){split($i,a,"="); v[a[1]]=a[2]}
      printf "%s %s %s %s %s\n", n, k, v["ok"], v["conns"], v["kib_per_conn"]}' >>"$DIR/rows.txt"
  kill -INT "$pid" 2>/dev/null || true
  sleep 1
}

: >"$DIR/rows.txt"
for _ in $(seq "$RUNS"); do
  for kind in ka ws tls tcp; do
    case "$kind" in
      tls) measure nginx "$NGINX_TLS" "$kind"; measure portico "$PORTICO_TLS" "$kind" ;;
      tcp) measure nginx "$NGINX_TCP" "$kind"; measure portico "$PORTICO_TCP" "$kind" ;;
      *) measure nginx "$NGINX" "$kind"; measure portico "$PORTICO" "$kind" ;;
    esac
  done
done

RUNS_NOTE=""
[ "$RUNS" -gt 1 ] && RUNS_NOTE="; each cell the median of $RUNS runs (lowest-highest)"
{
  echo "### Idle connections: $(date -u '+%Y-%m-%d %H:%M') UTC"
  echo
  echo "$(nproc) CPUs; nginx \`worker_processes 1\`, portico \`threads: 1\` ($(basename "$(dirname "$PORTICO_BIN")") build, $(git rev-parse --short HEAD)). RSS growth of the proxy process(es) per connection$RUNS_NOTE."
  echo
  echo "| | nginx | portico | portico ÷ nginx |"
  echo "|---|--:|--:|--:|"
  awk -v runs="$RUNS" '{key = $1 " " $2; c[key]++; v[key, c[key]] = $5; ok[key] = $3; n[$2] = $4}
    # The median of a row, its lowest and highest in lo[] and hi[].
    function median(key,   m, i, j, t, a) {
      m = c[key]
      for (i = 1; i <= m; i++) a[i] = v[key, i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      lo[key] = a[1]; hi[key] = a[m]
      return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    function cell(key, med) {
      return (runs > 1) ? sprintf("%.1f KiB (%.1f-%.1f)", med, lo[key], hi[key]) : sprintf("%.1f KiB", med)
    }
    END {
      split("ka ws tls tcp", kinds, " ")
      for (i = 1; i <= 4; i++) {
        t = kinds[i]
        label = (t == "ka") ? n[t] " idle keep-alive connections" : (t == "ws") ? n[t] " idle WebSockets" : (t == "tls") ? n[t] " idle HTTPS keep-alive connections" : n[t] " idle connections through a TCP listener"
        ng = median("nginx " t); po = median("portico " t)
        printf "| %s (opened: nginx %s, portico %s) | %s | %s | %.1fx |\n", label, ok["nginx " t], ok["portico " t], cell("nginx " t, ng), cell("portico " t, po), (ng > 0 ? po / ng : 0)
      }
    }' "$DIR/rows.txt"
} | tee "$DIR/results.md"
