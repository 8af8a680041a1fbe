//! TLS from a TCP listener to the servers of a pool with `tls: true`
//! (nginx stream `proxy_ssl on`): the connection is encrypted again
//! towards the server, with the pool's `tls_sni`, `tls_verify` and
//! `tls_ca_file` (and client certificate, `tls_cert`), as HTTP traffic to
//! that pool is. No ALPN is offered: the
//! bytes are not necessarily HTTP.

use crate::upstream::UpstreamTls;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use std::io;
use std::pin::Pin;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// The TLS client settings of one pool, built once per configuration.
pub struct ToServers {
    connector: SslConnector,
    sni: String,
    verify: bool,
}

impl ToServers {
    pub fn new(tls: &UpstreamTls) -> Result<ToServers, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        if let Some(cas) = &tls.ca {
            let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
            for ca in cas.iter() {
                store.add_cert(ca.clone()).map_err(|e| e.to_string())?;
            }
            b.set_verify_cert_store(store.build()).map_err(|e| e.to_string())?;
        }
        if let Some(ck) = &tls.client {
            b.set_certificate(ck.leaf()).map_err(|e| e.to_string())?;
            for c in ck.intermediates() {
                b.add_extra_chain_cert(c.clone()).map_err(|e| e.to_string())?;
            }
            b.set_private_key(ck.key()).map_err(|e| e.to_string())?;
        }
        b.set_verify(if tls.verify {
            SslVerifyMode::PEER
        } else {
            SslVerifyMode::NONE
        });
        Ok(ToServers {
            connector: b.build(),
            sni: tls.sni.clone(),
            verify: tls.verify,
        })
    }

    /// The TLS handshake over `tcp`, just connected to a server.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<SslStream<TcpStream>> {
        let mut c = self.connector.configure().map_err(io::Error::other)?;
        c.set_use_server_name_indication(!self.sni.is_empty());
        // A name to check the certificate against is the SNI name; without one, the chain only.
        c.set_verify_hostname(self.verify && !self.sni.is_empty());
        let ssl = c.into_ssl(&self.sni).map_err(io::Error::other)?;
        let mut s = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
        Pin::new(&mut s)
            .connect()
            .await
            .map_err(|e| io::Error::other(format!("TLS handshake: {e}")))?;
        Ok(s)
    }
}
