//! Server names, resolved: every address a name has is a server (as nginx
//! makes one server per address of `server app.internal:8080;`). A server
//! with `resolve: true` is resolved again every `server.resolver_valid`
//! while running (nginx's `server ... resolve`), through `server.resolver`
//! when set (nginx's `resolver`), else the system's resolver; when its
//! addresses change, the pools are rebuilt with the new ones
//! ([`crate::live::Live::refresh_names`]), the servers still there keeping
//! their state.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How long one name may take to resolve through `resolver`, per attempt.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `host:port` split, or an error naming what is wrong.
fn split(name: &str) -> Result<(&str, u16), String> {
    let (host, port) = name
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid address {name:?}: expected host:port"))?;
    let port = port.parse().map_err(|_| format!("invalid port in {name:?}"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// A `resolver` setting (`ip` or `ip:port`, port 53 unless given) as an address.
pub fn resolver_addr(r: &str) -> Option<SocketAddr> {
    r.parse::<SocketAddr>()
        .ok()
        .or_else(|| r.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// Is `name` (`host:port`) an address already, with nothing to resolve?
pub fn is_literal(name: &str) -> bool {
    name.parse::<SocketAddr>().is_ok()
}

/// The addresses of each of `names` (`host:port`), sorted, through
/// `resolver` (a DNS server) or, without one, the system's resolver.
pub fn lookup_all(resolver: Option<SocketAddr>, names: &[&str]) -> Vec<Result<Vec<SocketAddr>, String>> {
    match resolver {
        None => names.iter().map(|n| system(n)).collect(),
        Some(server) => {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            // Its own thread and runtime: callable from a config load as from a task.
            let asked = names.len();
            std::thread::spawn(move || through(server, &names))
                .join()
                .unwrap_or_else(|_| vec![Err("the resolver thread failed".into()); asked])
        }
    }
}

/// One name's addresses (see [`lookup_all`]).
pub fn lookup(resolver: Option<SocketAddr>, name: &str) -> Result<Vec<SocketAddr>, String> {
    lookup_all(resolver, &[name])
        .pop()
        .unwrap_or_else(|| Err("no answer".into()))
}

fn system(name: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = name.parse() {
        return Ok(vec![a]);
    }
    split(name)?;
    let mut all: Vec<SocketAddr> = name
        .to_socket_addrs()
        .map_err(|e| format!("invalid address {name:?}: {e}"))?
        .collect();
    tidy(name, &mut all)?;
    Ok(all)
}

fn tidy(name: &str, all: &mut Vec<SocketAddr>) -> Result<(), String> {
    all.sort();
    all.dedup();
    if all.is_empty() {
        return Err(format!("address {name:?} resolves to nothing"));
    }
    Ok(())
}

fn through(server: SocketAddr, names: &[String]) -> Vec<Result<Vec<SocketAddr>, String>> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let failed = |e: String| names.iter().map(|_| Err(e.clone())).collect();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return failed(format!("resolver runtime: {e}")),
    };
    let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
    udp.port = server.port();
    tcp.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
    let mut b = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    b.options_mut().timeout = TIMEOUT;
    b.options_mut().attempts = 2;
    let resolver = match rt.block_on(async { b.build() }) {
        Ok(r) => r,
        Err(e) => return failed(format!("resolver {server}: {e}")),
    };
    names
        .iter()
        .map(|name| {
            if let Ok(a) = name.parse() {
                return Ok(vec![a]);
            }
            let (host, port) = split(name)?;
            // Fully qualified: no search domains.
            let fqdn = if host.ends_with('.') {
                host.to_string()
            } else {
                format!("{host}.")
            };
            let ips = rt
                .block_on(resolver.lookup_ip(fqdn.as_str()))
                .map_err(|e| format!("{name} through {server}: {e}"))?;
            let mut all: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            tidy(name, &mut all)?;
            Ok(all)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_system_names_resolve_to_every_address() {
        assert!(is_literal("10.0.0.1:80") && is_literal("[::1]:443"));
        assert!(!is_literal("localhost:80"));
        assert_eq!(lookup(None, "10.0.0.1:80").unwrap(), ["10.0.0.1:80".parse().unwrap()]);
        let local = lookup(None, "localhost:8080").unwrap();
        assert!(local.contains(&"127.0.0.1:8080".parse().unwrap()), "{local:?}");
        assert!(lookup(None, "localhost").unwrap_err().contains("host:port"));
        assert!(lookup(None, "localhost:x").unwrap_err().contains("port"));
    }
}
