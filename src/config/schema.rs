//! The YAML schema, exactly as users write it. Every struct rejects unknown
//! keys so that a typo is an error, not a silently ignored setting.
//! Semantic checks live in `validate.rs`; runtime structures are built from
//! these in `crate::live`.

use super::units::{Dur, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// TCP (layer 4) listeners: each connection is passed, bytes as they
    /// are, to a server of an upstream pool.
    #[serde(default)]
    pub tcp: Vec<TcpListener>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// CIDRs whose X-Forwarded-*/X-Real-IP headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub health_endpoint: HealthEndpoint,
    /// `stdout` (default), `off`, or a file path.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// The admin API listener; off when absent.
    pub admin: Option<Admin>,
    /// Plugins for every request, in order: `- name: { settings }`.
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
    /// Compression for every proxying location that sets none.
    pub compression: Option<CompressionConf>,
}

/// One enabled plugin: a map with exactly one key, the plugin's name.
pub type PluginEntry = BTreeMap<String, serde_yaml::Value>;

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to bind; keep it on loopback or a private network.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// When set, every call needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9900".into()
}

fn default_access_log() -> String {
    "stdout".into()
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads per listener.
    pub threads: usize,
    /// `false` (the default): each of a listener's `threads` runs its own
    /// single-threaded runtime and serves the connections handed to it, as
    /// nginx's workers do (lower p99 and a little less CPU per request than
    /// tokio's work-stealing scheduler, measured in `bench/README.md`).
    /// `true`: one work-stealing runtime for the listener's threads, which
    /// evens out uneven connections at some cost per request.
    pub work_stealing: bool,
    /// How long SIGTERM / a binary upgrade lets in-flight requests finish.
    pub grace_period: Dur,
    pub graceful_shutdown_timeout: Dur,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub error_log: Option<String>,
    pub daemon: bool,
    /// Downstream keep-alive idle timeout.
    pub keepalive_timeout: Dur,
    /// How long a new connection may wait before its first request's first
    /// bytes (and, on TLS, its handshake), and how long any request's head
    /// may take in all once its first bytes came (nginx
    /// `client_header_timeout`, default 60s).
    pub client_header_timeout: Dur,
    /// Longest a client may take to accept any of its response's bytes
    /// (between two writes that go through, not for the whole response;
    /// nginx `send_timeout`, default 60s). A client that stops reading is
    /// then dropped, and with it the server's response.
    pub send_timeout: Dur,
    /// Largest HTTP/1 request head (request line and header fields) a client
    /// may send: a longer one gets `431 Request Header Fields Too Large`
    /// (`414 URI Too Long` if its request line alone is longer), and the
    /// connection closes. nginx's `large_client_header_buffers` allow 32k
    /// in all (8k per line). 1k to 1m; default 32k. With both
    /// `lean_keepalive` and `lean_proxy` off, Pingora's loop reads the
    /// head alone and its own limit (1 MiB) applies.
    pub max_request_header_size: Size,
    /// Longest wait between two reads of a client's request body (Pingora's default: 60s).
    pub client_body_timeout: Option<Dur>,
    /// Read buffer per client connection (Pingora's default is 64k; it is held
    /// by every idle keep-alive connection and WebSocket).
    /// Unset: none on plain listeners (reads go straight into the request
    /// buffer), 16k on TLS listeners (one TLS record per read).
    pub read_buffer: Option<Size>,
    /// Idle HTTP/1 keep-alive connections hold only their socket until the
    /// next request's first byte arrives (about 7 instead of 24 KiB each).
    pub lean_keepalive: bool,
    /// A plain keep-alive connection idle this long leaves its task for the
    /// listener's parking lot, where it holds only its socket (about 0.4
    /// instead of 1.3 KiB measured) until its next request arrives or
    /// `keepalive_timeout` runs out (`src/listener/park.rs`). `0s`: never.
    /// Needs `lean_keepalive`.
    pub idle_park_after: Dur,
    /// HTTP/1.1 GET and HEAD requests without a body, and WebSocket
    /// handshakes, take Portico's own short proxy loop (`src/proxy/lean.rs`),
    /// which runs the same hooks as Pingora's loop for less CPU and memory.
    /// Everything else (bodies, other upgrades, HTTP/1.0, HTTP/2) always
    /// takes Pingora's loop.
    pub lean_proxy: bool,
    /// Pass on request header fields whose names hold an underscore (nginx
    /// `underscores_in_headers`, default off: such fields are dropped, as
    /// nginx ignores them, so `X_Forwarded_For` cannot stand in for
    /// `X-Forwarded-For` at a server that reads `_` and `-` alike, as CGI does).
    pub underscores_in_headers: bool,
    /// The DNS server (`ip` or `ip:port`) that resolves servers with
    /// `resolve: true` (nginx `resolver`); unset: the system's resolver.
    pub resolver: Option<String>,
    /// How often servers with `resolve: true` are resolved again (nginx
    /// `resolver ... valid=`; default 30s).
    pub resolver_valid: Dur,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            threads: 1,
            work_stealing: false,
            grace_period: Dur(std::time::Duration::from_secs(30)),
            graceful_shutdown_timeout: Dur(std::time::Duration::from_secs(5)),
            pid_file: None,
            upgrade_sock: None,
            error_log: None,
            daemon: false,
            keepalive_timeout: Dur(std::time::Duration::from_secs(60)),
            client_header_timeout: Dur(std::time::Duration::from_secs(60)),
            client_body_timeout: None,
            max_request_header_size: Size(32 * 1024),
            send_timeout: Dur(std::time::Duration::from_secs(60)),
            read_buffer: None,
            lean_keepalive: true,
            idle_park_after: Dur(std::time::Duration::from_secs(1)),
            lean_proxy: true,
            underscores_in_headers: false,
            resolver: None,
            resolver_valid: Dur(std::time::Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `ip:port` to bind.
    pub listen: String,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTls>,
    /// Accept cleartext HTTP/2 (prior knowledge) besides HTTP/1.x.
    #[serde(default)]
    pub h2c: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2)
    /// from a load balancer in front, whose client address is taken as the
    /// client's (nginx `listen ... proxy_protocol` with
    /// `real_ip_header proxy_protocol`; HAProxy `accept-proxy`).
    #[serde(default)]
    pub accept_proxy_protocol: bool,
    /// Most client connections open at once (0: no bound). At the bound,
    /// new connections wait in the kernel's backlog until others close,
    /// idle keep-alive connections being closed first (HAProxy `maxconn`,
    /// nginx `worker_connections`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_connections: usize,
}

/// A TCP listener (nginx's `stream { server { listen; proxy_pass; } }`).
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    /// `ip:port` to bind.
    pub listen: String,
    /// The upstream pool whose servers take this listener's connections
    /// (with `sni`: those no rule picks; unset, they are refused).
    pub proxy_pass: Option<String>,
    /// Pools by the server name a TLS client asks for (exact or `*.suffix`),
    /// read from its ClientHello; the connection is passed through, still
    /// encrypted (nginx's `ssl_preread` with a `map`).
    /// `~regex` names (nginx map regex keys) are tried after the exact
    /// and wildcard ones, in the order written.
    #[serde(default, skip_serializing_if = "indexmap::IndexMap::is_empty")]
    pub sni: indexmap::IndexMap<String, String>,
    /// Longest wait for a server to accept a connection (default: the
    /// pool's `connect_timeout`, else 60s, nginx's `proxy_connect_timeout`).
    pub connect_timeout: Option<Dur>,
    /// A connection with no bytes either way for this long is closed
    /// (nginx `proxy_timeout`; default 10m).
    pub idle_timeout: Option<Dur>,
    /// When a server cannot be connected to, try another (nginx stream
    /// `proxy_next_upstream`, default on). Once connected, a connection is
    /// never moved: its bytes may have been read.
    #[serde(default = "yes")]
    pub next_upstream: bool,
    /// Servers tried per connection, at most; 0 (the default): no limit.
    #[serde(default)]
    pub next_upstream_tries: usize,
    /// Time spent trying servers per connection, at most; unset: no limit.
    pub next_upstream_timeout: Option<Dur>,
    /// Every connection starts with a PROXY protocol header (v1 or v2),
    /// whose client address is taken as the client's (see `Listener`).
    #[serde(default)]
    pub accept_proxy_protocol: bool,
    /// Open connections of this listener, at most; more are closed at once
    /// (logged 503). 0 (the default): no limit. (HAProxy `maxconn`.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_connections: usize,
    /// Open connections from one client address, at most (nginx stream
    /// `limit_conn` on `$binary_remote_addr`); 0 (the default): no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_connections_per_client: usize,
    /// Send the client's address to the server first in a PROXY protocol
    /// header: `v1` (text, nginx's `proxy_protocol on`) or `v2` (binary).
    pub proxy_protocol: Option<String>,
    /// Clients (CIDRs) refused: their connections are closed at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// When set, only clients in these CIDRs are let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Terminate TLS (nginx stream `listen ... ssl`): certificates chosen
    /// by SNI as on HTTP listeners; the server gets the plain bytes.
    pub tls: Option<TcpTls>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TcpTls {
    /// Chosen by SNI; the first is the default for unknown or missing names.
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Chosen by SNI; the first is the default for unknown or missing names.
    pub certificates: Vec<Certificate>,
    /// Offer HTTP/2 through ALPN.
    #[serde(default = "yes")]
    pub http2: bool,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM chain, leaf first (Let's Encrypt `fullchain.pem`).
    pub cert: String,
    /// PEM private key (Let's Encrypt `privkey.pem`).
    pub key: String,
    /// Names this certificate answers (exact or `*.suffix`); default: its SAN DNS names.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HealthEndpoint {
    pub enabled: bool,
    pub path: String,
}

impl Default for HealthEndpoint {
    fn default() -> Self {
        HealthEndpoint {
            enabled: true,
            path: "/nginx/health".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastConn,
    Random,
    RandomTwoLeastConn,
    IpHash,
    Hash,
    LeastTime,
    Sticky,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// For `hash`: `$remote_addr`, `$uri`, `$http_<name>`, `$cookie_<name>`, `$arg_<name>`.
    pub hash_key: Option<String>,
    /// For `hash`/`ip_hash`: ketama consistent hashing.
    #[serde(default)]
    pub consistent: bool,
    pub sticky: Option<Sticky>,
    /// Idle upstream connections kept per pool.
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    pub keepalive_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    /// Total time a server may take to send its response header (unset: no limit beyond `read_timeout`).
    pub header_timeout: Option<Dur>,
    pub write_timeout: Option<Dur>,
    /// nginx `proxy_next_upstream` conditions.
    pub next_upstream: Option<Vec<String>>,
    pub next_upstream_tries: Option<usize>,
    pub next_upstream_timeout: Option<Dur>,
    pub health_check: Option<HealthCheck>,
    /// Connect to the servers over TLS.
    #[serde(default)]
    pub tls: bool,
    /// SNI (and verified name) for upstream TLS; default: none.
    pub tls_sni: Option<String>,
    /// Verify the upstream certificate (with `tls_ca_file` or the system store).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    pub tls_ca_file: Option<String>,
    /// A client certificate (PEM, leaf first) and its key, for servers that
    /// ask for one (nginx `proxy_ssl_certificate`, `proxy_ssl_certificate_key`).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Speak HTTP/2 to the servers (h2 over TLS, h2c in plain text).
    #[serde(default)]
    pub http2: bool,
    pub servers: Vec<Server>,
}

fn default_keepalive() -> usize {
    64
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub address: String,
    #[serde(default = "one")]
    pub weight: usize,
    #[serde(default = "one")]
    pub max_fails: usize,
    pub fail_timeout: Option<Dur>,
    #[serde(default)]
    pub backup: bool,
    /// nginx's `down`: kept in the pool (a hash keeps the other servers'
    /// keys where they were) but sent nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
    /// Resolve the address's host name again while running (every
    /// `server.resolver_valid`): its addresses are the servers (nginx
    /// `server ... resolve`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolve: bool,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// `insert` (the gateway issues a signed cookie) or `hash` (hash an app cookie).
    #[serde(default = "default_sticky_mode")]
    pub mode: String,
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// HMAC secret shared by every gateway instance (insert mode).
    pub secret: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub max_age: Option<Dur>,
    #[serde(default = "yes")]
    pub http_only: bool,
    pub same_site: Option<String>,
}

fn default_sticky_mode() -> String {
    "insert".into()
}
fn default_sticky_cookie() -> String {
    "portico_sticky".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` or `tcp`.
    #[serde(rename = "type", default = "default_hc_type")]
    pub kind: String,
    #[serde(default = "default_hc_path")]
    pub path: String,
    pub host: Option<String>,
    #[serde(default = "default_hc_method")]
    pub method: String,
    /// Expected statuses: `200`, `200-399`, `"200,204"`.
    #[serde(default = "default_hc_status")]
    pub expect_status: String,
    pub expect_body: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    #[serde(default = "two")]
    pub healthy_threshold: usize,
    #[serde(default = "two")]
    pub unhealthy_threshold: usize,
    /// Route to servers only after their first passing check (ELB behaviour).
    #[serde(default)]
    pub wait_for_first_pass: bool,
}

fn default_hc_type() -> String {
    "http".into()
}
fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_method() -> String {
    "GET".into()
}
fn default_hc_status() -> String {
    "200-399".into()
}
fn two() -> usize {
    2
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Exact names, `*.example.com` wildcards; empty with `default: true` catches all.
    #[serde(default)]
    pub server_names: Vec<String>,
    #[serde(default)]
    pub default: bool,
    /// Listener addresses this host answers on; all listeners when empty.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Plugins for this host's requests, after the global ones.
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
    /// Compression for this host's proxying locations that set none.
    pub compression: Option<CompressionConf>,
    pub locations: Vec<Location>,
}

#[derive(Debug, Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// nginx syntax: `/prefix`, `^~ /prefix`, `= /exact`, `~ regex`, `~* regex`.
    pub path: String,
    pub proxy_pass: Option<String>,
    #[serde(rename = "return")]
    pub ret: Option<Return>,
    pub client_max_body_size: Option<Size>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    /// Total time a server may take to send its response header (unset: no limit beyond `read_timeout`).
    pub header_timeout: Option<Dur>,
    pub write_timeout: Option<Dur>,
    /// nginx `proxy_next_upstream` conditions.
    pub next_upstream: Option<Vec<String>>,
    pub next_upstream_tries: Option<usize>,
    pub next_upstream_timeout: Option<Dur>,
    /// Request headers to set on the way upstream (`$host`, `$remote_addr`, `$scheme` expand).
    #[serde(default)]
    pub proxy_set_header: BTreeMap<String, String>,
    /// Request headers removed on the way upstream.
    #[serde(default)]
    pub proxy_remove_header: Vec<String>,
    /// The path the request goes upstream with (nginx `rewrite ... break`).
    pub rewrite: Option<RewriteRule>,
    /// `websocket` (default), `any`, or `off`.
    pub upgrade: Option<String>,
    /// Idle timeout of an upgraded (WebSocket) connection; default 1h.
    pub websocket_idle_timeout: Option<Dur>,
    /// Compress the responses proxied here (nginx `gzip`); all codings 0:
    /// none, whatever the host or top level say.
    pub compression: Option<CompressionConf>,
    /// Plugins for this location, after the global and host ones.
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
}

/// A location's `compression` block: a level per coding (0: off), the
/// smallest `Content-Length` worth it, and the media types compressed.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CompressionConf {
    /// 1..9 (nginx `gzip_comp_level`, whose default, 1, is this one's).
    #[serde(default = "gzip_level")]
    pub gzip: u32,
    /// 1..11; default off.
    #[serde(default)]
    pub brotli: u32,
    /// 1..19; default off.
    #[serde(default)]
    pub zstd: u32,
    /// nginx `gzip_min_length` (default 20 bytes).
    #[serde(default = "min_compress_length")]
    pub min_length: Size,
    /// Media types (`*`: any); default `crate::compress::DEFAULT_TYPES`.
    pub types: Option<Vec<String>>,
}

fn gzip_level() -> u32 {
    1
}

fn min_compress_length() -> Size {
    Size(20)
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Return {
    pub status: u16,
    pub location: Option<String>,
    pub body: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A location's `rewrite`: a regular expression on the request's path and
/// its replacement (`$1`..`$9` for its groups).
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RewriteRule {
    pub from: String,
    pub to: String,
}
