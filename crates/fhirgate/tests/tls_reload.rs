//! The FHIR listener's certificate replaced on disk while the gateway runs: new connections
//! get the new certificate, open ones carry on, and a broken replacement leaves the old one
//! in use.

mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A CA, and server certificates for 127.0.0.1 it signs.
struct Pki {
    dir: TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_der = params.self_signed(&key).unwrap().der().clone();
        Self {
            dir: TempDir::new(),
            ca: Issuer::new(params, key),
            ca_der,
        }
    }

    /// A server certificate with `serial` and its key, as PEM, and the certificate's DER.
    fn server(&self, serial: u64) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    /// Puts `text` in the file `name` by a rename, as deployment tools do.
    fn install(&self, name: &str, text: &str) {
        let temporary = self.dir.0.join(format!("{name}.new"));
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, Path::new(&self.path(name))).unwrap();
    }

    fn tls_yaml(&self) -> String {
        format!(
            "tls:\n  certificate: \"{}\"\n  private_key: \"{}\"\n",
            self.path("server.pem"),
            self.path("server.key")
        )
    }

    /// A new TLS connection to `address`, trusting the CA only.
    async fn connect(&self, address: &str) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap()
    }
}

/// The leaf certificate a connection was served.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The value of the metric series `series`, as exported.
async fn metric(admin: &str, series: &str) -> Option<f64> {
    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const RELOADED: &str = r#"fhirgate_tls_certificate_reloads_total{outcome="ok"}"#;
const REFUSED: &str = r#"fhirgate_tls_certificate_reloads_total{outcome="error"}"#;

#[tokio::test]
async fn a_replaced_certificate_serves_new_connections_and_a_broken_one_is_refused() {
    let pki = Pki::new();
    let (first_cert, first_key, first_der) = pki.server(1001);
    pki.install("server.pem", &first_cert);
    pki.install("server.key", &first_key);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route(
        "GET",
        "Patient/pat-A",
        200,
        r#"{"resourceType":"Patient","id":"pat-A"}"#,
    );
    let gateway = TestGateway::start(&idp, fhir.addr, &pki.tls_yaml()).await;
    let address = gateway
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/fhir")
        .to_owned();

    let open = pki.connect(&address).await;
    assert_eq!(served(&open), first_der);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(open))
        .await
        .unwrap();
    tokio::spawn(connection);
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let read = |sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        let request = http::Request::get("/fhir/Patient/pat-A")
            .header("host", &address)
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())
            .unwrap();
        sender.send_request(request)
    };
    assert_eq!(read(&mut sender).await.unwrap().status(), 200);

    let (second_cert, second_key, second_der) = pki.server(1002);
    pki.install("server.key", &second_key);
    pki.install("server.pem", &second_cert);
    wait_for("the new certificate", async || {
        served(&pki.connect(&address).await) == second_der
    })
    .await;
    let response = read(&mut sender).await.unwrap();
    assert_eq!(response.status(), 200, "the open connection carries on");
    response.into_body().collect().await.unwrap();
    let reloaded = metric(&gateway.admin, RELOADED).await.unwrap();
    assert!(reloaded >= 1.0);
    // The key may have been looked at before its certificate arrived.
    let refused = metric(&gateway.admin, REFUSED).await.unwrap();

    // A certificate without its key: refused, counted, and the second pair kept.
    let (third_cert, _, _) = pki.server(1003);
    pki.install("server.pem", &third_cert);
    wait_for("the refusal", async || {
        metric(&gateway.admin, REFUSED).await == Some(refused + 1.0)
    })
    .await;
    assert_eq!(served(&pki.connect(&address).await), second_der);
    pki.install("server.pem", "not a certificate\n");
    wait_for("the second refusal", async || {
        metric(&gateway.admin, REFUSED).await == Some(refused + 2.0)
    })
    .await;
    assert_eq!(served(&pki.connect(&address).await), second_der);
    assert_eq!(metric(&gateway.admin, RELOADED).await, Some(reloaded));
}
