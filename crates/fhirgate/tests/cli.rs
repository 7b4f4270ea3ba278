//! The `fhirgate` command as an operator runs it.

use std::process::Command;

const DEFAULT: &str = include_str!("../config/default.yaml");

fn check(text: &str) -> std::process::Output {
    check_with_env(text, &[])
}

/// `fhirgate check` of `text` with `env` added to its environment.
fn check_with_env(text: &str, env: &[(&str, &str)]) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("fhirgate-cli-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    output
}

/// The embedded default with an introspection section of `secret` on its issuer.
fn with_introspection(secret: &str) -> String {
    DEFAULT.replace(
        "    leeway: \"30s\"\n",
        &format!(
            "    leeway: \"30s\"\n    introspection:\n      endpoint: \"http://127.0.0.1:9000/introspect\"\n      client_id: \"fhirgate\"\n{secret}"
        ),
    )
}

#[test]
fn a_secret_written_in_the_configuration_is_refused_with_its_line_and_where_it_goes() {
    let text = with_introspection("      client_secret: \"hunter2\"\n");
    assert_ne!(text, DEFAULT);
    let line = text
        .lines()
        .position(|l| l.contains("client_secret:"))
        .unwrap()
        + 1;
    let output = check(&text);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(":{line}:")),
        "line {line} in: {stderr}"
    );
    assert!(
        stderr.contains("client_secret_file") && stderr.contains("client_secret_env"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the secret is not repeated: {stderr}"
    );
}

#[test]
fn a_secret_comes_from_the_environment_variable_the_configuration_names() {
    let text = with_introspection("      client_secret_env: \"FHIRGATE_TEST_SECRET\"\n");
    let output = check_with_env(&text, &[("FHIRGATE_TEST_SECRET", "s3cret")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = check(&text);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FHIRGATE_TEST_SECRET is not set"),
        "{stderr}"
    );
    let both = with_introspection(
        "      client_secret_env: \"FHIRGATE_TEST_SECRET\"\n      client_secret_file: \"/nonexistent\"\n",
    );
    let output = check_with_env(&both, &[("FHIRGATE_TEST_SECRET", "s3cret")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("exactly one of"));
}

#[test]
fn check_accepts_the_embedded_default() {
    let output = check(DEFAULT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_names_a_misspelt_key_and_its_line_and_exits_2() {
    let text = DEFAULT.replace("  connect_timeout:", "  conect_timeout:");
    let line = text
        .lines()
        .position(|l| l.contains("conect_timeout"))
        .unwrap()
        + 1;
    let output = check(&text);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("conect_timeout"), "{stderr}");
    assert!(
        stderr.contains(&format!(":{line}:")),
        "line {line} in: {stderr}"
    );
}

#[test]
fn check_refuses_trace_export_without_the_otlp_feature() {
    let text = format!("{DEFAULT}telemetry:\n  otlp_endpoint: \"http://127.0.0.1:4318\"\n");
    let output = check(&text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if cfg!(feature = "otlp") {
        assert!(output.status.success(), "{stderr}");
    } else {
        assert_eq!(output.status.code(), Some(2));
        assert!(stderr.contains("telemetry.otlp_endpoint"), "{stderr}");
        assert!(
            stderr.contains("built without the `otlp` feature"),
            "{stderr}"
        );
    }
}

#[test]
fn check_accepts_break_the_glass_and_names_a_bad_value_and_its_line() {
    let good = format!(
        "{DEFAULT}break_glass:\n  codes: [BTG]\n  header: \"X-Purpose-Of-Use\"\n  permissions: rs\n  resource_types: [Observation, Condition]\n  clients: [ward-app]\n  require_fhir_user: true\n"
    );
    let output = check(&good);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        check(&format!("{DEFAULT}break_glass: {{}}\n"))
            .status
            .success()
    );
    let section_line = DEFAULT.lines().count() + 1;
    for (section, line, why) in [
        (
            "break_glass:\n  permissions: sr\n",
            1,
            "letters in the order c r u d s",
        ),
        (
            "break_glass:\n  codes: [BTG]\n  resource_types: [Observations]\n",
            2,
            "not an R4 resource type",
        ),
        (
            "break_glass:\n  header: Authorization\n",
            1,
            "cannot carry a purpose of use",
        ),
        (
            "break_glass:\n  header: Origin\n",
            1,
            "cannot carry a purpose of use",
        ),
        (
            "break_glass:\n  header: X-Forwarded-For\n",
            1,
            "cannot carry a purpose of use",
        ),
        (
            "break_glass:\n  codes: []\n",
            1,
            "at least one purpose-of-use code",
        ),
        (
            "break_glass:\n  clients: [ward-app]\n  clinets: []\n",
            2,
            "clinets",
        ),
    ] {
        let output = check(&format!("{DEFAULT}{section}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{section}: {stderr}");
        assert!(stderr.contains(why), "{section}: {stderr}");
        let at = section_line + line;
        assert!(
            stderr.contains(&format!(":{at}:")),
            "line {at} in: {stderr}"
        );
    }
}

#[test]
fn check_reports_a_missing_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "--config", "/nonexistent/fhirgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
}

#[test]
fn check_reads_the_files_the_configuration_names() {
    let secret = DEFAULT.replace(
        "audit:",
        "  - issuer: \"https://opaque.example\"\n    audience: \"https://gw.example/fhir\"\n    jwt: false\n    introspection:\n      endpoint: \"https://opaque.example/introspect\"\n      client_id: \"fhirgate\"\n      client_secret_file: \"/nonexistent/secret\"\naudit:",
    );
    let tls = format!(
        "{DEFAULT}tls:\n  certificate: \"/nonexistent/server.pem\"\n  private_key: \"/nonexistent/server.key\"\n"
    );
    let audit = DEFAULT.replace(
        "path: \"fhirgate-audit.jsonl\"",
        "path: \"/nonexistent/folder/audit.jsonl\"",
    );
    let required_without_ca = format!(
        "{DEFAULT}tls:\n  certificate: \"/nonexistent/server.pem\"\n  private_key: \"/nonexistent/server.key\"\n  client_certificates: required\n"
    );
    for (what, text, named) in [
        (
            "client certificates without a CA",
            required_without_ca,
            "tls.client_certificates",
        ),
        ("introspection secret", secret, "/nonexistent/secret"),
        ("TLS certificate", tls, "/nonexistent/server.pem"),
        ("audit folder", audit, "/nonexistent/folder"),
    ] {
        let output = check(&text);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(named), "{what}: {stderr}");
    }
}

mod support;

/// Synthetic claims of a patient-context token from the embedded default's issuer.
fn patient_claims(scope: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": "http://127.0.0.1:9000",
        "aud": "http://127.0.0.1:8080/fhir",
        "sub": "user-7",
        "client_id": "growth-chart",
        "patient": "Patient/p-1001",
        "exp": 4_102_444_800u64,
        "scope": scope,
    })
}

/// A scratch directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fhirgate-explain-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn fhirgate(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `fhirgate explain --claims <file> ARGS...` with `scope` in patient claims.
fn explain_claims(scope: &str, args: &[&str]) -> Run {
    let scratch = Scratch::new();
    let claims = scratch.file("claims.json", &patient_claims(scope).to_string());
    let mut all = vec!["explain", "--claims", claims.to_str().unwrap()];
    all.extend_from_slice(args);
    fhirgate(&all)
}

#[test]
fn explain_allows_a_read_of_the_context_patient() {
    let run = explain_claims(
        "launch/patient patient/Patient.r",
        &["GET", "/fhir/Patient/p-1001"],
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("Decision: ALLOW by rule patient-scope"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("interaction: read"), "{}", run.stdout);
    assert!(run.stdout.contains("patient: p-1001"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("upstream request: GET http://127.0.0.1:8091/fhir/Patient/p-1001"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("launch/patient (launch)"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_shows_the_patient_parameter_added_to_a_search() {
    let url = "http://127.0.0.1:8080/fhir/Condition?clinical-status=active";
    let run = explain_claims("patient/Condition.rs", &["GET", url]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("interaction: search-type"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("added to the query: patient=Patient/p-1001"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "http://127.0.0.1:8091/fhir/Condition?clinical-status=active&patient=Patient%2Fp-1001"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("response check (bundle)"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_refuses_a_read_of_another_patient_with_403() {
    let run = explain_claims("patient/Patient.r", &["GET", "/fhir/Patient/p-2002"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Decision: DENY"), "{}", run.stdout);
    assert!(run.stdout.contains("403 Forbidden"), "{}", run.stdout);
    assert!(
        run.stdout.contains("error=\"insufficient_scope\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("audit reason: other_patient"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_says_406_where_the_gateway_would() {
    // A checked response asked for in XML.
    let run = explain_claims(
        "patient/Observation.rs",
        &[
            "--format",
            "json",
            "GET",
            "/fhir/Observation/o-1?_format=xml",
        ],
    );
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["decision"]["step"], "format");
    assert_eq!(report["decision"]["answer"]["status"], 406);
    assert_eq!(
        report["decision"]["answer"]["audit_reason"],
        "json_required"
    );
    // A format the gateway does not write, even for public metadata.
    let run = explain_claims(
        "patient/Patient.r",
        &[
            "-H",
            "Accept: text/html",
            "--format",
            "json",
            "GET",
            "/fhir/metadata",
        ],
    );
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report["decision"]["answer"]["audit_reason"],
        "not_acceptable"
    );
    // A checked response asked for in JSON goes upstream without `_format`.
    let run = explain_claims(
        "patient/Observation.rs",
        &[
            "--format",
            "json",
            "GET",
            "/fhir/Observation/o-1?_format=json",
        ],
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report["decision"]["obligations"]["upstream_url"],
        "http://127.0.0.1:8091/fhir/Observation/o-1"
    );
}

#[test]
fn explain_reports_malformed_scopes_as_granting_nothing() {
    let scope = "openid patient/Observation.sr patient/observation.rs patient/Observation.rs";
    let run = explain_claims(scope, &["GET", "/fhir/Observation/o-1"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let malformed = run
        .stdout
        .split("malformed, grant nothing:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no malformed section: {}", run.stdout));
    assert!(malformed.starts_with("    patient/Observation.sr\n    patient/observation.rs\n"));

    let json = explain_claims(scope, &["--format", "json", "GET", "/fhir/Observation/o-1"]);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        report["grant"]["malformed"],
        serde_json::json!(["patient/Observation.sr", "patient/observation.rs"])
    );
    assert_eq!(report["grant"]["ignored"][0]["kind"], "identity");
    assert_eq!(report["grant"]["resource_scopes"][0]["permissions"], "rs");
}

#[test]
fn explain_json_carries_the_decision_and_obligations() {
    let run = explain_claims(
        "patient/Condition.rs",
        &["--format", "json", "GET", "/fhir/Condition"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["version"], 1);
    assert_eq!(report["token"]["verified"], false);
    assert_eq!(
        report["request"]["classified"]["interaction"],
        "search-type"
    );
    let decision = &report["decision"];
    assert_eq!(decision["outcome"], "allow");
    assert_eq!(decision["rule"], "patient-search");
    assert_eq!(
        decision["obligations"]["added_parameters"],
        serde_json::json!([{"name": "patient", "value": "Patient/p-1001"}])
    );

    let refused = explain_claims(
        "patient/Condition.rs",
        &["--format", "json", "DELETE", "/fhir/Condition/c-1"],
    );
    assert_eq!(refused.code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&refused.stdout).unwrap();
    assert_eq!(report["decision"]["outcome"], "deny");
    assert_eq!(report["decision"]["answer"]["status"], 403);
    assert_eq!(report["decision"]["answer"]["error"], "insufficient_scope");
}

/// Synthetic claims of a clinician's token: `user/Patient.rs` only, a named user.
fn clinician_claims() -> serde_json::Value {
    serde_json::json!({
        "iss": "http://127.0.0.1:9000",
        "aud": "http://127.0.0.1:8080/fhir",
        "sub": "clinician-7",
        "client_id": "ward-app",
        "fhirUser": "Practitioner/pr-7",
        "exp": 4_102_444_800u64,
        "scope": "openid fhirUser user/Patient.rs",
    })
}

#[test]
fn explain_shows_break_the_glass_as_the_gateway_applies_it() {
    let scratch = Scratch::new();
    let claims = scratch.file("claims.json", &clinician_claims().to_string());
    let config = scratch.file(
        "fhirgate.yaml",
        &format!("{DEFAULT}break_glass:\n  header: X-Purpose-Of-Use\n"),
    );
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--claims",
            claims.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fhirgate(&args)
    };

    let broken = explain(&["--purpose", "BTG", "GET", "/fhir/Observation/o-1"]);
    assert_eq!(broken.code, Some(0), "{}{}", broken.stdout, broken.stderr);
    assert!(
        broken
            .stdout
            .contains("Decision: ALLOW by rule break-glass"),
        "{}",
        broken.stdout
    );
    assert!(
        broken.stdout.contains("purposes of use: BTG"),
        "{}",
        broken.stdout
    );
    assert!(
        broken
            .stdout
            .contains("break-the-glass: applied: purpose BTG broke the glass; decided under the token's scopes and user/*.rs"),
        "{}",
        broken.stdout
    );

    let header = explain(&[
        "-H",
        "X-Purpose-Of-Use: BTG",
        "--format",
        "json",
        "GET",
        "/fhir/Observation/o-1",
    ]);
    assert_eq!(header.code, Some(0), "{}", header.stderr);
    let report: serde_json::Value = serde_json::from_str(&header.stdout).unwrap();
    assert_eq!(report["decision"]["rule"], "break-glass");
    assert_eq!(report["decision"]["break_glass"]["applied"], true);
    assert_eq!(
        report["decision"]["break_glass"]["codes"],
        serde_json::json!(["BTG"])
    );

    let write = explain(&["--purpose", "BTG", "DELETE", "/fhir/Observation/o-1"]);
    assert_eq!(write.code, Some(1), "{}", write.stdout);
    assert!(
        write.stdout.contains(
            "break-the-glass: not applied: the emergency scopes do not allow the request either"
        ),
        "{}",
        write.stdout
    );

    let without = explain(&["GET", "/fhir/Observation/o-1"]);
    assert_eq!(without.code, Some(1), "{}", without.stdout);
    assert!(
        without.stdout.contains("audit reason: insufficient_scope"),
        "{}",
        without.stdout
    );

    // Without a break_glass section the purpose changes nothing, and the report says why.
    let off = fhirgate(&[
        "explain",
        "--claims",
        claims.to_str().unwrap(),
        "--purpose",
        "BTG",
        "GET",
        "/fhir/Observation/o-1",
    ]);
    assert_eq!(off.code, Some(1), "{}", off.stdout);
    assert!(
        off.stdout
            .contains("break-the-glass: not applied: break-the-glass is off"),
        "{}",
        off.stdout
    );

    let bad = explain(&["--purpose", "B T G", "GET", "/fhir/Observation/o-1"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("--purpose"), "{}", bad.stderr);
}

#[test]
fn explain_lists_transaction_entries_and_names_the_refused_one() {
    let scratch = Scratch::new();
    let bundle = scratch.file(
        "tx.json",
        r#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"request":{"method":"GET","url":"Patient/p-1001"}},
            {"request":{"method":"GET","url":"Patient/p-2002"}}]}"#,
    );
    let run = explain_claims(
        "patient/Patient.r",
        &["--body", bundle.to_str().unwrap(), "POST", "/fhir"],
    );
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("interaction: transaction"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("[0] read Patient/p-1001\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("[1] read Patient/p-2002\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("expression: Bundle.entry[1]"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_decodes_a_token_without_verifying_it_and_says_what_the_gateway_would_refuse() {
    let mut claims = patient_claims("patient/Patient.r");
    claims["exp"] = serde_json::json!(1_000_000_000u64);
    claims["aud"] = serde_json::json!("https://elsewhere.test/fhir");
    let token = support::sign("rsa-a", Some("k1"), &claims);
    let run = fhirgate(&["explain", "--token", &token, "GET", "/fhir/Patient/p-1001"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("decoded, NOT verified"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("- token expired: 401 Unauthorized"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("- audience not accepted: 401 Unauthorized"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("does NOT match the issuer's audience"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_usage_errors_exit_2() {
    let scratch = Scratch::new();
    let claims = scratch.file("claims.json", &patient_claims("patient/*.rs").to_string());
    let bad = scratch.file("bad.json", "{\"scope\": ");
    let claims = claims.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--claims", claims, "GET", "/other/Patient"],
            "not under the public FHIR base",
        ),
        (
            &["--claims", claims, "GET", "Patient/1"],
            "not under the public FHIR base",
        ),
        (
            &[
                "--claims",
                claims,
                "GET",
                "https://elsewhere.test/fhir/Patient/1",
            ],
            "not under the public FHIR base",
        ),
        (
            &["--claims", bad.to_str().unwrap(), "GET", "/fhir/Patient"],
            "not valid JSON",
        ),
        (
            &[
                "--claims",
                "/nonexistent/claims.json",
                "GET",
                "/fhir/Patient",
            ],
            "cannot read",
        ),
        (
            &[
                "--claims",
                claims,
                "--body",
                "/nonexistent/body.json",
                "POST",
                "/fhir/Patient",
            ],
            "cannot read",
        ),
        (
            &["--token", "opaque-token", "GET", "/fhir/Patient"],
            "not a JWT",
        ),
        (
            &[
                "--claims",
                claims,
                "--header",
                "no colon",
                "GET",
                "/fhir/Patient",
            ],
            "Name: value",
        ),
        (&["GET", "/fhir/Patient"], "--claims"),
        (
            &[
                "--config",
                "/nonexistent/fhirgate.yaml",
                "--claims",
                claims,
                "GET",
                "/fhir",
            ],
            "cannot read",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["explain"];
        all.extend_from_slice(args);
        let run = fhirgate(&all);
        assert_eq!(run.code, Some(2), "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
}

#[test]
fn an_audit_sink_takes_its_bearer_token_from_the_environment_variable_named() {
    let text = format!(
        "{DEFAULT}    collector:\n      http:\n        url: \"https://audit.example/records\"\n        bearer_token_env: \"FHIRGATE_TEST_AUDIT_TOKEN\"\n"
    );
    let output = check_with_env(&text, &[("FHIRGATE_TEST_AUDIT_TOKEN", "t0ken")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = check(&text);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("audit.sinks.collector") && stderr.contains("FHIRGATE_TEST_AUDIT_TOKEN"),
        "{stderr}"
    );
}
