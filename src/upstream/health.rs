//! Active health checks (ELB target-group style): HTTP or TCP probes per
//! server at an interval, with healthy/unhealthy thresholds. Verdicts go to
//! the shared `ServerState`, so they survive reloads like everything else.

use super::{Pool, PoolServer, Transport, UpstreamTls};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Tcp,
    Http {
        method: String,
        path: String,
        host: Option<String>,
        /// Inclusive ranges of accepted statuses.
        statuses: Vec<(u16, u16)>,
        body: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
    pub wait_for_first_pass: bool,
}

/// Parse `200`, `200-399`, `200,204,300-399`.
pub fn parse_statuses(s: &str) -> Result<Vec<(u16, u16)>, String> {
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u16 = a.trim().parse().map_err(|_| format!("bad status {part:?}"))?;
            let b: u16 = b.trim().parse().map_err(|_| format!("bad status {part:?}"))?;
            if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
                return Err(format!("bad status range {part:?}"));
            }
            Ok((a, b))
        })
        .collect()
}

/// Run one probe of `server`; `Err` carries the reason shown in logs and the
/// admin API. HTTP probes speak HTTP/1.1, over TLS when the pool's traffic
/// does (`tls`: the pool's settings and the transport to connect with).
pub async fn probe(
    server: &PoolServer,
    spec: &CheckSpec,
    tls: Option<(&UpstreamTls, &Transport)>,
) -> Result<(), String> {
    let addr = server.addr.as_str();
    let work = async {
        let Probe::Http {
            method,
            path,
            host,
            statuses,
            body,
        } = &spec.probe
        else {
            TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
            return Ok(());
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portico-health-check\r\nConnection: close\r\n\r\n",
            host.as_deref().unwrap_or(addr)
        );
        let text = match tls {
            None => {
                let s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                exchange(s, &req, body.is_some()).await?
            }
            Some((t, transport)) => {
                let s = (transport.get().await)
                    .new_stream(&t.peer(&server.backend.addr))
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                exchange(s, &req, body.is_some()).await?
            }
        };
        let code: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "no HTTP status in response".to_string())?;
        if !statuses.iter().any(|(a, b)| (*a..=*b).contains(&code)) {
            return Err(format!("status {code}"));
        }
        if let Some(want) = body {
            if !text.contains(want.as_str()) {
                return Err(format!("status {code} but body lacks {want:?}"));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(spec.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {:?}", spec.timeout)),
    }
}

/// Send `req` on `s` and read the answer: its status line, or (`whole`) up
/// to the end of the response or 64 KiB.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &str, whole: bool) -> Result<String, String> {
    s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A server that closes without TLS's close_notify (or resets) after answering.
            Err(_) if !buf.is_empty() => 0,
            Err(e) => return Err(format!("read: {e}")),
        };
        if n == 0 || buf.len() > 64 * 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Without a body check, the status line is enough.
        if !whole && buf.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[derive(Default)]
struct Streak {
    next_due: Option<Instant>,
    ok: usize,
    fail: usize,
}

/// Checks every pool with a `health_check`, forever. `pools` returns the
/// pools of the configuration running now; `installs` changes when another
/// one is installed (reload, runtime change), so new pools and servers are
/// picked up. Between rounds the loop sleeps until the next check is due,
/// and with no pool to check it sleeps until a configuration has one: an
/// idle gateway is not woken up for nothing.
pub async fn run(
    pools: impl Fn() -> Vec<Arc<Pool>>,
    mut installs: tokio::sync::watch::Receiver<()>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    transport: Transport,
) {
    let mut streaks: HashMap<(String, String), Streak> = HashMap::new();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for pool in pools() {
            let Some(spec) = pool.health.clone() else {
                continue;
            };
            for (i, s) in pool.servers.iter().enumerate() {
                let st = streaks.entry((pool.name.to_string(), s.addr.clone())).or_default();
                if st.next_due.is_none_or(|t| t <= now) {
                    st.next_due = Some(now + spec.interval);
                    due.push((pool.clone(), i, spec.clone()));
                }
                if let Some(t) = st.next_due {
                    next = crate::clock::earliest(next, t);
                }
            }
        }
        let transport = &transport;
        let results = futures::future::join_all(due.iter().map(|(pool, i, spec)| async move {
            probe(&pool.servers[*i], spec, pool.tls.as_ref().map(|t| (t, transport))).await
        }))
        .await;
        for ((pool, i, spec), res) in due.into_iter().zip(results) {
            record(&mut streaks, &pool, i, &spec, res);
        }
        let until_due = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let reinstalled = async {
            if installs.changed().await.is_err() {
                std::future::pending::<()>().await // no more configurations will come
            }
        };
        tokio::select! {
            _ = until_due => {}
            _ = reinstalled => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Count one probe's result into the server's streak and flip its health
/// when a threshold is reached.
fn record(
    streaks: &mut HashMap<(String, String), Streak>,
    pool: &Pool,
    i: usize,
    spec: &CheckSpec,
    res: Result<(), String>,
) {
    let server = &pool.servers[i];
    let st = streaks.entry((pool.name.to_string(), server.addr.clone())).or_default();
    let state = &server.state;
    *state.last_check.lock().unwrap() = Some(match &res {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    });
    match res {
        Ok(()) => {
            st.ok += 1;
            st.fail = 0;
            if st.ok >= spec.healthy_threshold && !state.healthy.swap(true, Relaxed) {
                log::warn!("upstream {} server {} is healthy again", pool.name, server.addr);
            }
        }
        Err(why) => {
            st.fail += 1;
            st.ok = 0;
            if st.fail >= spec.unhealthy_threshold && state.healthy.swap(false, Relaxed) {
                log::warn!("upstream {} server {} is unhealthy: {why}", pool.name, server.addr);
                *state.last_failure.lock().unwrap() = Some(format!("health check: {why}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        assert_eq!(parse_statuses("200").unwrap(), vec![(200, 200)]);
        assert_eq!(parse_statuses("200-299, 404").unwrap(), vec![(200, 299), (404, 404)]);
        assert!(parse_statuses("abc").is_err());
        assert!(parse_statuses("300-200").is_err());
    }
}
