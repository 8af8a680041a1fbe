//! The admin API, on its own listener (loopback by default), optionally
//! guarded by a bearer token:
//!
//! | method + path                          | what                                              |
//! |----------------------------------------|---------------------------------------------------|
//! | `GET /status`                          | pools and servers with state, in-flight, counts   |
//! | `POST /pools/{pool}/servers`           | register a server (`{"address": "ip:port", "weight": 1}`) |
//! | `DELETE /pools/{pool}/servers/{addr}`  | drain, then deregister (`?delay=30s` caps the wait)|
//! | `POST /reload`                         | re-read the config file (as SIGHUP)               |
//! | `GET /config`                          | the running configuration (YAML)                  |
//! | `GET /metrics`                         | Prometheus text format                            |

use crate::config;
use crate::live::{resolve, Live};
use crate::metrics;
use crate::upstream::Pool;
use async_trait::async_trait;
use http::{Method, Response};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Admin {
    pub live: Arc<Live>,
    pub token: Option<String>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("valid response")
}

fn json_reply(status: u16, v: Value) -> Response<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(&v).unwrap_or_default();
    b.push(b'\n');
    reply(status, "application/json", b)
}

fn error(status: u16, msg: impl Into<String>) -> Response<Vec<u8>> {
    json_reply(status, json!({ "error": msg.into() }))
}

fn server_state(p: &Pool, i: usize) -> &'static str {
    let st = &p.servers[i].state;
    if p.servers[i].down {
        "down (config)"
    } else if st.draining.load(Relaxed) {
        "draining"
    } else if !st.healthy.load(Relaxed) {
        "unhealthy"
    } else if st.passive_down() {
        "down (max_fails)"
    } else {
        "healthy"
    }
}

fn status(live: &Live) -> Value {
    let snap = live.snapshot();
    let pools: Vec<Value> = snap
        .pools
        .values()
        .map(|p| {
            let servers: Vec<Value> = p
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({
                        "address": s.addr,
                        "weight": s.weight,
                        "backup": s.backup,
                        "state": server_state(p, i),
                        "in_flight": s.state.inflight.load(Relaxed),
                        "requests": s.state.requests.load(Relaxed),
                        "failures": s.state.failures.load(Relaxed),
                        "last_failure": *s.state.last_failure.lock().unwrap(),
                        "last_health_check": *s.state.last_check.lock().unwrap(),
                    })
                })
                .collect();
            json!({ "name": &*p.name, "algorithm": format!("{:?}", p.algorithm), "servers": servers })
        })
        .collect();
    let m = metrics::get();
    let tcp: Vec<Value> = snap
        .tcp
        .iter()
        .map(|t| json!({ "listen": &*t.listen, "pool": t.pool.as_ref().map(|p| &*p.name) }))
        .collect();
    let client_connections: i64 = snap
        .listeners
        .iter()
        .map(|l| m.client_connections.with_label_values(&[l.addr.as_str()]).get())
        .sum();
    json!({
        "config_file": snap.file,
        "gateway": {
            "requests_total": m.request_time.get_sample_count(),
            "requests_in_flight": m.requests_in_flight.get(),
            "client_connections_open": client_connections,
            "tcp_connections_active": m.tcp_active.get(),
            "listeners": snap.listeners.iter().map(|l| l.addr.as_str()).collect::<Vec<_>>(),
            "tcp_listeners": tcp,
        },
        "pools": pools,
    })
}

/// The live status page: no data of its own (it fetches `/status`), so it
/// is served without the token, which a browser could not attach to a
/// page it navigates to; the page asks for it when `/status` answers 401.
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// Mirror server state into the Prometheus gauges, then render everything.
fn render_metrics(live: &Live) -> String {
    let m = metrics::get();
    for p in live.snapshot().pools.values() {
        for s in &p.servers {
            let l = [&*p.name, s.addr.as_str()];
            m.inflight
                .with_label_values(&l)
                .set(s.state.inflight.load(Relaxed) as i64);
            m.healthy.with_label_values(&l).set(s.usable() as i64);
            m.draining
                .with_label_values(&l)
                .set(s.state.draining.load(Relaxed) as i64);
            m.server_requests
                .with_label_values(&l)
                .set(s.state.requests.load(Relaxed) as i64);
            m.server_failures
                .with_label_values(&l)
                .set(s.state.failures.load(Relaxed) as i64);
        }
    }
    metrics::render()
}

/// Start draining `addr` in `pool` and deregister it once idle or after
/// `delay`. `Err` with the status to answer: 400 for an address that is
/// none, 404 for an unknown pool or server, 409 when the pool would be left
/// without a server (a pool needs one; the drain is refused at once rather
/// than failing when it ends).
fn drain(live: Arc<Live>, pool: &str, addr: &str, delay: Duration) -> Result<(), (u16, String)> {
    let sa = resolve(addr).map_err(|e| (400, e))?;
    let snap = live.snapshot();
    let p = snap
        .pools
        .get(pool)
        .ok_or_else(|| (404, format!("no upstream {pool:?}")))?;
    let i = p
        .index_of_addr(&sa.to_string())
        .ok_or_else(|| (404, format!("no server {addr} in {pool}")))?;
    let staying = p.servers.iter().filter(|s| !s.state.draining.load(Relaxed)).count();
    if !p.servers[i].state.draining.load(Relaxed) && staying <= 1 {
        return Err((
            409,
            format!("{addr} is the last server of {pool} not draining: a pool needs one"),
        ));
    }
    let state = p.servers[i].state.clone();
    state.draining.store(true, Relaxed);
    log::warn!("draining {sa} from upstream {pool} (up to {delay:?})");
    let pool = pool.to_string();
    tokio::spawn(async move {
        let until = Instant::now() + delay;
        while state.inflight.load(Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match live.remove_server(&pool, sa) {
            Ok(()) => log::warn!("deregistered {sa} from upstream {pool}"),
            Err(e) => {
                state.draining.store(false, Relaxed);
                log::error!("could not deregister {sa} from {pool}: {e}");
            }
        }
    });
    Ok(())
}

/// The methods an admin endpoint answers, for a 405 to any other (`None`:
/// no such endpoint).
fn allowed(parts: &[&str]) -> Option<&'static str> {
    match parts {
        [""] | ["status"] | ["metrics"] | ["config"] => Some("GET"),
        ["reload"] | ["pools", _, "servers"] => Some("POST"),
        ["pools", _, "servers", _] => Some("DELETE"),
        _ => None,
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if s.req_header().method == Method::GET && s.req_header().uri.path() == "/" {
            let mut r = reply(200, "text/html; charset=utf-8", STATUS_PAGE.as_bytes().to_vec());
            let csp = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'";
            r.headers_mut()
                .insert("content-security-policy", http::HeaderValue::from_static(csp));
            return r;
        }
        if let Some(t) = &self.token {
            let ok = s
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|v| v.len() == t.len() && v.bytes().zip(t.bytes()).fold(0, |a, (x, y)| a | (x ^ y)) == 0);
            if !ok {
                let mut r = error(401, "missing or wrong bearer token");
                r.headers_mut().insert("www-authenticate", "Bearer".parse().unwrap());
                return r;
            }
        }
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        let query = s.req_header().uri.query().unwrap_or("").to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, parts.as_slice()) {
            (&Method::GET, ["status"]) => json_reply(200, status(&self.live)),
            (&Method::GET, ["metrics"]) => reply(
                200,
                "text/plain; version=0.0.4",
                render_metrics(&self.live).into_bytes(),
            ),
            (&Method::GET, ["config"]) => {
                let cfg = &self.live.snapshot().cfg;
                reply(
                    200,
                    "application/yaml",
                    serde_yaml::to_string(cfg).unwrap_or_default().into_bytes(),
                )
            }
            (&Method::POST, ["reload"]) => match self.live.reload() {
                Ok(()) => json_reply(200, json!({ "result": "reloaded" })),
                Err(e) => error(400, e),
            },
            (&Method::POST, ["pools", pool, "servers"]) => {
                let mut body = Vec::new();
                while let Ok(Some(b)) = s.read_request_body().await {
                    body.extend_from_slice(&b);
                    if body.len() > 64 * 1024 {
                        return error(413, "body too large");
                    }
                }
                let server: config::Server = match serde_yaml::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return error(400, format!("bad server: {e}")),
                };
                match self.live.add_server(pool, server) {
                    Ok(()) => json_reply(201, json!({ "result": "registered" })),
                    Err(e) => error(400, e),
                }
            }
            (&Method::DELETE, ["pools", pool, "servers", addr]) => {
                let delay = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("delay="))
                    .map(config::units::parse_duration)
                    .unwrap_or(Ok(Duration::from_secs(30)));
                let delay = match delay {
                    Ok(d) => d,
                    Err(e) => return error(400, e),
                };
                match drain(self.live.clone(), pool, addr, delay) {
                    Ok(()) => json_reply(202, json!({ "result": "draining", "server": addr })),
                    Err((status, e)) => error(status, e),
                }
            }
            _ => match allowed(parts.as_slice()) {
                Some(allow) => {
                    let mut r = error(405, format!("{method} is not allowed on {path} (allowed: {allow})"));
                    r.headers_mut()
                        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                    r
                }
                None => error(404, format!("no such admin endpoint: {method} {path}")),
            },
        }
    }
}
