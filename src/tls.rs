//! TLS termination: certificates loaded and checked at config time (so `-t`
//! and reloads catch a missing, unreadable, mismatched or expired file), a
//! per-listener store chosen by SNI (exact, `*.` wildcard, default), and the
//! OpenSSL handshake callback that reads the store from the live snapshot, so
//! a reload swaps certificates without touching open connections.

use crate::live::Live;
use crate::routing::HostTable;
use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::NameType;
use openssl::x509::X509;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use std::sync::Arc;

pub struct CertKey {
    /// Leaf first, then intermediates.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// Names from the certificate (SAN DNS names, else CN).
    pub names: Vec<String>,
}

/// Load a PEM chain + key and check they belong together and are in date.
pub fn load(cert_path: &str, key_path: &str) -> Result<CertKey, String> {
    let cert_pem = std::fs::read(cert_path).map_err(|e| format!("cannot read certificate {cert_path}: {e}"))?;
    let key_pem = std::fs::read(key_path).map_err(|e| format!("cannot read key {key_path}: {e}"))?;
    let chain = X509::stack_from_pem(&cert_pem).map_err(|e| format!("{cert_path} is not a PEM certificate: {e}"))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{cert_path} holds no certificate"))?;
    let key = PKey::private_key_from_pem(&key_pem).map_err(|e| format!("{key_path} is not a PEM private key: {e}"))?;
    let public = leaf.public_key().map_err(|e| format!("{cert_path}: {e}"))?;
    if !key.public_eq(&public) {
        return Err(format!("key {key_path} does not match certificate {cert_path}"));
    }
    let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
    if leaf.not_after() < now {
        return Err(format!("certificate {cert_path} expired on {}", leaf.not_after()));
    }
    if leaf.not_before() > now {
        return Err(format!(
            "certificate {cert_path} is not valid before {}",
            leaf.not_before()
        ));
    }
    let mut names: Vec<String> = leaf
        .subject_alt_names()
        .map(|sans| sans.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
        .unwrap_or_default();
    if names.is_empty() {
        names = leaf
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
            .collect();
    }
    Ok(CertKey { chain, key, names })
}

/// Certificates of one listener by SNI name; the first one is the default.
pub type CertStore = HostTable<Arc<CertKey>>;

/// The handshake callback of one TLS listener.
pub struct SniCallback {
    pub live: Arc<Live>,
    /// The listener's place in the config's `listeners:` (or, with `tcp`, `tcp:`) list.
    pub listener: usize,
    pub tcp: bool,
}

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let snap = self.live.snapshot();
        let store = match self.tcp {
            false => snap.listeners.get(self.listener).and_then(|l| l.certs.as_ref()),
            true => snap.tcp.get(self.listener).and_then(|t| t.certs.as_ref()),
        };
        let Some(store) = store else {
            return;
        };
        let name = ssl.servername(NameType::HOST_NAME).unwrap_or("").to_string();
        let Some(ck) = store.lookup(&name) else { return };
        let r = pingora_core::tls::ext::ssl_use_certificate(ssl, &ck.chain[0])
            .and_then(|_| pingora_core::tls::ext::ssl_use_private_key(ssl, &ck.key))
            .and_then(|_| {
                ck.chain[1..]
                    .iter()
                    .try_for_each(|c| pingora_core::tls::ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(e) = r {
            log::error!("TLS: cannot use certificate for {name:?}: {e}");
        }
    }
}
