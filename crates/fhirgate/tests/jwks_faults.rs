//! The identity provider misbehaving while the gateway runs: its JWKS endpoint hangs, fails,
//! answers garbage, rotates or drops keys, or asks to be cached briefly. Each test counts the
//! gateway's fetches at the provider.

mod support;

use std::time::{Duration, Instant};

use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

struct World {
    idp: FakeIdp,
    _fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world(issuer_extra: &str) -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start(&idp, fhir.addr, issuer_extra).await;
    World {
        idp,
        _fhir: fhir,
        gateway,
    }
}

fn token(world: &World, key: &str, kid: &str) -> String {
    sign(key, Some(kid), &claims(&world.idp.issuer, "patient/*.rs"))
}

async fn status(world: &World, token: &str) -> u16 {
    client()
        .get(format!("{}/Patient/pat-A", world.gateway.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Whatever the JWKS endpoint does wrong, the keys of the last good fetch stay in use, a token
/// naming an unknown key is refused as invalid (not as an outage), and the storm of such tokens
/// costs one fetch per cool-down.
#[tokio::test]
async fn a_failing_jwks_endpoint_keeps_the_last_good_keys() {
    for mode in [JwksMode::Fail500, JwksMode::Garbage, JwksMode::Hang] {
        let w = world("").await;
        w.idp.set_mode(mode);
        let stranger = token(&w, "rsa-b", "unknown-kid");
        let good = token(&w, "rsa-a", "rsa-a");

        let waiting = {
            let (base, stranger) = (w.gateway.base.clone(), stranger.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let status = client()
                    .get(format!("{base}/Patient/pat-A"))
                    .bearer_auth(stranger)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                (status, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A valid token is not held up by the fetch its neighbour caused.
        let started = Instant::now();
        assert_eq!(status(&w, &good).await, 200, "{mode:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode:?}: a valid token waited {:?} for an unrelated key fetch",
            started.elapsed()
        );
        let (stranger_status, _) = waiting.await.unwrap();
        assert_eq!(stranger_status, 401, "{mode:?}");
        for _ in 0..20 {
            assert_eq!(status(&w, &stranger).await, 401, "{mode:?}");
        }
        assert_eq!(
            w.idp.jwks_fetches(),
            2,
            "{mode:?}: start-up plus one fetch in the cool-down"
        );
        assert_eq!(status(&w, &good).await, 200, "{mode:?}: old keys kept");
    }
}

/// 1,000 requests with random unknown key ids from 20 concurrent clients: one fetch for the
/// whole storm.
#[tokio::test]
async fn a_thousand_unknown_kids_cost_one_fetch_per_cooldown() {
    let w = world("").await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for worker in 0..20 {
        let (http, base, issuer) = (http.clone(), w.gateway.base.clone(), w.idp.issuer.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in 0..50 {
                let token = sign(
                    "rsa-b",
                    Some(&format!("random-{worker}-{n}-{}", uuid::Uuid::new_v4())),
                    &claims(&issuer, "patient/*.rs"),
                );
                let response = http
                    .get(format!("{base}/Patient/pat-A"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    let mut answered = 0;
    for worker in workers {
        for status in worker.await.unwrap() {
            assert_eq!(status, 401);
            answered += 1;
        }
    }
    assert_eq!(answered, 1000);
    assert_eq!(w.idp.jwks_fetches(), 2, "start-up plus one fetch");
}

/// After the cool-down, the next unknown kid may fetch again, and a key rotated in meanwhile
/// is found.
#[tokio::test]
async fn the_cooldown_ends() {
    let w = world("    jwks_refetch_cooldown: \"1s\"").await;
    assert_eq!(status(&w, &token(&w, "rsa-b", "rsa-b")).await, 401);
    assert_eq!(w.idp.jwks_fetches(), 2);
    w.idp.set_keys(vec![jwk("rsa-a"), jwk("rsa-b")]);
    assert_eq!(
        status(&w, &token(&w, "rsa-b", "rsa-b")).await,
        401,
        "inside the cool-down"
    );
    assert_eq!(w.idp.jwks_fetches(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&w, &token(&w, "rsa-b", "rsa-b")).await, 200);
    assert_eq!(w.idp.jwks_fetches(), 3);
}

/// A key the provider drops stops working at the next refresh; its replacement works.
#[tokio::test]
async fn a_dropped_key_stops_working_after_the_refresh() {
    let w = world("    jwks_refresh_interval: \"1s\"").await;
    let old = token(&w, "rsa-a", "rsa-a");
    assert_eq!(status(&w, &old).await, 200);
    w.idp.set_keys(vec![jwk("rsa-b")]);
    let before = w.idp.jwks_fetches();
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.idp.jwks_fetches() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh token (not one the verified-token cache remembers) with the dropped key.
    assert_eq!(status(&w, &token(&w, "rsa-a", "rsa-a")).await, 401);
    assert_eq!(status(&w, &token(&w, "rsa-b", "rsa-b")).await, 200);
}

/// `Cache-Control: max-age` brings background fetches forward, never below the lower bound;
/// without it the configured interval holds.
#[tokio::test]
async fn max_age_sets_the_refresh_within_bounds() {
    let w = world("    jwks_refresh_interval: \"1h\"\n    jwks_min_refresh_interval: \"1s\"").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.idp.jwks_fetches(), 1, "no max-age: the hour holds");

    // max-age=0 is clamped to the one-second lower bound. The next background fetch comes
    // at the interval computed from the start-up fetch; the provider is asked to be refreshed
    // on demand once to adopt the header.
    w.idp.set_mode(JwksMode::ServeMaxAge(0));
    let _ = status(&w, &token(&w, "rsa-b", "nobody")).await;
    let adopted = w.idp.jwks_fetches();
    assert_eq!(adopted, 2);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let later = w.idp.jwks_fetches() - adopted;
    assert!(
        (2..=4).contains(&later),
        "{later} background fetches in 3.5 s at a 1 s lower bound"
    );
}
