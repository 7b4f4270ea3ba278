//! `upstream.client_credentials`: the gateway's own access token for the FHIR server, got by
//! an OAuth client-credentials grant (RFC 6749 section 4.4) instead of a static bearer token.
//!
//! The client secret is never written in the configuration: it comes from a file or an
//! environment variable, read when the gateway is built (and by `fhirgate check`). A secret
//! that cannot be read is reported with the line of the key that names it, never quoted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{HttpUrl, InlineSecret, duration, schema};

/// How the gateway authenticates to the token endpoint (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretAuth {
    /// HTTP Basic with client id and secret.
    #[default]
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
}

/// A client-credentials grant at a token endpoint.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    /// The authorization server's token endpoint.
    pub token_endpoint: HttpUrl,
    /// The gateway's client id there.
    pub client_id: String,
    /// How the gateway authenticates.
    #[serde(default)]
    pub auth: SecretAuth,
    /// Never accepted: a secret is not written in the configuration. Refused with what to do
    /// instead.
    #[serde(default)]
    #[schemars(skip)]
    pub client_secret: Option<InlineSecret>,
    /// File holding the client secret (trailing newline ignored).
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub client_secret_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the client secret, instead of a file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub client_secret_env: Option<Spanned<String>>,
    /// `scope` asked for (space-separated); none when absent.
    #[serde(default)]
    pub scope: Option<String>,
    /// `audience` asked for, for authorization servers that mint tokens per audience.
    #[serde(default)]
    pub audience: Option<String>,
    /// `resource` asked for (RFC 8707): the absolute URI of the FHIR server.
    #[serde(default)]
    pub resource: Option<String>,
    /// Time allowed for one call to the token endpoint.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Why the client secret cannot be had. Each names the line of the key that says where the
/// secret is, and never the secret.
#[derive(Debug, thiserror::Error)]
pub enum ClientSecretError {
    #[error("client_secret_file: cannot read {path}: {source}")]
    Read {
        line: u64,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("client_secret_file: {path} is empty")]
    EmptyFile { line: u64, path: PathBuf },
    #[error("client_secret_env: the environment variable {name} is not set or empty")]
    MissingEnv { line: u64, name: String },
    #[error("give exactly one of client_secret_file and client_secret_env")]
    NotOneSource,
}

impl ClientSecretError {
    /// The line of the configuration the error is about, when it is about one key.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Read { line, .. }
            | Self::EmptyFile { line, .. }
            | Self::MissingEnv { line, .. } => Some(*line),
            Self::NotOneSource => None,
        }
    }
}

impl ClientCredentials {
    /// The client secret, read from its file or variable now (trailing line ends dropped).
    pub fn secret(&self) -> Result<String, ClientSecretError> {
        match (&self.client_secret_file, &self.client_secret_env) {
            (Some(file), None) => {
                let line = file.referenced.line();
                let path = &file.value;
                let text =
                    std::fs::read_to_string(path).map_err(|source| ClientSecretError::Read {
                        line,
                        path: path.clone(),
                        source,
                    })?;
                let secret = text.trim_end_matches(['\r', '\n']);
                if secret.is_empty() {
                    return Err(ClientSecretError::EmptyFile {
                        line,
                        path: path.clone(),
                    });
                }
                Ok(secret.to_owned())
            }
            (None, Some(env)) => match std::env::var(&env.value) {
                Ok(secret) if !secret.is_empty() => Ok(secret),
                _ => Err(ClientSecretError::MissingEnv {
                    line: env.referenced.line(),
                    name: env.value.clone(),
                }),
            },
            _ => Err(ClientSecretError::NotOneSource),
        }
    }

    /// Rules of the section alone, as `(key, message)` relative to it.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.client_id.is_empty() {
            return Err(("client_id", "must not be empty".into()));
        }
        if self.client_secret_file.is_some() == self.client_secret_env.is_some() {
            return Err((
                "client_secret_file",
                "give exactly one of client_secret_file and client_secret_env".into(),
            ));
        }
        for (key, value) in [
            ("scope", &self.scope),
            ("audience", &self.audience),
            ("resource", &self.resource),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err((key, "must not be empty when given".into()));
            }
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be longer than zero".into()));
        }
        Ok(())
    }
}
