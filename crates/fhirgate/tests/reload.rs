//! Configuration reload of a `fhirgate serve` process: on SIGHUP and on a change of the
//! file, under load, and with files it must refuse.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::*;

mod support;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const AUDIT: &str = r#"audit:
  spool: { path: "{dir}/spool" }
  sinks:
    trail:
      jsonl: { path: "{dir}/audit.jsonl" }"#;
const AUDIENCE: &str = "audience: \"https://gw.test/fhir\"";
const OTHER_AUDIENCE: &str = "audience: \"https://other.test/fhir\"";

async fn start() -> (FakeIdp, FakeFhir, GatewayProcess, String) {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = GatewayProcess::start(&idp, fhir.addr, AUDIT, Stdio::null(), "/readyz").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    (idp, fhir, gateway, token)
}

/// Replaces the config file the way deployment tools do: a new file renamed over it.
fn rewrite_config(gateway: &GatewayProcess, edit: impl FnOnce(String) -> String) {
    let path = gateway.config_path();
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let next = path.with_extension("yaml.new");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, &path).unwrap();
}

fn hangup(gateway: &GatewayProcess) {
    gateway.signal("HUP");
}

async fn status(gateway: &GatewayProcess, token: &str) -> u16 {
    client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn reloads(gateway: &GatewayProcess, outcome: &str) -> f64 {
    let series = format!("fhirgate_config_reloads_total{{outcome=\"{outcome}\"}}");
    gateway.metric(&series).await.unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_loses_no_request_and_the_new_policy_takes_over() {
    let (_idp, _fhir, gateway, token) = start().await;
    assert_eq!(status(&gateway, &token).await, 200);

    // Four clients, each sending one request after another for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, token) = (stop.clone(), token.clone());
            let url = format!("{}/Patient/pat-A", gateway.base);
            tokio::spawn(async move {
                let client = client();
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match client.get(&url).bearer_auth(&token).send().await {
                        Ok(response) => seen.push(response.status().as_u16()),
                        Err(error) => panic!("a request failed during the reload: {error}"),
                    }
                }
                seen
            })
        })
        .collect();

    // The new file trusts the issuer for another audience only: the clients' token stops
    // being accepted once it is in use.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    rewrite_config(&gateway, |text| text.replace(AUDIENCE, OTHER_AUDIENCE));
    hangup(&gateway);
    wait_for("the reloaded policy refuses the token", async || {
        status(&gateway, &token).await == 401
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);

    for client in clients {
        let seen = client.await.unwrap();
        assert!(seen.len() > 2, "the client kept sending: {seen:?}");
        // Each client sends one request at a time, each served whole by the configuration
        // in use when it arrived: 200s, then 401s, nothing else and no way back.
        let switched = seen.iter().position(|s| *s == 401).unwrap_or(seen.len());
        assert!(seen[..switched].iter().all(|s| *s == 200), "{seen:?}");
        assert!(seen[switched..].iter().all(|s| *s == 401), "{seen:?}");
    }
    // The signal and the file watch may both have seen the change; one reload put it in use.
    assert!(reloads(&gateway, "ok").await >= 1.0);
    assert_eq!(reloads(&gateway, "error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_policy_and_says_where_it_is_wrong() {
    let (_idp, _fhir, gateway, token) = start().await;
    let last_success = "fhirgate_config_last_reload_success_timestamp_seconds";
    let loaded_at = gateway.metric(last_success).await.unwrap();
    assert!(loaded_at > 0.0);

    // A value of the wrong kind, on a line of its own.
    rewrite_config(&gateway, |text| {
        text.replace(
            "    algorithms: [\"RS256\"]",
            "    algorithms: [\"RS256\"]\n    leeway: \"a while\"",
        )
    });
    let bad_line = std::fs::read_to_string(gateway.config_path())
        .unwrap()
        .lines()
        .position(|line| line.contains("a while"))
        .unwrap()
        + 1;
    hangup(&gateway);
    wait_for("the refused reload counted", async || {
        reloads(&gateway, "error").await == 1.0
    })
    .await;
    assert_eq!(status(&gateway, &token).await, 200, "the old policy serves");
    assert_eq!(reloads(&gateway, "ok").await, 0.0);
    assert_eq!(gateway.metric(last_success).await, Some(loaded_at));
    let logs = gateway.stderr();
    let refusal = logs
        .lines()
        .find(|line| line.contains("configuration reload refused"))
        .unwrap_or_else(|| panic!("no refusal logged: {logs}"));
    assert!(
        refusal.contains(&format!("fhirgate.yaml:{bad_line}:")),
        "the log names the line: {refusal}"
    );
    // The file watch saw the same bad file: it is reported once, not at every look.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(reloads(&gateway, "error").await, 1.0);

    // Fixed, the file is taken up on its own, without a signal.
    rewrite_config(&gateway, |text| {
        text.replace("\n    leeway: \"a while\"", "")
            .replace(AUDIENCE, OTHER_AUDIENCE)
    });
    wait_for("the corrected file in use", async || {
        status(&gateway, &token).await == 401
    })
    .await;
    assert_eq!(reloads(&gateway, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_only_a_restart_can_change_is_refused_by_name() {
    let (_idp, _fhir, gateway, token) = start().await;
    rewrite_config(&gateway, |text| {
        text.replace("{ path: \"", "{ path: \"/tmp/elsewhere")
            .replace(AUDIENCE, OTHER_AUDIENCE)
    });
    hangup(&gateway);
    wait_for("the refused reload counted", async || {
        reloads(&gateway, "error").await >= 1.0
    })
    .await;
    assert_eq!(
        status(&gateway, &token).await,
        200,
        "nothing of it was used"
    );
    let logs = gateway.stderr();
    assert!(
        logs.lines()
            .any(|line| line.contains("audit change only on restart")),
        "{logs}"
    );
}
