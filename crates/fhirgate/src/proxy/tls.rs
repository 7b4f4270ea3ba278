//! TLS termination for the FHIR listener, with client certificates for certificate-bound
//! access tokens (RFC 8705).
//!
//! ALPN offers `h2` and `http/1.1`. With a client CA configured, clients are asked for a
//! certificate, which rustls verifies against that CA; the SHA-256 thumbprint of the leaf the
//! client presented is what a token's `cnf.x5t#S256` must equal. The server's own certificate
//! and key are served by [`ServerCertificate`], which takes them up again when their files
//! change.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use super::server_certificate::ServerCertificate;
use crate::config::{ClientCertificates, Tls};

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("the client CA cannot verify certificates: {0}")]
    ClientCa(String),
    #[error("the server certificate and key are unusable: {0}")]
    Server(String),
}

/// TLS on the FHIR listener: the acceptor, and the certificate it serves, to be watched.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    pub certificate: Arc<ServerCertificate>,
}

/// The acceptor for the configured certificate, key and client CA.
pub fn acceptor(settings: &Tls) -> Result<ServerTls, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certificate = Arc::new(ServerCertificate::load(
        &settings.certificate,
        &settings.private_key,
        provider.clone(),
    )?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Server(e.to_string()))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates(path)? {
                roots
                    .add(ca)
                    .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match settings.client_certificates {
                ClientCertificates::Optional => verifier.allow_unauthenticated(),
                ClientCertificates::Required => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        certificate,
    })
}

/// The certificates in the PEM file at `path`; an error when there are none.
pub(super) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let shown = || path.display().to_string();
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::Pem {
            path: shown(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate { path: shown() });
    }
    Ok(chain)
}

/// The RFC 8705 `x5t#S256` thumbprint of a certificate: SHA-256 of its DER, base64url.
pub fn thumbprint(certificate: &CertificateDer<'_>) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, certificate.as_ref()))
}
