//! TLS for outbound `https://`: rustls with the ring provider, TLS 1.2 and 1.3, the
//! public web's roots (Mozilla's, as `webpki-roots` ships them, so nothing depends on
//! the host's certificate store) plus any roots the operator adds for an internal CA.
//! The certificate must be valid for the host the guest named; the address it connects
//! to is the one the address policy checked, never resolved again.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::domain::HostName;

/// The trust every outbound https request is checked against. Cheap to clone.
#[derive(Clone)]
pub struct OutboundTls {
    extra_roots: Vec<CertificateDer<'static>>,
    config: Arc<ClientConfig>,
}

/// Why the operator's extra roots could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no PEM certificate found in the CA file")]
    NoCertificates,
    #[error("the CA file is not PEM certificates: {0}")]
    NotPem(String),
    #[error("a certificate in the CA file cannot be a root: {0}")]
    BadRoot(String),
}

impl std::fmt::Debug for OutboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundTls")
            .field("extra_roots", &self.extra_roots.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for OutboundTls {
    fn eq(&self, other: &Self) -> bool {
        self.extra_roots == other.extra_roots
    }
}

impl Eq for OutboundTls {}

impl Default for OutboundTls {
    fn default() -> Self {
        Self::with_roots(Vec::new()).expect("the bundled public roots are valid")
    }
}

impl OutboundTls {
    /// The public roots plus every certificate in `pem` (a CA bundle).
    pub fn with_extra_roots_pem(pem: &[u8]) -> Result<Self, TlsSetupError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| TlsSetupError::NotPem(err.to_string()))?;
        if roots.is_empty() {
            return Err(TlsSetupError::NoCertificates);
        }
        Self::with_roots(roots)
    }

    fn with_roots(extra_roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsSetupError> {
        let mut store = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for root in &extra_roots {
            store
                .add(root.clone())
                .map_err(|err| TlsSetupError::BadRoot(err.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(store)
            .with_no_client_auth();
        // The connection speaks HTTP/1.1 only; say so, so a server does not pick h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            extra_roots,
            config: Arc::new(config),
        })
    }

    /// Runs the handshake on `stream` for `host`. The error says why, in words for the
    /// execution log, and which wasi-http error the guest gets.
    pub(super) async fn connect(
        &self,
        host: &HostName,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, (String, wasmtime_wasi_http::Error)> {
        let name = match host {
            HostName::Ip(ip) => ServerName::IpAddress((*ip).into()),
            HostName::Domain(name) => ServerName::try_from(name.clone()).map_err(|err| {
                (
                    format!("`{name}` is not a name a certificate can be checked against: {err}"),
                    wasmtime_wasi_http::Error::TlsProtocolError,
                )
            })?,
        };
        TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|err| handshake_error(host, &err))
    }
}

fn handshake_error(host: &HostName, err: &std::io::Error) -> (String, wasmtime_wasi_http::Error) {
    use wasmtime_wasi_http::Error;
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let guest_error = match tls {
        Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => Error::TlsProtocolError,
        None => Error::ConnectionTerminated,
    };
    (
        format!("TLS handshake with {host} failed: {err}"),
        guest_error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_roots_load_and_a_ca_file_must_hold_certificates() {
        let tls = OutboundTls::default();
        assert!(tls.extra_roots.is_empty());
        assert!(matches!(
            OutboundTls::with_extra_roots_pem(b""),
            Err(TlsSetupError::NoCertificates)
        ));
        assert!(matches!(
            OutboundTls::with_extra_roots_pem(
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
            ),
            Err(TlsSetupError::NotPem(_))
        ));
    }
}
