//! Portico: a programmable HTTP gateway and load balancer on Pingora.
//!
//! Where things live:
//! - `config`: the YAML schema, units, and file:line:column errors
//! - `live`: validation and compilation into the running `Snapshot`, hot-swappable
//! - `routing`: host and path matching (nginx precedence)
//! - `upstream`: pools, selectors, server state, sticky cookies, active health checks
//! - `retry`: nginx `proxy_next_upstream` rules
//! - `proxy`: the Pingora `ProxyHttp` lifecycle, delegating to the above
//! - `admin`, `metrics`: the admin API (status, draining, reload) and Prometheus
//! - `plugins`: building filter plugins (crates in `plugins/`) and adapting headers for them
//! - `tls`: certificates (checked at load) and SNI selection for TLS listeners
//! - `pipe`: bytes passed both ways (WebSockets after their 101, TCP listener connections)
//! - `access_log`, `template`, `clock`, `timeout`, `sockio`, `warming`: small helpers
//! - `app`: wiring everything into a Pingora server
//! - `demo`: the two demo backends of the quick start
//! - `tcp`: TCP (layer 4) listeners balancing connections over the same pools
//! - `import`: `--import-nginx`, an nginx configuration translated into Portico YAML

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod app;
pub mod clock;
pub mod compress;
pub mod config;
pub mod demo;
pub mod dns;
pub mod import;
pub mod listener;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod pipe;
pub mod plugins;
pub mod proxy;
pub mod proxy_protocol;
pub mod retry;
pub mod rewrite;
pub mod routing;
pub mod sockio;
pub mod tcp;
pub mod template;
pub mod timeout;
pub mod tls;
pub mod upstream;
pub mod warming;
