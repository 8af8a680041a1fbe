//! Selection micro-benchmark: ns per `Pool::select` for every algorithm with
//! 10, 100 and 1000 servers, plus the per-request cost of decoding a sticky
//! cookie. Not part of the normal suite; run it with
//!
//!     cargo test --release --test selector_bench -- --ignored --nocapture
//!
//! Pools are built directly (as `crate::live::build_pool` does), no network.

use pingora_load_balancing::Backend;
use portico::config::schema::Algorithm;
use portico::retry::RetryPolicy;
use portico::upstream::state::StateRegistry;
use portico::upstream::sticky::{Mode, Sticky};
use portico::upstream::{HashKey, Pool, PoolServer, PoolSpec, Timeouts};
use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const SECRET: &str = "0123456789abcdef-bench-secret";

fn sticky(mode: Mode, cookie: &str) -> Sticky {
    Sticky::new(
        mode,
        cookie.into(),
        SECRET.as_bytes().to_vec(),
        None,
        None,
        Some(Duration::from_secs(3600)),
        true,
        None,
    )
}

fn addr(i: usize) -> String {
    format!("10.0.{}.{}:80", i / 250, i % 250 + 1)
}

/// `weighted`: weights 1, 2, 3, 1, 2, 3, ... instead of all 1.
fn pool(
    alg: Algorithm,
    consistent: bool,
    n: usize,
    sticky: Option<Sticky>,
    states: &StateRegistry,
    weighted: bool,
) -> Pool {
    let servers = (0..n)
        .map(|i| {
            let a = addr(i);
            let weight = if weighted { 1 + i % 3 } else { 1 };
            PoolServer {
                histogram: portico::metrics::upstream_histogram("bench", &a),
                backend: Backend::new_with_weight(&a, weight).unwrap(),
                state: states.get("bench", &a, true),
                addr: a,
                weight,
                max_fails: 1,
                fail_timeout: Duration::from_secs(10),
                backup: false,
                down: false,
            }
        })
        .collect();
    let hash_key = match alg {
        Algorithm::Hash => Some(HashKey::Arg("user".into())),
        Algorithm::IpHash => Some(HashKey::ClientNet),
        _ => None,
    };
    Pool::new(PoolSpec {
        name: "bench".into(),
        algorithm: alg,
        consistent,
        servers,
        hash_key,
        sticky,
        timeouts: Timeouts::default(),
        keepalive: 64,
        keepalive_timeout: None,
        retry: RetryPolicy::default(),
        health: None,
        tls: None,
        http2: false,
    })
}

/// ns per call of `f`: up to `max_iters` calls (fewer when a call is slow, so
/// one cell takes at most ~1.5 s) split into 5 batches; the fastest batch is
/// reported, which filters out time slices lost to other processes.
fn measure(max_iters: usize, mut f: impl FnMut(usize)) -> (f64, usize) {
    for i in 0..1000 {
        f(i); // warm up
    }
    let t = Instant::now();
    for i in 0..1000 {
        f(i);
    }
    let per = t.elapsed().as_secs_f64() / 1000.0;
    let iters = ((1.5 / per.max(1e-9)) as usize).clamp(10_000, max_iters);
    let batch = iters / 5;
    let mut best = f64::MAX;
    let mut i = 0;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..batch {
            f(i);
            i += 1;
        }
        best = best.min(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    (best, iters)
}

#[test]
#[ignore]
fn selector_bench() {
    const ITERS: usize = 1_000_000;
    let sizes = [10usize, 100, 1000];
    // 4096 distinct keys, cycled, so hashing sees varied input.
    let keys: Vec<Vec<u8>> = (0..4096).map(|i| format!("user-{i}").into_bytes()).collect();
    let no_skip = |_: usize| false;

    // (label, algorithm, consistent, sticky, busy): `busy` gives every server
    // 1..=8 requests in flight, the worst case for the load-aware scans
    // (an idle least_conn stops at the first server with 0 in flight).
    type Row = (&'static str, Algorithm, bool, Option<Sticky>, bool);
    let rows: Vec<Row> = vec![
        ("round_robin", Algorithm::RoundRobin, false, None, false),
        ("least_conn (idle)", Algorithm::LeastConn, false, None, false),
        ("least_conn (busy)", Algorithm::LeastConn, false, None, true),
        ("least_conn weighted (busy)", Algorithm::LeastConn, false, None, true),
        ("random", Algorithm::Random, false, None, false),
        (
            "random_two_least_conn",
            Algorithm::RandomTwoLeastConn,
            false,
            None,
            true,
        ),
        ("least_time (busy)", Algorithm::LeastTime, false, None, true),
        ("hash (fnv)", Algorithm::Hash, false, None, false),
        ("hash consistent (ketama)", Algorithm::Hash, true, None, false),
        ("ip_hash", Algorithm::IpHash, false, None, false),
        (
            "sticky insert (new client)",
            Algorithm::Sticky,
            true,
            Some(sticky(Mode::Insert, "srv")),
            false,
        ),
        (
            "sticky hash (ketama)",
            Algorithm::Sticky,
            true,
            Some(sticky(Mode::Hash, "JSESSIONID")),
            false,
        ),
    ];

    println!();
    println!("ns per Pool::select(key, &|_| false); up to {ITERS} calls per cell, best of 5 batches");
    println!("{:<28} {:>10} {:>10} {:>10}", "algorithm", "n=10", "n=100", "n=1000");
    for (label, alg, consistent, st, busy) in rows {
        let mut cells = Vec::new();
        for &n in &sizes {
            let states = StateRegistry::default();
            let p = pool(alg, consistent, n, st.clone(), &states, label.contains("weighted"));
            if busy {
                for (i, s) in p.servers.iter().enumerate() {
                    s.state.inflight.store(1 + (i * 7919) % 8, Relaxed);
                    s.state.ewma_us.store(1000 + ((i * 104_729) % 5000) as u64, Relaxed);
                }
            }
            let mut hits = vec![0u32; n];
            let (ns, _) = measure(ITERS, |i| {
                let k = &keys[i & 4095];
                let chosen = p.select(black_box(k), &no_skip);
                hits[black_box(chosen).unwrap()] += 1;
            });
            black_box(&hits);
            cells.push(ns);
        }
        println!("{:<28} {:>10.1} {:>10.1} {:>10.1}", label, cells[0], cells[1], cells[2]);
    }

    // Per-request sticky cost for a returning client: decode the cookie
    // (HMAC-SHA256 + constant-time compare), then map the id to a server.
    println!();
    println!("sticky insert, per request with a cookie");
    println!("{:<28} {:>10} {:>10} {:>10}", "step", "n=10", "n=100", "n=1000");
    let st = sticky(Mode::Insert, "srv");
    let mut decode = Vec::new();
    let mut pinned = Vec::new();
    let mut encode = Vec::new();
    for &n in &sizes {
        let states = StateRegistry::default();
        let p = pool(Algorithm::Sticky, true, n, Some(st.clone()), &states, false);
        let cookies: Vec<String> = p.sticky_ids.iter().map(|id| st.encode(id)).collect();
        let (ns, _) = measure(ITERS, |i| {
            let c = &cookies[i % n];
            black_box(st.decode(black_box(c)));
        });
        decode.push(ns);
        let (ns, _) = measure(ITERS, |i| {
            let c = &cookies[i % n];
            let srv = st
                .decode(black_box(c))
                .and_then(|id| p.server_by_sticky_id(id))
                .filter(|&s| p.servers[s].state.usable());
            black_box(srv.unwrap());
        });
        pinned.push(ns);
        let (ns, _) = measure(ITERS, |i| {
            let id = &p.sticky_ids[i % n];
            black_box(st.set_cookie(&st.encode(black_box(id)), false));
        });
        encode.push(ns);
    }
    println!(
        "{:<28} {:>10.1} {:>10.1} {:>10.1}",
        "Sticky::decode", decode[0], decode[1], decode[2]
    );
    println!(
        "{:<28} {:>10.1} {:>10.1} {:>10.1}",
        "decode + id lookup + usable", pinned[0], pinned[1], pinned[2]
    );
    println!(
        "{:<28} {:>10.1} {:>10.1} {:>10.1}",
        "encode + Set-Cookie (new)", encode[0], encode[1], encode[2]
    );
    // A tampered cookie costs the same HMAC and is rejected.
    let bad = "0123456789abcdef.9999999999.00000000000000000000000000000000";
    let (ns, _) = measure(ITERS, |_| {
        black_box(st.decode(black_box(bad)));
    });
    println!("{:<28} {:>10.1}", "Sticky::decode (rejected)", ns);
}
