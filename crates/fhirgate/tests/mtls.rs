//! TLS on the FHIR listener and certificate-bound tokens (RFC 8705): a token whose
//! `cnf.x5t#S256` names a client certificate is accepted only on a connection that presented
//! that certificate; unbound tokens keep working over TLS with or without one.

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::json;
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

/// A test CA, a server certificate for 127.0.0.1 and two client certificates, as PEM files.
struct Pki {
    dir: TempDir,
    ca_pem: String,
    clients: Vec<(String, String)>,
    client_thumbprints: Vec<String>,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "fhirgate test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        std::fs::write(dir.0.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.0.join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.0.join("ca.pem"), ca_cert.pem()).unwrap();

        let mut clients = Vec::new();
        let mut client_thumbprints = Vec::new();
        for name in ["app-1", "app-2"] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &issuer).unwrap();
            client_thumbprints.push(fhirgate::proxy::certificate_thumbprint(cert.der()));
            clients.push((cert.pem(), key.serialize_pem()));
        }
        Self {
            ca_pem: ca_cert.pem(),
            dir,
            clients,
            client_thumbprints,
        }
    }

    fn tls_yaml(&self, client_certificates: &str) -> String {
        let path = |name: &str| self.dir.0.join(name).display().to_string();
        format!(
            "tls:\n  certificate: \"{}\"\n  private_key: \"{}\"\n  client_ca: \"{}\"\n  client_certificates: {client_certificates}",
            path("server.pem"),
            path("server.key"),
            path("ca.pem"),
        )
    }

    /// An HTTPS client trusting the test CA, presenting client certificate `n` if given.
    fn client(&self, n: Option<usize>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()]);
        if let Some(n) = n {
            let (cert, key) = &self.clients[n];
            builder = builder
                .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

async fn world(pki: &Pki, mode: &str) -> (FakeIdp, FakeFhir, TestGateway, String) {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start(&idp, fhir.addr, &pki.tls_yaml(mode)).await;
    let url = format!(
        "{}/Patient/pat-A",
        gateway.base.replace("http://", "https://")
    );
    (idp, fhir, gateway, url)
}

fn bound_token(idp: &FakeIdp, thumbprint: Option<&str>) -> String {
    let mut claims = claims(&idp.issuer, "patient/*.rs");
    if let Some(x5t) = thumbprint {
        claims["cnf"] = json!({ "x5t#S256": x5t });
    }
    sign("rsa-a", Some("rsa-a"), &claims)
}

async fn status(client: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, challenge)
}

#[tokio::test]
async fn a_certificate_bound_token_needs_its_certificate() {
    let pki = Pki::new();
    let (idp, fhir, _gateway, url) = world(&pki, "optional").await;
    let token = bound_token(&idp, Some(&pki.client_thumbprints[0]));

    assert_eq!(status(&pki.client(Some(0)), &url, &token).await.0, 200);
    assert_eq!(fhir.seen().len(), 1);
    assert_eq!(fhir.seen()[0].headers["x-forwarded-proto"], "https");

    for (what, client) in [
        ("another certificate", pki.client(Some(1))),
        ("no certificate", pki.client(None)),
    ] {
        let (code, challenge) = status(&client, &url, &token).await;
        assert_eq!(code, 401, "{what}");
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{what}: {challenge}"
        );
    }
    assert_eq!(fhir.seen().len(), 1, "refusals never reach the upstream");
}

#[tokio::test]
async fn unbound_tokens_work_over_tls_with_or_without_a_certificate() {
    let pki = Pki::new();
    let (idp, _fhir, _gateway, url) = world(&pki, "optional").await;
    let token = bound_token(&idp, None);
    assert_eq!(status(&pki.client(None), &url, &token).await.0, 200);
    assert_eq!(status(&pki.client(Some(1)), &url, &token).await.0, 200);
}

#[tokio::test]
async fn required_client_certificates_fail_the_handshake_without_one() {
    let pki = Pki::new();
    let (idp, fhir, _gateway, url) = world(&pki, "required").await;
    let token = bound_token(&idp, None);
    let without = pki.client(None).get(&url).bearer_auth(&token).send().await;
    assert!(
        without.is_err(),
        "a connection without a certificate was served"
    );
    assert_eq!(status(&pki.client(Some(0)), &url, &token).await.0, 200);
    assert_eq!(fhir.seen().len(), 1);
}
