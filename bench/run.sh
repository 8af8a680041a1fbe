#!/usr/bin/env bash
# Portico vs nginx, side by side, on one machine. See bench/README.md.
#
#   ./dev bench [--smoke] [--rounds N] [--duration S] [--pace-ms P]
#
# One nginx origin (`return 200 "ok"` on two ports, 1 worker) stays up for
# the whole run. Each round then starts every contender in turn, drives it
# with wrk and stops it again:
#
#   direct          wrk straight to the origin (the limit)
#   nginx_*         nginx one-hop proxy, worker_processes 1: access log off/on, the plugins' equivalent,
#                   a path rewrite, gzip, HTTPS, TCP (stream)
#   portico_*       portico, threads 1: round_robin (log off/on), least_conn, sticky, plugins, rewrite,
#                   gzip, HTTPS, TCP
#
# Per contender and mode it records req/s, p50/p99/p99.9 latency, proxy CPU
# time per request (/proc/PID/stat utime+stime), peak RSS (VmHWM) and some
# sanity counters, then prints medians over the rounds as markdown tables.
# Everything listens on 127.0.0.1 and every step is time-limited.
set -euo pipefail

cd "$(dirname "$0")/.."            # repository root
BENCH_DIR=bench
OUT_DIR=bench/out

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
  --smoke        1 round, 1 s per run, ka64 and paced64 only; fails unless every contender answered
  --rounds N     alternating rounds; medians are taken over them (default 3)
  --duration S   seconds per wrk run (default 5)
  --pace-ms P    paced64 mode: each connection waits P ms (mean; fractions allowed) before each request (default 1.5)
  env BENCH_PORT_BASE   first of the local ports used (default 18100; uses +1..+3, +10, +20)
  env BENCH_MODES       a subset of the modes, e.g. "ka64 paced64" (default: all four)
  env BENCH_MAX_FAILS   set max_fails on both pool servers, for nginx and portico alike
                        (default: unset, each proxy's default, which is 1 for both)
EOF
}

# ---------------------------------------------------------------- arguments

SMOKE=0
ROUNDS=3
DURATION=5
PACE_MS=1.5
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift ;;
    --pace-ms) PACE_MS=${2:?--pace-ms needs milliseconds}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then
  ROUNDS=1
  DURATION=1
  MODES=(ka64 paced64)
else
  MODES=(ka64 ka256 close64 paced64)
  if [ -n "${BENCH_MODES:-}" ]; then
    read -r -a MODES <<<"$BENCH_MODES"
    for m in "${MODES[@]}"; do
      [[ " ka64 ka256 close64 paced64 " == *" $m "* ]] || { echo "bench: unknown mode '$m' in BENCH_MODES (ka64 ka256 close64 paced64)" >&2; exit 2; }
    done
  fi
fi
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --rounds must be a positive integer" >&2; exit 2; }
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --duration must be whole seconds >= 1" >&2; exit 2; }
[[ "$PACE_MS" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench: --pace-ms must be a number of milliseconds, like 1.5" >&2; exit 2; }

for tool in nginx wrk cargo ps timeout; do
  command -v "$tool" >/dev/null || { echo "bench: '$tool' not found (./dev bench installs nginx and wrk)" >&2; exit 1; }
done

# Ports: origin on +1 and +2 (the pool's two servers), the origin's
# stub_status on +3, the nginx proxy on +10, portico on +20.
BASE=${BENCH_PORT_BASE:-18100}
ORIGIN1=$((BASE + 1))
ORIGIN2=$((BASE + 2))
ORIGIN_STATUS=$((BASE + 3))
NGINX_PORT=$((BASE + 10))
PORTICO_PORT=$((BASE + 20))

# Optional passive-health override, applied to nginx and portico alike.
MAX_FAILS=${BENCH_MAX_FAILS:-}
[[ -z "$MAX_FAILS" || "$MAX_FAILS" =~ ^[0-9]+$ ]] || { echo "bench: BENCH_MAX_FAILS must be a number" >&2; exit 2; }
NGINX_SERVER_OPTS=${MAX_FAILS:+ max_fails=$MAX_FAILS}
PORTICO_SERVER_OPTS=${MAX_FAILS:+, max_fails: $MAX_FAILS}

CLK_TCK=$(getconf CLK_TCK)
STAMP=$(date +%Y-%m-%d_%H%M%S)
SCRATCH="$PWD/$OUT_DIR/run-$STAMP"        # configs, wrk output, logs, raw numbers
RAW="$SCRATCH/raw.tsv"
NOTES="$SCRATCH/notes.txt"                 # anything odd, appended to the results
RESULTS="$OUT_DIR/results-$STAMP$([ "$SMOKE" = 1 ] && echo -smoke || true).md"
WRK_LUA="$PWD/$BENCH_DIR/stats.lua"
WRK_PACED_LUA="$PWD/$BENCH_DIR/paced.lua"     # paced64: stats.lua plus a wait before each request
# The production build (`dist` profile: fat LTO, one codegen unit; see
# Cargo.toml); --smoke only checks the harness, so it uses the test build.
# The smoke test in tests/bench_smoke.rs passes the binary cargo built for it.
if [ "$SMOKE" = 1 ]; then PROFILE=release; else PROFILE=dist; fi
PORTICO_BIN="${PORTICO_BIN:-$PWD/target/$PROFILE/portico}"

log() { printf '%s\n' "$*" >&2; }
note() { printf -- '- %s\n' "$*" >>"$NOTES"; log "bench: NOTE: $*"; }
die() { log "bench: $*"; exit 1; }

# ------------------------------------------------------- process handling
#
# Every process we start is remembered in STARTED (pid -> name) and stopped
# by the EXIT trap if still running, so an error or Ctrl-C leaves nothing
# behind. nginx runs with `daemon off`, so $! is its master process.

declare -A STARTED=()

children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

# stop PID SIGNAL: send SIGNAL, wait up to 10 s, then SIGKILL it and any
# children it left behind. Returns 1 if it had to be killed.
stop_pid() {
  local pid=$1 sig=$2 kids i
  kids=$(children_of "$pid")
  kill -s "$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" $kids 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "STARTED[$pid]"
    return 1
  fi
  wait "$pid" 2>/dev/null || true
  # nginx workers exit with their master; make sure of it (only if the pid
  # still belongs to an nginx process, not to something that reused it).
  for i in $kids; do
    if [ "$(cat "/proc/$i/comm" 2>/dev/null)" = nginx ]; then kill -KILL "$i" 2>/dev/null || true; fi
  done
  unset "STARTED[$pid]"
  return 0
}

# The fast shutdown: SIGINT for portico (its SIGTERM waits the grace period),
# SIGTERM for nginx.
stop_signal() { case "$1" in portico_*) echo INT ;; *) echo TERM ;; esac; }

cleanup() {
  local pid
  for pid in "${!STARTED[@]}"; do
    log "bench: stopping ${STARTED[$pid]} (pid $pid)"
    stop_pid "$pid" "$(stop_signal "${STARTED[$pid]}")" || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SCHEME=http                      # https for the *_tls contenders
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_get PORT PATH: the whole HTTP/1.0 response, or nothing (2 s limit).
http_get() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" &&
    printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$1" >&3 && cat <&3' "$1" "$2" 2>/dev/null || true
}

# wait_ready NAME PID PORT: until GET / on PORT answers 200 with body "ok"
# (i.e. the request really went through to the origin); 10 s limit.
wait_ready() {
  local name=$1 pid=$2 port=$3 i resp
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited during startup; see $SCRATCH/$name.err"
    if [ "$SCHEME" = https ]; then
      resp=$(curl -sk -m 2 -i "https://127.0.0.1:$port/" 2>/dev/null | tr -d '\r' || true)
    else
      resp=$(http_get "$port" /)
    fi
    if [[ "$resp" == "HTTP/1."?" 200"* && "$resp" == *ok ]]; then return 0; fi
    sleep 0.1
  done
  die "$name did not answer 200 \"ok\" on 127.0.0.1:$port within 10 s; last answer: ${resp:-none}"
}

# start_nginx NAME CONF PORT: start nginx (daemon off, so it stays our child),
# wait until it proxies, and leave its master pid in START_PID.
start_nginx() {
  local name=$1 conf=$2 port=$3 pid
  nginx -t -q -c "$conf" -p "$SCRATCH/" -e "$SCRATCH/$name.error.log" \
    || die "nginx rejected $conf"
  nginx -c "$conf" -p "$SCRATCH/" -e "$SCRATCH/$name.error.log" \
    >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.err" &
  pid=$!
  STARTED[$pid]=$name
  wait_ready "$name" "$pid" "$port"
  START_PID=$pid
}

# start_portico NAME CONF: the same for portico.
start_portico() {
  local name=$1 conf=$2 pid
  "$PORTICO_BIN" -c "$conf" >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.err" &
  pid=$!
  STARTED[$pid]=$name
  wait_ready "$name" "$pid" "$PORTICO_PORT"
  START_PID=$pid
}

# --------------------------------------------------------- /proc readings

# Process CPU time (utime + stime, all threads, in clock ticks): fields 14
# and 15 of /proc/PID/stat, counted after the ")" that ends field 2.
# Left in PROC_SUM, with the utime part in PROC_USER.
proc_ticks() {
  local sum=0 user=0 pid line
  local -a f
  for pid in "$@"; do
    read -r line <"/proc/$pid/stat"
    read -r -a f <<<"${line##*) }"      # f[0] is field 3
    sum=$((sum + f[11] + f[12]))
    user=$((user + f[11]))
  done
  PROC_SUM=$sum PROC_USER=$user
}

# Sum of VmHWM (peak resident set, kB) over the given processes.
proc_hwm_kb() {
  local sum=0 pid k v _
  for pid in "$@"; do
    while read -r k v _; do
      [ "$k" = "VmHWM:" ] && sum=$((sum + v))
    done <"/proc/$pid/status"
  done
  echo "$sum"
}

# Writing 5 to clear_refs resets VmHWM to the current RSS, so each mode
# reports its own peak rather than the peak of everything before it.
HWM_RESET_OK=1
reset_hwm() {
  local pid
  for pid in "$@"; do
    echo 5 2>/dev/null >"/proc/$pid/clear_refs" || HWM_RESET_OK=0
  done
}

# CPU used by this shell's finished children (wrk among them), in ms, into
# REPLY. It must run in this shell, not in $( ), hence the global.
children_ms() {
  local u s t
  times >"$SCRATCH/.times"
  { read -r _ _; read -r u s; } <"$SCRATCH/.times"
  REPLY=0
  for t in "$u" "$s"; do                  # "1m2.345s"
    local m=${t%%m*} sec=${t#*m}
    sec=${sec%s}
    REPLY=$((REPLY + m * 60000 + 10#${sec/./}))
  done
}

# Machine-wide CPU ticks into MACH_BUSY (user+nice+system+irq+softirq),
# MACH_STEAL and MACH_TOTAL, from the first line of /proc/stat.
machine_ticks() {
  local _cpu user nice system idle iowait irq softirq steal _rest
  read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
  MACH_BUSY=$((user + nice + system + irq + softirq))
  MACH_STEAL=$steal
  MACH_TOTAL=$((user + nice + system + idle + iowait + irq + softirq + steal))
}

# Connections the origin has accepted so far (nginx stub_status).
origin_accepts() {
  http_get "$ORIGIN_STATUS" /status | awk '$1 ~ /^[0-9]+$/ && NF == 3 { print $1; exit }'
}

# ------------------------------------------------------------ configs

mkdir -p "$SCRATCH/tmp"
: >"$NOTES"

# Run as root, nginx would drop its workers to `nobody`; keep them under
# the same user as portico.
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user $(id -un) $(id -gn);"

# nginx_common NAME: the lines every nginx here shares (all state in SCRATCH).
nginx_common() {
  cat <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
pid $SCRATCH/$1.pid;
error_log $SCRATCH/$1.error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_temp_paths() {
  local d=$SCRATCH/tmp/$1
  mkdir -p "$d"
  cat <<EOF
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
EOF
}

# The page the gzip contenders fetch (rewritten to /page): 2.6 KB of HTML,
# ending in "ok" like every other answer (wait_ready asks over HTTP/1.0,
# which neither proxy compresses).
PAGE=$(for i in $(seq 1 60); do printf '<p>paragraph %02d of the benchmark page</p>\n' "$i"; done)ok

# The origin: as cheap as nginx gets. keepalive_requests is raised so the
# origin never closes a kept-alive connection (the proxies keep their own
# defaults); stub_status on a separate port counts accepted connections.
cat >"$SCRATCH/origin.conf" <<EOF
$(nginx_common origin)
http {
$(nginx_temp_paths origin)
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$ORIGIN1;
        listen 127.0.0.1:$ORIGIN2;
        location / { return 200 "ok"; }
        location = /page { default_type text/html; return 200 "$PAGE"; }
    }
    server {
        listen 127.0.0.1:$ORIGIN_STATUS;
        location = /status { stub_status; }
    }
}
EOF

# nginx one-hop proxy. The log format is portico's (combined plus upstream
# address, upstream time and request time) so both write the same line.
# write_nginx_proxy NAME ACCESS_LOG_DIRECTIVE [LISTEN_EXTRA] [SERVER_EXTRA] [LOCATION_EXTRA]
write_nginx_proxy() {
  cat >"$SCRATCH/$1.conf" <<EOF
$(nginx_common "$1")
http {
$(nginx_temp_paths "$1")
    log_format portico '\$remote_addr - \$remote_user [\$time_local] "\$request" '
                       '\$status \$body_bytes_sent "\$http_referer" "\$http_user_agent" '
                       '\$upstream_addr \$upstream_response_time \$request_time';
    $2
    upstream backend {
        server 127.0.0.1:$ORIGIN1$NGINX_SERVER_OPTS;
        server 127.0.0.1:$ORIGIN2$NGINX_SERVER_OPTS;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT${3:-};
        ${4:-}
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;${5:+
            $5}
        }
    }
}
EOF
}
# A self-signed certificate for the HTTPS rows (same key type for both proxies).
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$SCRATCH/tls.key" -out "$SCRATCH/tls.crt" -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1 || die "openssl could not make a test certificate"
write_nginx_proxy nginx_off "access_log off;"
write_nginx_proxy nginx_log "access_log $SCRATCH/nginx_log.access.log portico;"
# What Portico's three plugins do, in nginx's own directives: a new request id
# to the server and back to the client (request_id; the benchmark's client
# sends none to keep), the allow list (ip_access), one response field (headers).
write_nginx_proxy nginx_plugins "access_log off;" "" "" 'proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id always;
            allow 127.0.0.0/8;
            deny all;
            add_header X-Served-By portico always;'
# A path rewrite: every request goes upstream under /api/ (the origin answers any path).
write_nginx_proxy nginx_rewrite "access_log off;" "" "" 'rewrite ^/(.*)$ /api/$1 break;'
# Compression: the 2.6 KB page, gzip level 1 (nginx's default level), for a client sending Accept-Encoding: gzip.
write_nginx_proxy nginx_gzip "access_log off; gzip on; gzip_comp_level 1; gzip_proxied any; gzip_vary on;" "" "" 'rewrite ^ /page break;'
write_nginx_proxy nginx_tls "access_log off;" " ssl" "ssl_certificate $SCRATCH/tls.crt; ssl_certificate_key $SCRATCH/tls.key; ssl_protocols TLSv1.2 TLSv1.3;"

# TCP (layer 4) balancing: nginx's stream module passing the same HTTP
# bytes to the same two origin ports, round robin, nothing logged (nginx's
# stream has no access log unless one is set). Debian ships the module
# apart (libnginx-mod-stream; ./dev installs it).
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$NGINX_STREAM_MODULE" ] || die "$NGINX_STREAM_MODULE missing (apt-get install libnginx-mod-stream; ./dev bench installs it)"
cat >"$SCRATCH/nginx_tcp.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
$(nginx_common nginx_tcp)
stream {
    upstream backend {
        server 127.0.0.1:$ORIGIN1$NGINX_SERVER_OPTS;
        server 127.0.0.1:$ORIGIN2$NGINX_SERVER_OPTS;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        proxy_pass backend;
    }
}
EOF

# Portico with the equivalent setup (it sets Host, X-Real-IP and
# X-Forwarded-* itself).
# write_portico NAME ALGORITHM ACCESS_LOG [POOL_EXTRA] [TOP_EXTRA] [LISTENER_EXTRA] [LOCATION_EXTRA]
write_portico() {
  cat >"$SCRATCH/$1.yaml" <<EOF
server:
  threads: 1
  pid_file: $SCRATCH/p.pid
  upgrade_sock: $SCRATCH/u.sock
listeners:
  - listen: 127.0.0.1:$PORTICO_PORT${6:+
$6}
upstreams:
  backend:
    algorithm: $2
    keepalive: 64${4:+
    $4}
    servers:
      - { address: "127.0.0.1:$ORIGIN1"$PORTICO_SERVER_OPTS }
      - { address: "127.0.0.1:$ORIGIN2"$PORTICO_SERVER_OPTS }
virtual_hosts:
  - default: true
    locations:
      - path: /
        proxy_pass: backend${7:+
        $7}
access_log: $3${5:+
$5}
EOF
}
write_portico portico_off round_robin off
write_portico portico_log round_robin "$SCRATCH/portico_log.access.log"
write_portico portico_lc least_conn off
write_portico portico_sticky sticky off 'sticky: { secret: "0123456789abcdef0123" }'
write_portico portico_tls round_robin off '' '' "    tls: { certificates: [{ cert: $SCRATCH/tls.crt, key: $SCRATCH/tls.key }], http2: false }"
write_portico portico_rewrite round_robin off '' '' '' 'rewrite: { from: "^/(.*)$", to: "/api/$1" }'
write_portico portico_gzip round_robin off '' '' '' 'rewrite: { from: "^/.*$", to: "/page" }
        compression: { gzip: 1, types: [text/html] }'
write_portico portico_plugins round_robin off '' 'plugins:
  - request_id: {}
  - ip_access: { allow: [127.0.0.0/8] }
  - headers: { response_set: { X-Served-By: portico } }'

cat >"$SCRATCH/portico_tcp.yaml" <<EOF
server:
  threads: 1
  pid_file: $SCRATCH/p.pid
  upgrade_sock: $SCRATCH/u.sock
tcp:
  - listen: 127.0.0.1:$PORTICO_PORT
    proxy_pass: backend
upstreams:
  backend:
    servers:
      - { address: "127.0.0.1:$ORIGIN1"$PORTICO_SERVER_OPTS }
      - { address: "127.0.0.1:$ORIGIN2"$PORTICO_SERVER_OPTS }
access_log: off
EOF

# Contenders in run order: id, label, and the nginx contender its ratios use.
# BENCH_CONTENDERS="direct nginx_tls portico_tls" runs a subset (keep each
# portico contender's nginx one, and direct, for the ratios).
CONTENDERS=(direct nginx_off portico_off nginx_log portico_log portico_lc portico_sticky nginx_plugins portico_plugins nginx_rewrite portico_rewrite nginx_gzip portico_gzip nginx_tls portico_tls nginx_tcp portico_tcp)
if [ -n "${BENCH_CONTENDERS:-}" ]; then
  read -r -a CONTENDERS <<<"$BENCH_CONTENDERS"
fi
{
  printf 'direct\torigin direct (no proxy; the limit)\t-\n'
  printf 'nginx_off\tnginx proxy, access log off\t-\n'
  printf 'portico_off\tportico round_robin, access log off\tnginx_off\n'
  printf 'nginx_log\tnginx proxy, access log to file\t-\n'
  printf 'portico_log\tportico round_robin, access log to file\tnginx_log\n'
  printf 'portico_lc\tportico least_conn, access log off\tnginx_off\n'
  printf 'portico_sticky\tportico sticky (cookie insert), access log off\tnginx_off\n'
  printf 'nginx_plugins\tnginx proxy + the same (request id, allow list, response field), access log off\t-\n'
  printf 'portico_plugins\tportico + 3 plugins (request_id, ip_access, headers), access log off\tnginx_plugins\n'
  printf 'nginx_rewrite\tnginx proxy + rewrite ^/(.*)$ /api/$1 break, access log off\t-\n'
  printf 'portico_rewrite\tportico + rewrite of the path to /api/..., access log off\tnginx_rewrite\n'
  printf 'nginx_gzip\tnginx proxy, a 2.6 KB page gzipped (level 1), access log off\t-\n'
  printf 'portico_gzip\tportico, the same page gzipped (compression gzip: 1), access log off\tnginx_gzip\n'
  printf 'nginx_tls\tnginx HTTPS (TLS 1.3, HTTP/1.1), access log off\t-\n'
  printf 'portico_tls\tportico HTTPS (TLS 1.3, HTTP/1.1), access log off\tnginx_tls\n'
  printf 'nginx_tcp\tnginx stream (TCP, layer 4) round robin, no log\t-\n'
  printf 'portico_tcp\tportico tcp listener (layer 4) round robin, no log\tnginx_tcp\n'
} >"$SCRATCH/contenders.tsv"

# ------------------------------------------------------------ build, origin

for p in "$ORIGIN1" "$ORIGIN2" "$ORIGIN_STATUS" "$NGINX_PORT" "$PORTICO_PORT"; do
  port_in_use "$p" && die "port 127.0.0.1:$p is already in use; set BENCH_PORT_BASE to another range"
done

if [ -z "${BENCH_NO_BUILD:-}" ]; then
  log "bench: cargo build --profile $PROFILE --bin portico"
  cargo build --profile "$PROFILE" --bin portico || die "build failed (if src/ is being edited, retry in a minute)"
fi
[ -x "$PORTICO_BIN" ] || die "$PORTICO_BIN missing after the build"
for c in portico_off portico_log portico_lc portico_sticky portico_plugins portico_rewrite portico_gzip portico_tls portico_tcp; do
  "$PORTICO_BIN" -t -c "$SCRATCH/$c.yaml" >/dev/null 2>"$SCRATCH/$c.check" \
    || die "portico rejected $SCRATCH/$c.yaml: $(cat "$SCRATCH/$c.check")"
done

start_nginx origin "$SCRATCH/origin.conf" "$ORIGIN1"
ORIGIN_PIDS=("$START_PID" $(children_of "$START_PID"))
[ -n "$(http_get "$ORIGIN2" /)" ] || die "origin does not answer on its second port $ORIGIN2"
[ -n "$(origin_accepts)" ] || die "origin stub_status on $ORIGIN_STATUS gives no accept count"

# How busy is the machine before we start? Others' builds skew everything.
machine_ticks; b_busy=$MACH_BUSY; b_total=$MACH_TOTAL
sleep 1
machine_ticks
IDLE_BUSY_PCT=$(( (MACH_BUSY - b_busy) * 100 / (MACH_TOTAL - b_total > 0 ? MACH_TOTAL - b_total : 1) ))
if [ "$IDLE_BUSY_PCT" -gt 10 ]; then
  note "machine was ${IDLE_BUSY_PCT}% busy before the benchmark started (other processes); results are less reliable"
fi

# ------------------------------------------------------------ one measurement

printf 'round\tcontender\tmode\trequests\tduration_us\tp50_us\tp99_us\tp999_us\terr_connect\terr_read\terr_write\terr_status\terr_timeout\tproxy_ticks\torigin_ticks\twrk_ms\tmach_busy\tmach_steal\tmach_total\thwm_kb\torigin_accepts\tproxy_user_ticks\n' >"$RAW"

TOTAL_REQUESTS=0                 # per contender start, for the access-log check

# run_wrk OUTFILE DURATION CONNECTIONS PORT [wrk args...]
# With PACED=1 set for the call, wrk runs paced.lua at PACE_MS instead.
run_wrk() {
  local out=$1 dur=$2 conns=$3 port=$4 script=$WRK_LUA after=()
  shift 4
  if [ "${PACED:-0}" = 1 ]; then script=$WRK_PACED_LUA after=(-- "$PACE_MS"); fi
  timeout -k 5 "$((dur + 20))" wrk -t2 -c"$conns" -d"${dur}s" --latency -s "$script" "$@" \
    "$SCHEME://127.0.0.1:$port/" "${after[@]}" >"$out" 2>&1 || log "bench: wrk exited non-zero, see $out"
}

# measure ROUND CONTENDER MODE PORT [PROXY_PIDS...]
measure() {
  local round=$1 cid=$2 mode=$3 port=$4
  shift 4
  local pids=("$@") conns=64 extra=() paced=0 out="$SCRATCH/wrk-r$round-$cid-$mode.txt"
  case "$mode" in
    ka64) conns=64 ;;
    ka256) conns=256 ;;
    close64) conns=64; extra=(-H 'Connection: close') ;;
    paced64) conns=64; paced=1 ;;
  esac
  case "$cid" in *_gzip) extra+=(-H 'Accept-Encoding: gzip') ;; esac

  reset_hwm "${pids[@]}"
  local p0="-" pu0=0 o0 a0 w0
  if [ ${#pids[@]} -gt 0 ]; then
    proc_ticks "${pids[@]}"
    p0=$PROC_SUM pu0=$PROC_USER
  fi
  proc_ticks "${ORIGIN_PIDS[@]}"; o0=$PROC_SUM
  a0=$(origin_accepts)
  children_ms; w0=$REPLY
  machine_ticks; local mb0=$MACH_BUSY ms0=$MACH_STEAL mt0=$MACH_TOTAL

  PACED=$paced run_wrk "$out" "$DURATION" "$conns" "$port" "${extra[@]}"

  local pid
  for pid in "${pids[@]}" "${ORIGIN_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "pid $pid of $cid (or the origin) died during $mode; see $SCRATCH/*.err, *.error.log"
  done
  machine_ticks
  children_ms
  local w1=$REPLY o1 a1 p1="-" pu1="-" hwm="-"
  proc_ticks "${ORIGIN_PIDS[@]}"; o1=$PROC_SUM
  a1=$(origin_accepts)
  if [ ${#pids[@]} -gt 0 ]; then
    proc_ticks "${pids[@]}"
    p1=$((PROC_SUM - p0)) pu1=$((PROC_USER - pu0))
    hwm=$(proc_hwm_kb "${pids[@]}")
  fi

  # The Lua hook's line: requests=N duration_us=N p50_us=N ...
  local -A w=([requests]=0 [duration_us]=1 [p50_us]=0 [p99_us]=0 [p999_us]=0
              [connect]=0 [read]=0 [write]=0 [status]=0 [timeout]=0)
  local line kv
  line=$(grep -m1 '^BENCH ' "$out" || true)
  [ -n "$line" ] || note "no result line from wrk for $cid/$mode round $round (see $out)"
  for kv in ${line#BENCH }; do w[${kv%%=*}]=${kv#*=}; done
  TOTAL_REQUESTS=$((TOTAL_REQUESTS + w[requests]))

  printf '%s\t' "$round" "$cid" "$mode" "${w[requests]}" "${w[duration_us]}" \
    "${w[p50_us]}" "${w[p99_us]}" "${w[p999_us]}" "${w[connect]}" "${w[read]}" \
    "${w[write]}" "${w[status]}" "${w[timeout]}" "$p1" "$((o1 - o0))" "$((w1 - w0))" \
    "$((MACH_BUSY - mb0))" "$((MACH_STEAL - ms0))" "$((MACH_TOTAL - mt0))" "$hwm" >>"$RAW"
  printf '%s\t%s\n' "$(( a1 - a0 - 1 ))" "$pu1" >>"$RAW"   # -1: the stub_status request itself

  awk -v r="${w[requests]}" -v d="${w[duration_us]}" -v p99="${w[p99_us]}" \
      -v pt="$p1" -v tck="$CLK_TCK" -v round="$round" -v rounds="$ROUNDS" -v cid="$cid" -v mode="$mode" \
      'BEGIN { cpu = (pt == "-" || r == 0) ? "   -" : sprintf("%5.1f", pt * 1e6 / tck / r)
               printf "  [%d/%d] %-15s %-8s %8.0f req/s  p99 %6.2f ms  proxy CPU %s us/req\n",
                      round, rounds, cid, mode, r * 1e6 / d, p99 / 1000, cpu }' >&2
}

# check_access_log NAME FILE: every completed request should have a line.
check_access_log() {
  local name=$1 file=$2 lines=0
  [ -f "$file" ] && lines=$(wc -l <"$file")
  if [ "$lines" -lt "$TOTAL_REQUESTS" ]; then
    note "$name access log has $lines lines for $TOTAL_REQUESTS requests wrk completed"
  fi
  rm -f "$file"                   # can be large; only the count matters
}

# run_contender ROUND CID: start it, warm it up, measure every mode, stop it.
run_contender() {
  local round=$1 cid=$2 pid="" port pids=() mode
  TOTAL_REQUESTS=0
  case "$cid" in *_tls) SCHEME=https ;; *) SCHEME=http ;; esac
  case "$cid" in
    direct) port=$ORIGIN1 ;;
    nginx_*) start_nginx "$cid" "$SCRATCH/$cid.conf" "$NGINX_PORT"; pid=$START_PID; port=$NGINX_PORT
             pids=("$pid" $(children_of "$pid")) ;;
    portico_*) start_portico "$cid" "$SCRATCH/$cid.yaml"; pid=$START_PID; port=$PORTICO_PORT
               pids=("$pid") ;;
  esac
  case "$cid" in
    *_plugins) # Both must do the plugins' work, or the comparison says nothing.
      local resp
      resp=$(http_get "$port" / | tr -d '\r')
      grep -qi '^x-served-by: portico$' <<<"$resp" && grep -Eqi '^x-request-id: [0-9a-f]{32}$' <<<"$resp" ||
        die "$cid does not answer with X-Served-By and a 32-digit X-Request-Id: $(head -c 400 <<<"$resp")" ;;
    *_gzip) # Both must compress the page.
      local resp
      resp=$(curl -s -m 2 -D - -o /dev/null -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/" | tr -d '\r')
      grep -qi '^content-encoding: gzip$' <<<"$resp" ||
        die "$cid does not gzip the page: $(head -c 400 <<<"$resp")" ;;
  esac
  # Warm-up (connection pools, allocator, caches); not measured.
  run_wrk "$SCRATCH/wrk-r$round-$cid-warmup.txt" 1 64 "$port"
  TOTAL_REQUESTS=$(awk '/^BENCH/ { sub(/.*requests=/, ""); print $1 + 0 }' "$SCRATCH/wrk-r$round-$cid-warmup.txt")
  TOTAL_REQUESTS=${TOTAL_REQUESTS:-0}

  for mode in "${MODES[@]}"; do
    measure "$round" "$cid" "$mode" "$port" "${pids[@]}"
  done

  if [ -n "$pid" ]; then
    # nginx workers must be the ones we measured (a crash would respawn one).
    if [[ "$cid" == nginx_* && "${pids[*]}" != "$pid $(children_of "$pid" | tr '\n' ' ' | sed 's/ $//')" ]]; then
      note "$cid round $round: nginx worker set changed during the run (crash?)"
    fi
    local sig
    sig=$(stop_signal "$cid")
    stop_pid "$pid" "$sig" || note "$cid round $round did not exit within 10 s of SIG$sig and was killed"
  fi
  case "$cid" in
    nginx_log|portico_log) check_access_log "$cid" "$SCRATCH/$cid.access.log" ;;
  esac
}

# ------------------------------------------------------------ the rounds

log "bench: $ROUNDS round(s) x ${#CONTENDERS[@]} contenders x modes (${MODES[*]}), ${DURATION}s each; scratch $SCRATCH"
for ((round = 1; round <= ROUNDS; round++)); do
  order=("${CONTENDERS[@]}")
  # Every other round runs the contenders in reverse, so slow drift
  # (thermal, background load) does not always favour the same side.
  if ((round % 2 == 0)); then
    order=()
    for ((i = ${#CONTENDERS[@]} - 1; i >= 0; i--)); do order+=("${CONTENDERS[$i]}"); done
  fi
  for cid in "${order[@]}"; do
    run_contender "$round" "$cid"
  done
done

stop_pid "${ORIGIN_PIDS[0]}" TERM || note "origin nginx had to be killed"

# ------------------------------------------------------------ checks and report

# Anything portico or nginx complained about.
for f in "$SCRATCH"/portico_*.err; do
  [ -s "$f" ] || continue
  # The three most frequent messages (timestamps stripped, cut to 200 chars).
  note "$(basename "$f"): $(wc -l <"$f") stderr line(s); most frequent: $(sed -E 's/^\[[0-9TZ:.+-]+ +/[/' "$f" |
    cut -c1-200 | sort | uniq -c | sort -rn | head -3 | sed -E 's/^ *([0-9]+) /\1x /' | paste -sd'|' | sed 's/|/ | /g')"
done
for f in "$SCRATCH"/*.error.log; do
  n=$(grep -Ec '\[(error|crit|alert|emerg)\]' "$f" || true)
  if [ "$n" -gt 0 ]; then
    note "$(basename "$f"): $n error line(s), e.g.: $(grep -Em1 '\[(error|crit|alert|emerg)\]' "$f")"
  fi
done
[ "$HWM_RESET_OK" = 1 ] || note "could not reset VmHWM via /proc/PID/clear_refs: peak RSS is cumulative over the modes"

NGINX_VERSION=$(nginx -v 2>&1 | sed 's/.*nginx\///')
WRK_VERSION=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] && REV="$REV+uncommitted changes"

{
  echo "## Portico vs nginx: $(date '+%Y-%m-%d %H:%M %Z')$([ "$SMOKE" = 1 ] && echo ' (smoke)' || true)"
  echo
  echo "Machine: $(nproc) CPUs, Linux $(uname -r); nginx $NGINX_VERSION, wrk $WRK_VERSION, portico $REV ($(basename "$(dirname "$PORTICO_BIN")") build)."
  echo "Equal resources: nginx proxy \`worker_processes 1\`, portico \`server.threads: 1\`;" \
       "origin nginx \`worker_processes 1\` on 2 ports; wrk \`-t2\`; all on 127.0.0.1 sharing the same $(nproc) CPUs."
  echo "$ROUNDS round(s) alternating, ${DURATION} s per run, medians shown; ratios are medians of per-round ratios."
  echo "paced64: each connection waits $PACE_MS ms (mean) before each request, so every contender is offered the same load."
  if [ -n "$MAX_FAILS" ]; then
    echo "Pool servers set to \`max_fails=$MAX_FAILS\` for both nginx and portico (BENCH_MAX_FAILS)."
  fi
  echo
  awk -F'\t' -v tck="$CLK_TCK" -f "$BENCH_DIR/report.awk" "$SCRATCH/contenders.tsv" "$RAW"
  if [ -s "$NOTES" ]; then
    echo
    echo "Notes:"
    echo
    cat "$NOTES"
  fi
  echo
  echo "Raw numbers: \`$SCRATCH/raw.tsv\` (wrk output and logs alongside)."
} >"$RESULTS"

cat "$RESULTS"
log ""
log "bench: results written to $RESULTS"

# --smoke passes only if every contender answered: requests completed, no
# connect errors, and (stricter) no error statuses either.
if [ "$SMOKE" = 1 ]; then
  bad=$(awk -F'\t' 'NR > 1 && ($4 == 0 || $9 > 0 || $12 > 0) {
          printf "%s/%s: %d requests, %d connect errors, %d error statuses\n", $2, $3, $4, $9, $12 }' "$RAW")
  if [ -n "$bad" ]; then
    log "bench: smoke FAILED:"
    log "$bad"
    exit 1
  fi
  log "bench: smoke passed: every contender answered"
fi
