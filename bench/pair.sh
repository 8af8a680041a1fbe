# Sourced by bench/instructions.sh and bench/profile.sh: one nginx origin
# and the two proxies in front of it, configured alike (one pool server,
# keepalive 64, Host/X-Real-IP/X-Forwarded-For, access log off, nginx one
# worker process without a master, portico one thread).
#
# Expects: MODE (array; "tls" selects HTTPS listeners), BASE (first port).
# Sets: SCRATCH (a fresh temporary directory, cleaned up on exit), ORIGIN,
# NGINX_PORT, PORTICO_PORT, SCHEME, and the files $SCRATCH/proxy.conf
# (nginx) and $SCRATCH/portico.yaml. Starts the origin. A script with more
# to do on exit sets its own EXIT trap and calls pair_cleanup last.

ORIGIN=$((BASE + 1)) NGINX_PORT=$((BASE + 2)) PORTICO_PORT=$((BASE + 3))
SCRATCH=$(mktemp -d /tmp/portico-pair.XXXXXX)
pair_cleanup() {
  pkill -f "$SCRATCH" 2>/dev/null || true
  sleep 0.5
  pkill -9 -f "$SCRATCH" 2>/dev/null || true
  rm -rf "$SCRATCH"
}
trap pair_cleanup EXIT
nginx_conf() { # NAME BODY
  mkdir -p "$SCRATCH/$1"
  cat >"$SCRATCH/$1.conf" <<EOC
worker_processes 1;
master_process off;
daemon off;
pid $SCRATCH/$1.pid;
error_log $SCRATCH/$1.error.log warn;
events { worker_connections 4096; }
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

# wait_up PORT: until the proxy on PORT answers (2 minutes at most)
wait_up() {
  for _ in $(seq 600); do curl -skf "$SCHEME://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.2; done
  echo "bench: nothing answers on 127.0.0.1:$1" >&2
  return 1
}
