use fhirgate_policy::decision::DenyReason;
use http::{HeaderValue, Method};

use super::*;
use crate::config::{Config, EMBEDDED_DEFAULT};
use crate::proxy::classify_and_decide;
use crate::token::Caller;

fn policy(section: &str) -> (BreakGlassPolicy, PolicyOptions) {
    let config = Config::parse(&format!("{EMBEDDED_DEFAULT}{section}"), "f").unwrap();
    let policy = BreakGlassPolicy::new(config.break_glass.as_ref().unwrap());
    (policy, config.policy_options())
}

/// A clinician's token: `user/` scopes, a named user, the given purposes of use.
fn clinician(scope: &str, purposes: &[&str]) -> Identity {
    clinician_caller(scope, purposes).into()
}

/// What the clinician's token says about its caller.
fn clinician_caller(scope: &str, purposes: &[&str]) -> Caller {
    Caller {
        issuer: "http://127.0.0.1:9000".into(),
        subject: Some("u-1".into()),
        client_id: Some("ward-app".into()),
        fhir_user: Some("Practitioner/pr-1".into()),
        scope: Some(scope.into()),
        purposes_of_use: purposes.iter().map(|p| (*p).to_owned()).collect(),
        ..Caller::default()
    }
}

fn attempt(
    policy: &BreakGlassPolicy,
    options: &PolicyOptions,
    identity: &Identity,
    headers: &HeaderMap,
    method: Method,
    path: &str,
) -> Result<Broken, NotBroken> {
    let grant = identity.grant.clone();
    let (request, decision) =
        classify_and_decide(&method, path, None, headers, b"", &grant, options).unwrap();
    let purposes = purposes(identity, policy.header(), headers);
    policy.attempt(identity, &purposes, &grant, &request, &decision, options)
}

fn read(policy: &BreakGlassPolicy, identity: &Identity) -> Result<Broken, NotBroken> {
    let options = PolicyOptions::default();
    let headers = HeaderMap::new();
    attempt(
        policy,
        &options,
        identity,
        &headers,
        Method::GET,
        "Observation/o1",
    )
}

#[test]
fn an_emergency_purpose_opens_a_read_the_scopes_do_not_cover() {
    let (policy, _) = policy("break_glass: {}\n");
    let broken = read(&policy, &clinician("user/Patient.rs", &["TREAT", "BTG"])).unwrap();
    assert_eq!(broken.codes, ["BTG"]);
    assert_eq!(broken.obligations.rule, "break-glass");
    assert_eq!(broken.obligations.scope.as_deref(), Some("user/*.rs"));
    assert_eq!(
        read(&policy, &clinician("user/Patient.rs", &["TREAT"])),
        Err(NotBroken::NoEmergencyPurpose)
    );
    assert_eq!(
        read(&policy, &clinician("user/Patient.rs", &[])),
        Err(NotBroken::NoEmergencyPurpose)
    );
}

#[test]
fn only_the_configured_codes_break_the_glass() {
    let (policy, _) = policy("break_glass:\n  codes: [ETREAT]\n");
    assert!(read(&policy, &clinician("user/Patient.rs", &["ETREAT"])).is_ok());
    assert_eq!(
        read(&policy, &clinician("user/Patient.rs", &["BTG"])),
        Err(NotBroken::NoEmergencyPurpose)
    );
    // Codes are compared exactly, as FHIR codes are case-sensitive.
    assert_eq!(
        read(&policy, &clinician("user/Patient.rs", &["etreat"])),
        Err(NotBroken::NoEmergencyPurpose)
    );
}

#[test]
fn clients_and_users_are_restricted_as_configured() {
    let (only_ward, _) = policy("break_glass:\n  clients: [ward-app]\n");
    assert!(read(&only_ward, &clinician("user/Patient.rs", &["BTG"])).is_ok());
    let other_app: Identity = Caller {
        client_id: Some("other-app".into()),
        ..clinician_caller("user/Patient.rs", &["BTG"])
    }
    .into();
    assert_eq!(
        read(&only_ward, &other_app),
        Err(NotBroken::ClientNotAllowed)
    );
    let no_client: Identity = Caller {
        client_id: None,
        ..clinician_caller("user/Patient.rs", &["BTG"])
    }
    .into();
    assert_eq!(
        read(&only_ward, &no_client),
        Err(NotBroken::ClientNotAllowed)
    );

    let anonymous: Identity = Caller {
        fhir_user: None,
        ..clinician_caller("user/Patient.rs", &["BTG"])
    }
    .into();
    let (default, _) = policy("break_glass: {}\n");
    assert_eq!(read(&default, &anonymous), Err(NotBroken::NoFhirUser));
    let (lenient, _) = policy("break_glass:\n  require_fhir_user: false\n");
    assert!(read(&lenient, &anonymous).is_ok());
}

#[test]
fn the_header_counts_only_when_configured() {
    let mut headers = HeaderMap::new();
    headers.insert("x-purpose-of-use", HeaderValue::from_static("TREAT, BTG"));
    let identity = clinician("user/Patient.rs", &[]);
    let options = PolicyOptions::default();

    let (without, _) = policy("break_glass: {}\n");
    let refused = attempt(
        &without,
        &options,
        &identity,
        &headers,
        Method::GET,
        "Observation/o1",
    );
    assert_eq!(refused, Err(NotBroken::NoEmergencyPurpose));

    let (with, _) = policy("break_glass:\n  header: X-Purpose-Of-Use\n");
    let broken = attempt(
        &with,
        &options,
        &identity,
        &headers,
        Method::GET,
        "Observation/o1",
    );
    assert_eq!(broken.unwrap().codes, ["BTG"]);
    let token_and_header = purposes(
        &clinician("user/Patient.rs", &["BTG", "ETREAT"]),
        with.header(),
        &headers,
    );
    assert_eq!(token_and_header, ["BTG", "ETREAT", "TREAT"]);
}

#[test]
fn the_policy_core_decides_what_is_reopened() {
    let (policy, options) = policy("break_glass: {}\n");
    let headers = HeaderMap::new();
    let clinician = clinician("user/Patient.rs", &["BTG"]);
    let delete = attempt(
        &policy,
        &options,
        &clinician,
        &headers,
        Method::DELETE,
        "Observation/o1",
    );
    assert_eq!(delete, Err(NotBroken::Policy(Unbroken::StillRefused)));
    let everything = attempt(
        &policy,
        &options,
        &clinician,
        &headers,
        Method::GET,
        "Patient/p1/$everything",
    );
    assert_eq!(everything, Err(NotBroken::Policy(Unbroken::Operation)));
    let allowed = attempt(
        &policy,
        &options,
        &clinician,
        &headers,
        Method::GET,
        "Patient/p1",
    );
    assert_eq!(allowed, Err(NotBroken::Policy(Unbroken::NotForScope)));

    let patient_app: Identity = Caller {
        patient: Some("p1".into()),
        scope: Some("launch/patient patient/Patient.rs".into()),
        ..(*clinician.caller).clone()
    }
    .into();
    let grant = patient_app.grant.clone();
    let (request, decision) = classify_and_decide(
        &Method::GET,
        "Observation/o1",
        None,
        &headers,
        b"",
        &grant,
        &options,
    )
    .unwrap();
    assert!(
        matches!(&decision, Decision::Deny(d) if d.reason == DenyReason::InsufficientScope),
        "{decision:?}"
    );
    let refused = policy.attempt(
        &patient_app,
        &["BTG".into()],
        &grant,
        &request,
        &decision,
        &options,
    );
    assert_eq!(refused, Err(NotBroken::Policy(Unbroken::NotUserToken)));
    assert!(NotBroken::Policy(Unbroken::NotUserToken).is_refused_emergency());
    assert!(!NotBroken::NoEmergencyPurpose.is_refused_emergency());
}
