//! The FHIR listener's certificate and key, taken up again when their files change.
//!
//! Every TLS handshake is answered with the pair in use, held behind one atomic pointer
//! (rustls' certificate resolver), so a new pair serves the next connection while the open
//! ones go on with the pair they started with. The files are looked at every
//! [`WATCH_INTERVAL`] and on SIGHUP; a new pair is used only when it loads whole and the key
//! matches the certificate. One that does not is refused, logged and counted, and the old
//! pair stays in use until the files change again.

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::tls::{TlsSetupError, certificates};
use crate::metrics::{Metrics, Outcome};
use crate::reload::{Trigger, Triggers};

/// How often the certificate and key files are looked at for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What a file looked like: modified, length and (on Unix) inode, which a replace by rename
/// changes even within the file system's clock granularity.
type FileStamp = Option<(SystemTime, u64, u64)>;

/// What the files looked like when last read: a change of either is a reason to read again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    certificate: FileStamp,
    private_key: FileStamp,
}

impl Stamp {
    fn of(certificate: &Path, private_key: &Path) -> Self {
        Self {
            certificate: file_stamp(certificate),
            private_key: file_stamp(private_key),
        }
    }
}

fn file_stamp(path: &Path) -> FileStamp {
    let meta: Metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// The listener's certificate chain and key in use, and where they come from.
pub struct ServerCertificate {
    certificate: PathBuf,
    private_key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The files as they were when last read, used or not.
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("certificate", &self.certificate)
            .field("private_key", &self.private_key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServerCertificate {
    /// Loads the pair; an error when either file cannot be used.
    pub fn load(
        certificate: &Path,
        private_key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsSetupError> {
        let seen = Stamp::of(certificate, private_key);
        let pair = read_pair(certificate, private_key, &provider)?;
        Ok(Self {
            certificate: certificate.to_owned(),
            private_key: private_key.to_owned(),
            provider,
            current: ArcSwap::from_pointee(pair),
            seen: Mutex::new(seen),
        })
    }

    /// Reads the files again and puts the pair in use when it loads. `Ok(false)` when
    /// `only_if_changed` and the files look as they did at the last read.
    pub fn reload(&self, only_if_changed: bool) -> Result<bool, TlsSetupError> {
        let stamp = Stamp::of(&self.certificate, &self.private_key);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if only_if_changed && *seen == stamp {
                return Ok(false);
            }
            *seen = stamp;
        }
        let pair = read_pair(&self.certificate, &self.private_key, &self.provider)?;
        self.current.store(Arc::new(pair));
        Ok(true)
    }

    /// Reloads on SIGHUP and on every change of the files until `stop` turns true.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
        metrics.declare_tls_certificate();
        let mut triggers = Triggers::new(WATCH_INTERVAL);
        while let Some(trigger) = triggers.next(&mut stop).await {
            let only_if_changed = trigger == Trigger::Change;
            self.report(&metrics, self.reload(only_if_changed));
        }
    }

    fn report(&self, metrics: &Metrics, outcome: Result<bool, TlsSetupError>) {
        let certificate = self.certificate.display();
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                metrics.tls_certificate_reload(Outcome::Ok);
                tracing::info!(%certificate, "TLS certificate reloaded");
            }
            Err(error) => {
                metrics.tls_certificate_reload(Outcome::Error);
                tracing::error!(%certificate, %error, "TLS certificate reload refused; the certificate in use is kept");
            }
        }
    }
}

/// The chain and key in the files, the key checked against the chain's first certificate.
fn read_pair(
    certificate: &Path,
    private_key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    let chain = certificates(certificate)?;
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| TlsSetupError::Pem {
        path: private_key.display().to_string(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsSetupError::Server(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for 127.0.0.1 and its key, as PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn served(certificate: &ServerCertificate) -> Vec<u8> {
        certificate.current.load().cert[0].to_vec()
    }

    /// Writes `text` to `path` by a rename, as deployment tools do.
    fn replace(path: &Path, text: &str) {
        let temporary = path.with_extension("new");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, path).unwrap();
    }

    #[test]
    fn a_changed_pair_is_taken_up_and_a_broken_one_refused_keeping_the_old() {
        let dir = std::env::temp_dir().join(format!("fhirgate-cert-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
        let (first_cert, first_key) = pair();
        replace(&cert_path, &first_cert);
        replace(&key_path, &first_key);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certificate = ServerCertificate::load(&cert_path, &key_path, provider).unwrap();
        let first = served(&certificate);
        assert!(
            !certificate.reload(true).unwrap(),
            "unchanged files are not read"
        );
        assert!(
            certificate.reload(false).unwrap(),
            "a signal reads them anyway"
        );

        let (second_cert, second_key) = pair();
        replace(&cert_path, &second_cert);
        let mismatch = certificate.reload(true).unwrap_err().to_string();
        assert!(mismatch.contains("unusable"), "{mismatch}");
        assert_eq!(
            served(&certificate),
            first,
            "a key of another certificate is refused"
        );
        assert!(
            !certificate.reload(true).unwrap(),
            "a refused pair is reported once"
        );

        replace(&key_path, &second_key);
        assert!(certificate.reload(true).unwrap());
        let second = served(&certificate);
        assert_ne!(second, first);

        replace(
            &cert_path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(certificate.reload(true).is_err());
        replace(&key_path, "");
        assert!(certificate.reload(true).is_err());
        assert_eq!(served(&certificate), second);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
