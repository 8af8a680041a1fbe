//! Two tiny HTTP backends for the quick start (`portico --demo`), so that
//! `curl localhost:8080/` shows the balancing straight away.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const DEMO_PORTS: [u16; 2] = [9001, 9002];

/// Start the demo backends on a thread of their own.
pub fn spawn() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("demo runtime");
        rt.block_on(async {
            for (n, port) in DEMO_PORTS.iter().enumerate() {
                match TcpListener::bind(("127.0.0.1", *port)).await {
                    Ok(l) => {
                        tokio::spawn(serve(l, n + 1));
                    }
                    Err(e) => log::error!("demo backend on 127.0.0.1:{port}: {e}"),
                }
            }
            std::future::pending::<()>().await
        })
    });
    std::thread::sleep(Duration::from_millis(50));
}

async fn serve(l: TcpListener, n: usize) {
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let Ok((mut sock, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut have = 0;
            loop {
                let Ok(k) = sock.read(&mut buf[have..]).await else {
                    return;
                };
                if k == 0 {
                    return;
                }
                have += k;
                // Answer each complete request head (demo requests carry no body).
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let line = head.lines().next().unwrap_or("").to_string();
                    let body = format!("hello from demo backend {n} (127.0.0.1:{port}): {line}\n");
                    // HTTP/1.0 without keep-alive, or `Connection: close`: answered, then closed.
                    let lower = head.to_ascii_lowercase();
                    let close = lower.contains("\r\nconnection: close")
                        || (line.ends_with("HTTP/1.0") && !lower.contains("\r\nconnection: keep-alive"));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: demo-{n}\r\n{}\r\n{body}",
                        body.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() || close {
                        return;
                    }
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                }
                if have == buf.len() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests on one connection to a demo backend: HTTP/1.1 stays open
    /// for the next, HTTP/1.0 (and `Connection: close`) is closed once
    /// answered, so a client reading to the end gets its answer.
    #[tokio::test]
    async fn a_demo_backend_keeps_http11_open_and_closes_http10() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, 1));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for path in ["/a", "/b"] {
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.contains(&format!("GET {path} HTTP/1.1")), "{text}");
            assert!(!text.contains("Connection: close"), "{text}");
        }
        for request in ["GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"] {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(request.as_bytes()).await.unwrap();
            let mut all = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all)).await;
            assert!(read.is_ok(), "{request:?}: not closed");
            assert!(String::from_utf8_lossy(&all).contains("hello from demo backend 1"));
        }
    }
}
