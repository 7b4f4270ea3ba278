//! An `https` FHIR server behind the gateway that trusts only its own CA, requires the
//! gateway's client certificate (mutual TLS) and a service token: what it sees, and what a
//! gateway without the certificate gets.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio::net::TcpListener;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

/// A CA, the upstream's certificate for 127.0.0.1, and the gateway's client certificate.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "upstream test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "fhirgate");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client.signed_by(&client_key, &issuer).unwrap();
        for (name, text) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.0.join(name), text).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }
}

/// What the upstream saw of each request: its `Authorization` header.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// An HTTPS server for `/fhir/Patient/pat-A` that requires a client certificate of the CA.
async fn https_upstream(pki: &Pki) -> (String, Seen) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("ca.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca[0].clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                // A gateway without the client certificate fails here.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let recorded = recorded.clone();
                    async move {
                        recorded.lock().unwrap().push(
                            request
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_owned()),
                        );
                        Ok::<_, Infallible>(respond(
                            StatusCode::OK,
                            "application/fhir+json",
                            PATIENT_A,
                        ))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}/fhir"), seen)
}

#[tokio::test]
async fn the_upstream_sees_the_gateways_certificate_and_service_token_never_the_clients_token() {
    let pki = Pki::new();
    let (url, seen) = https_upstream(&pki).await;
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let service_token = secret_file("svc-t0ken\n");
    let upstream = format!(
        "  ca_file: \"{}\"\n  client_certificate: \"{}\"\n  client_key: \"{}\"\n  bearer_token_file: \"{service_token}\"\n",
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let gateway = TestGateway::start_at(&idp, &url, "", &upstream, "").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let response = client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["id"],
        "pat-A"
    );
    assert_eq!(*seen.lock().unwrap(), [Some("Bearer svc-t0ken".to_owned())]);
}

#[tokio::test]
async fn without_the_client_certificate_or_the_ca_the_upstream_is_unavailable() {
    let pki = Pki::new();
    let (url, seen) = https_upstream(&pki).await;
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    for upstream in [
        // Trusts the server, proves nothing: the server refuses the handshake.
        format!("  ca_file: \"{}\"\n", pki.path("ca.pem")),
        // Presents its certificate, but does not trust the server's (system roots only).
        format!(
            "  client_certificate: \"{}\"\n  client_key: \"{}\"\n",
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    ] {
        let gateway = TestGateway::start_at(&idp, &url, "", &upstream, "").await;
        let response = client()
            .get(format!("{}/Patient/pat-A", gateway.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{upstream}");
        let outcome: serde_json::Value = response.json().await.unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
    assert!(seen.lock().unwrap().is_empty(), "no request got through");
}
