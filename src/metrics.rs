//! Prometheus metrics. Label children are resolved once when a configuration
//! is built (`RouteMetrics`, `ServerMetrics`), so the request path only bumps
//! atomics; gauges that mirror server state are filled in at scrape time.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::OnceLock;

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    upstream_time: HistogramVec,
    pub retries: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub healthy: IntGaugeVec,
    pub draining: IntGaugeVec,
    pub server_requests: IntGaugeVec,
    pub server_failures: IntGaugeVec,
    pub requests_in_flight: IntGauge,
    pub upgrades: IntCounter,
    pub lean_requests: IntCounter,
    pub parked: IntGauge,
    /// HTTP listeners: client connections open, by listener.
    pub client_connections: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub request_time: Histogram,
    /// TCP listeners: connections by outcome, bytes, connections open.
    pub tcp_connections: IntCounterVec,
    pub tcp_bytes: IntCounterVec,
    pub tcp_active: IntGauge,
}

pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = Registry::new_custom(Some("portico".into()), None).expect("registry");
        let reg = |c: Box<dyn prometheus::core::Collector>| r.register(c).expect("metric registers once");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by listener, route, pool and status class"),
            &["listener", "route", "pool", "status"],
        )
        .unwrap();
        let upstream_time = HistogramVec::new(
            HistogramOpts::new("upstream_response_seconds", "Upstream response-header time per server").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["pool", "server"],
        )
        .unwrap();
        let retries = IntCounterVec::new(
            Opts::new("retries_total", "Attempts moved to another server"),
            &["pool"],
        )
        .unwrap();
        let g = |n: &str, h: &str| IntGaugeVec::new(Opts::new(n, h), &["pool", "server"]).unwrap();
        let inflight = g(
            "upstream_in_flight",
            "Requests (and upgraded connections) in flight per server",
        );
        let healthy = g(
            "upstream_healthy",
            "1 if the server may take requests (health, passive state)",
        );
        let draining = g("upstream_draining", "1 while the server is draining");
        let server_requests = g("upstream_requests", "Requests sent to the server since start");
        let server_failures = g("upstream_failures", "Failed attempts on the server since start");
        let requests_in_flight = IntGauge::new("requests_in_flight", "Downstream requests being served").unwrap();
        let upgrades = IntCounter::new("upgrades_total", "Connections upgraded (WebSocket)").unwrap();
        let lean_requests = IntCounter::new(
            "lean_path_requests_total",
            "Requests served by the lean HTTP/1 loop (the rest take Pingora's)",
        )
        .unwrap();
        let parked = IntGauge::new(
            "idle_connections_parked",
            "Idle keep-alive connections waiting in the listeners' parking lots (server.idle_park_after)",
        )
        .unwrap();
        let client_connections = IntGaugeVec::new(
            Opts::new(
                "client_connections_open",
                "Client connections open on each HTTP listener (idle, parked and upgraded ones included)",
            ),
            &["listener"],
        )
        .unwrap();
        reg(Box::new(client_connections.clone()));
        let reloads = IntCounterVec::new(Opts::new("reloads_total", "Configuration reloads"), &["result"]).unwrap();
        let request_time = Histogram::with_opts(
            HistogramOpts::new("request_seconds", "Total request time")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
        )
        .unwrap();
        let tcp_connections = IntCounterVec::new(
            Opts::new(
                "tcp_connections_total",
                "TCP listener connections by listener, pool and status (200 relayed, 502 no server reached)",
            ),
            &["listener", "pool", "status"],
        )
        .unwrap();
        let tcp_bytes = IntCounterVec::new(
            Opts::new(
                "tcp_bytes_total",
                "Bytes TCP listeners relayed, by direction (received from clients, sent to clients)",
            ),
            &["listener", "direction"],
        )
        .unwrap();
        let tcp_active = IntGauge::new("tcp_connections_active", "TCP listener connections open").unwrap();
        reg(Box::new(tcp_connections.clone()));
        reg(Box::new(tcp_bytes.clone()));
        reg(Box::new(tcp_active.clone()));
        reg(Box::new(requests.clone()));
        reg(Box::new(upstream_time.clone()));
        reg(Box::new(retries.clone()));
        for v in [&inflight, &healthy, &draining, &server_requests, &server_failures] {
            reg(Box::new(v.clone()));
        }
        reg(Box::new(requests_in_flight.clone()));
        reg(Box::new(upgrades.clone()));
        reg(Box::new(lean_requests.clone()));
        reg(Box::new(parked.clone()));
        reg(Box::new(reloads.clone()));
        reg(Box::new(request_time.clone()));
        Metrics {
            registry: r,
            requests,
            upstream_time,
            retries,
            inflight,
            healthy,
            draining,
            server_requests,
            server_failures,
            requests_in_flight,
            upgrades,
            lean_requests,
            parked,
            client_connections,
            reloads,
            request_time,
            tcp_connections,
            tcp_bytes,
            tcp_active,
        }
    })
}

/// Pre-resolved request counters of one route on one listener, by status class.
pub struct RouteMetrics {
    by_class: [IntCounter; 6],
}

impl RouteMetrics {
    pub fn new(listener: &str, route: &str, pool: &str) -> Self {
        let m = get();
        let c = |class: &str| m.requests.with_label_values(&[listener, route, pool, class]);
        RouteMetrics {
            by_class: [c("other"), c("1xx"), c("2xx"), c("3xx"), c("4xx"), c("5xx")],
        }
    }

    #[inline]
    pub fn count(&self, status: u16) {
        let i = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.by_class[i].inc();
    }
}

pub fn upstream_histogram(pool: &str, server: &str) -> Histogram {
    get().upstream_time.with_label_values(&[pool, server])
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&get().registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
