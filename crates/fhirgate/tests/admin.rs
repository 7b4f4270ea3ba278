//! The admin listener with a bearer token required.

use support::*;

mod support;

#[tokio::test]
async fn readyz_and_metrics_need_the_admin_token_and_healthz_does_not() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let token_file = secret_file("adm1n-t0ken\n");
    let sections = format!("admin:\n  bearer_token_file: \"{token_file}\"\n");
    let gateway = TestGateway::start_with_sections(&idp, fhir.addr, "", "", &sections).await;
    let get = async |path: &str, token: Option<&str>| {
        let mut request = client().get(format!("{}{path}", gateway.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    };

    assert_eq!(get("/healthz", None).await.status(), 200);
    for path in ["/metrics", "/readyz"] {
        let refused = get(path, None).await;
        assert_eq!(refused.status(), 401, "{path}");
        assert!(
            refused.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert_eq!(get(path, Some("adm1n-t0ke")).await.status(), 401, "{path}");
        assert_eq!(get(path, Some("wrong-token")).await.status(), 401, "{path}");
        let allowed = get(path, Some("adm1n-t0ken")).await;
        assert_ne!(allowed.status(), 401, "{path}");
    }
    let metrics = get("/metrics", Some("adm1n-t0ken"))
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("fhirgate_build_info"));
    assert!(!metrics.contains("adm1n-t0ken"));
}
