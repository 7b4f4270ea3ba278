//! How the gateway reaches an `https` upstream, and what it proves to it: the CAs it trusts
//! for the upstream's certificate (a bundle of its own, or the system's), an optional client
//! certificate for mutual TLS, and an optional bearer credential (static here, or fetched by
//! the client-credentials grant in [`super::upstream_token`]), so that the FHIR server can
//! refuse every request that did not come through the gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config;

/// Why an upstream's TLS or credential cannot be set up, and which section says so
/// (`upstream`, or `routes[1].upstream`).
#[derive(Debug, thiserror::Error)]
#[error("{at}{problem}")]
pub struct UpstreamSetupError {
    pub at: String,
    pub problem: SetupProblem,
}

/// What is wrong, written after the section's key.
#[derive(Debug, thiserror::Error)]
pub enum SetupProblem {
    #[error(".{key}: cannot read {path}: {reason}")]
    Read {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(".{key}: {path} holds no certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error(": give both client_certificate and client_key, or neither")]
    HalfIdentity,
    #[error(": {0}")]
    Tls(#[from] rustls::Error),
    #[error(".{0}")]
    Token(#[from] config::BearerTokenError),
    #[error(": the bearer token cannot be an HTTP header value")]
    BadToken,
    #[error(".client_credentials.{0}")]
    Grant(#[from] super::upstream_token::GrantSetupError),
}

impl UpstreamSetupError {
    /// The line of the configuration the error is about, where it is about one key.
    pub fn line(&self) -> Option<u64> {
        match &self.problem {
            SetupProblem::Grant(super::upstream_token::GrantSetupError::Secret(error)) => {
                error.line()
            }
            _ => None,
        }
    }
}

impl UpstreamSetupError {
    /// The key the error is about (`routes[1].upstream.ca_file`), when it is about one.
    pub fn key(&self) -> Option<String> {
        let key = match &self.problem {
            SetupProblem::Read { key, .. } | SetupProblem::NoCertificate { key, .. } => *key,
            SetupProblem::Token(error) => error.key(),
            _ => return None,
        };
        Some(format!("{}.{key}", self.at))
    }
}

impl SetupProblem {
    /// The problem, in the section at `at`.
    pub fn at(self, at: &str) -> UpstreamSetupError {
        UpstreamSetupError {
            at: at.to_owned(),
            problem: self,
        }
    }
}

fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SetupProblem> {
    let unreadable = |reason: String| SetupProblem::Read {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certs.is_empty() {
        return Err(SetupProblem::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The TLS client configuration for `upstream`. The system's roots are read only for an
/// `https` upstream without a CA bundle of its own.
pub fn client_config(upstream: &config::Upstream) -> Result<ClientConfig, SetupProblem> {
    let mut roots = RootCertStore::empty();
    match &upstream.ca_file {
        Some(path) => {
            for cert in certificates("ca_file", path)? {
                roots.add(cert)?;
            }
        }
        None if upstream.url.uri().scheme_str() == Some("https") => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    // ALPN is the connector's to set (HTTP/1.1, or HTTP/2 with `http2`).
    let config = match (&upstream.client_certificate, &upstream.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(chain), Some(key)) => {
            let chain = certificates("client_certificate", chain)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| SetupProblem::Read {
                key: "client_key",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => return Err(SetupProblem::HalfIdentity),
    };
    Ok(config)
}

/// The `Authorization` value the gateway sends upstream, from the token's file or variable.
pub fn credential(upstream: &config::Upstream) -> Result<Option<HeaderValue>, SetupProblem> {
    let Some(token) = config::bearer_token(
        upstream.bearer_token_file.as_deref(),
        upstream.bearer_token_env.as_deref(),
    )?
    else {
        return Ok(None);
    };
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| SetupProblem::BadToken)?;
    value.set_sensitive(true);
    Ok(Some(value))
}
