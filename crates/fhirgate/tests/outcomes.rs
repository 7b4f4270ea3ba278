//! Every answer fhirgate makes itself, snapshotted in JSON and in XML: status, headers and
//! body of each kind of refusal (`tests/snapshots/outcomes__*.snap`).
//!
//! The table of kinds is one macro: each row pairs a pattern with an example, and the
//! patterns make one exhaustive `match` over [`Refusal`], the token errors and the policy's
//! deny reasons. A new variant does not compile until it has a row, so it cannot go without
//! snapshots. Snapshots are compared with `insta`; a missing or changed snapshot fails the
//! test (with `CI` set insta writes nothing; without it a `.snap.new` is left to review).
//!
//! The bodies are also written as files, `KIND.json` and `KIND.xml`, for
//! `e2e/validator/validate_outcomes.py`: into `FHIRGATE_OUTCOME_SAMPLES` when set (kept), else
//! into a fresh temporary folder (removed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirgate::refusal::{NotAcceptable, OutcomeFormat, Refusal};
use fhirgate::token::{DpopChallenge, TokenError};
use fhirgate_policy::decision::{Denial, DenyReason};
use fhirgate_policy::request::ClassifyError;
use http_body_util::BodyExt as _;

/// Declares the kinds: `name: pattern => example`. Generates `kind_of` (the exhaustive match)
/// and `examples` (every row's example, by name).
macro_rules! kinds {
    ($($name:ident: $pattern:pat => $example:expr,)+) => {
        /// The kind of a refusal, as named in the table.
        fn kind_of(refusal: &Refusal) -> &'static str {
            match refusal {
                $($pattern => stringify!($name),)+
            }
        }

        /// One example of every kind.
        fn examples() -> Vec<(&'static str, Refusal)> {
            vec![$((stringify!($name), $example),)+]
        }
    };
}

fn denial(reason: DenyReason, rule: &'static str, message: &str) -> Refusal {
    Refusal::Policy(Denial {
        reason,
        message: message.into(),
        rule,
        expression: Vec::new(),
    })
}

kinds! {
    no_token: Refusal::Token(TokenError::Missing) => Refusal::Token(TokenError::Missing),
    malformed_credentials: Refusal::Token(TokenError::Malformed(_))
        => Refusal::Token(TokenError::Malformed("more than one Authorization header")),
    invalid_token: Refusal::Token(TokenError::Invalid(_))
        => Refusal::Token(TokenError::Invalid("signature does not verify".into())),
    token_expired: Refusal::Token(TokenError::Expired) => Refusal::Token(TokenError::Expired),
    keys_unavailable: Refusal::Token(TokenError::KeysUnavailable { .. })
        => Refusal::Token(TokenError::KeysUnavailable { issuer: "https://idp.example.test".into() }),
    introspection_unavailable: Refusal::Token(TokenError::IntrospectionUnavailable { .. })
        => Refusal::Token(TokenError::IntrospectionUnavailable {
            issuer: "https://idp.example.test".into(),
        }),
    invalid_dpop_proof: Refusal::Token(TokenError::Dpop { challenge: DpopChallenge::InvalidProof, .. })
        => Refusal::Token(TokenError::Dpop {
            challenge: DpopChallenge::InvalidProof,
            detail: "the proof's \"htu\" does not match the request".into(),
            algs: "ES256 RS256".into(),
        }),
    dpop_binding: Refusal::Token(TokenError::Dpop { challenge: DpopChallenge::InvalidToken, .. })
        => Refusal::Token(TokenError::Dpop {
            challenge: DpopChallenge::InvalidToken,
            detail: "a DPoP-bound token was presented as a bearer token".into(),
            algs: "ES256".into(),
        }),
    classify: Refusal::Classify(_)
        => Refusal::Classify(ClassifyError::UnknownResourceType("Patients".into())),
    insufficient_scope: Refusal::Policy(Denial { reason: DenyReason::InsufficientScope, .. })
        => denial(
            DenyReason::InsufficientScope,
            "no-covering-scope",
            "no granted scope permits 's' on Observation",
        ),
    no_patient_context: Refusal::Policy(Denial { reason: DenyReason::NoPatientContext, .. })
        => denial(
            DenyReason::NoPatientContext,
            "patient-scope-without-context",
            "patient/ scopes need a patient in the token's launch context",
        ),
    other_patient: Refusal::Policy(Denial { reason: DenyReason::OtherPatient, .. })
        => denial(
            DenyReason::OtherPatient,
            "patient-compartment",
            "the request targets data outside the launch patient's compartment",
        ),
    unenforceable_query: Refusal::Policy(Denial { reason: DenyReason::UnenforceableQuery, .. })
        => denial(
            DenyReason::UnenforceableQuery,
            "patient-search-chain",
            "chained parameter 'subject:Patient.name' cannot be bounded to the launch patient",
        ),
    operation_not_permitted: Refusal::Policy(Denial { reason: DenyReason::OperationNotPermitted, .. })
        => denial(
            DenyReason::OperationNotPermitted,
            "operation-not-listed",
            "operation $everything is not in the policy's operation table",
        ),
    not_supported: Refusal::Policy(Denial { reason: DenyReason::NotSupported, .. })
        => Refusal::Policy(Denial {
            reason: DenyReason::NotSupported,
            message: "entry needs a check of its target before it is forwarded".into(),
            rule: "bundle-entry-needs-own-request",
            expression: vec!["Bundle.entry[1]".into()],
        }),
    body_not_checkable: Refusal::Policy(Denial { reason: DenyReason::BodyNotCheckable, .. })
        => denial(
            DenyReason::BodyNotCheckable,
            "write-body-not-json",
            "only FHIR JSON bodies can be checked against patient/ or granular scopes",
        ),
    policy_bad_request: Refusal::Policy(Denial { reason: DenyReason::BadRequest, .. })
        => denial(
            DenyReason::BadRequest,
            "write-type-mismatch",
            "body resourceType differs from the URL type",
        ),
    policy_not_found: Refusal::Policy(Denial { reason: DenyReason::NotFound, .. })
        => denial(DenyReason::NotFound, "read-refused-as-absent", "resource not found"),
    bad_request: Refusal::BadRequest(_)
        => Refusal::BadRequest("method override headers are not accepted".into()),
    no_route: Refusal::NotFound => Refusal::NotFound,
    method_not_allowed: Refusal::MethodNotAllowed => Refusal::MethodNotAllowed,
    body_too_large: Refusal::BodyTooLarge { .. } => Refusal::BodyTooLarge { limit: 1_048_576 },
    body_timeout: Refusal::BodyTimeout { .. }
        => Refusal::BodyTimeout { timeout: Duration::from_secs(30) },
    upstream_busy: Refusal::UpstreamBusy => Refusal::UpstreamBusy,
    upstream_unavailable: Refusal::UpstreamUnavailable => Refusal::UpstreamUnavailable,
    upstream_credential_unavailable: Refusal::UpstreamCredentialUnavailable
        => Refusal::UpstreamCredentialUnavailable,
    upstream_timeout: Refusal::UpstreamTimeout => Refusal::UpstreamTimeout,
    upstream_down: Refusal::UpstreamDown { .. }
        => Refusal::UpstreamDown { retry_after: Duration::from_secs(5) },
    upstream_unverifiable: Refusal::UpstreamUnverifiable(_)
        => Refusal::UpstreamUnverifiable("response body is not JSON".into()),
    response_withheld: Refusal::ResponseWithheld => Refusal::ResponseWithheld,
    response_hidden: Refusal::ResponseHidden => Refusal::ResponseHidden,
    too_many_matches: Refusal::TooManyMatches => Refusal::TooManyMatches,
    rate_limit_unavailable: Refusal::RateLimitUnavailable => Refusal::RateLimitUnavailable,
    audit_unavailable: Refusal::AuditUnavailable => Refusal::AuditUnavailable,
    throttled: Refusal::Throttled { .. } => Refusal::Throttled {
        rule: "per-client".into(),
        retry_after: Duration::from_millis(2500),
    },
    format_not_acceptable: Refusal::NotAcceptable(NotAcceptable::Format(_))
        => Refusal::NotAcceptable(NotAcceptable::Format("html".into())),
    accept_not_acceptable: Refusal::NotAcceptable(NotAcceptable::Accept)
        => Refusal::NotAcceptable(NotAcceptable::Accept),
    fhir_version_not_acceptable: Refusal::NotAcceptable(NotAcceptable::FhirVersion(_))
        => Refusal::NotAcceptable(NotAcceptable::FhirVersion("3.0".into())),
    json_required: Refusal::JsonRequired => Refusal::JsonRequired,
    cors_origin_not_allowed: Refusal::CorsOriginNotAllowed => Refusal::CorsOriginNotAllowed,
    discovery_unavailable: Refusal::DiscoveryUnavailable => Refusal::DiscoveryUnavailable,
}

/// The formats every kind is snapshotted in, with the file extension of its sample.
const FORMATS: [(OutcomeFormat, &str); 2] =
    [(OutcomeFormat::Json, "json"), (OutcomeFormat::Xml, "xml")];

/// A response as a snapshot shows it: status line, every header (sorted), a blank line, the
/// body exactly as sent.
async fn render(refusal: Refusal, format: OutcomeFormat) -> (String, Vec<u8>) {
    let response = refusal.into_response(format);
    let mut text = format!("status: {}\n", response.status());
    let mut names: Vec<_> = response.headers().keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    for name in names {
        for value in response.headers().get_all(name) {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
        }
    }
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    text.push('\n');
    text.push_str(std::str::from_utf8(&body).unwrap());
    (text, body)
}

/// Where the samples go, and whether they are kept.
fn samples_folder() -> (PathBuf, bool) {
    match std::env::var_os("FHIRGATE_OUTCOME_SAMPLES") {
        Some(dir) => (PathBuf::from(dir), true),
        None => {
            let name = format!("fhirgate-outcomes-{}", std::process::id());
            (std::env::temp_dir().join(name), false)
        }
    }
}

/// Writes a body as `NAME.json` or `NAME.xml` when it was sent in the format asked for (a 406
/// for a format fhirgate does not write is JSON however it was asked for: no XML sample).
fn write_sample(folder: &Path, name: &str, extension: &str, snapshot: &str, body: &[u8]) {
    let sent = format!("\ncontent-type: application/fhir+{extension}; charset=utf-8\n");
    if snapshot.contains(&sent) {
        std::fs::write(folder.join(format!("{name}.{extension}")), body).unwrap();
    }
}

#[test]
fn the_table_names_every_kind_once_by_its_example() {
    let mut seen = BTreeSet::new();
    for (name, example) in examples() {
        assert_eq!(
            kind_of(&example),
            name,
            "the example of {name} is of another kind"
        );
        assert!(seen.insert(name), "{name} appears twice");
    }
}

#[test]
fn every_snapshot_belongs_to_a_kind() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let wanted: BTreeSet<String> = examples()
        .into_iter()
        .flat_map(|(name, _)| FORMATS.map(|(_, ext)| format!("outcomes__{name}_{ext}.snap")))
        .collect();
    let found: BTreeSet<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("outcomes__") && name.ends_with(".snap"))
        .collect();
    let orphans: Vec<_> = found.difference(&wanted).collect();
    assert!(orphans.is_empty(), "snapshots of no kind: {orphans:?}");
}

#[tokio::test]
async fn every_refusal_kind_in_json_and_xml() {
    let (folder, keep) = samples_folder();
    std::fs::create_dir_all(&folder).unwrap();
    for (format, extension) in FORMATS {
        for (name, refusal) in examples() {
            let (snapshot, body) = render(refusal, format).await;
            write_sample(&folder, name, extension, &snapshot, &body);
            insta::assert_snapshot!(format!("{name}_{extension}"), snapshot);
        }
    }
    if !keep {
        std::fs::remove_dir_all(&folder).unwrap();
    }
}

#[tokio::test]
async fn asked_for_xml_only_the_406_for_formats_answers_json() {
    for (name, refusal) in examples() {
        let unacceptable = matches!(refusal, Refusal::NotAcceptable(_));
        let (snapshot, _) = render(refusal, OutcomeFormat::Xml).await;
        let json = snapshot.contains("content-type: application/fhir+json; charset=utf-8\n");
        assert_eq!(json, unacceptable, "{name}");
    }
}

/// Every 401 and 403, and the 400 for malformed credentials (RFC 6750 section 3.1,
/// `invalid_request`), names the scheme; no other refusal does.
#[tokio::test]
async fn every_401_and_403_names_the_bearer_scheme() {
    for (name, refusal) in examples() {
        let status = refusal.status().as_u16();
        let malformed = name == "malformed_credentials";
        let (snapshot, _) = render(refusal, OutcomeFormat::Json).await;
        let challenged = snapshot.lines().any(|line| {
            line.starts_with("www-authenticate: Bearer ")
                || line.starts_with("www-authenticate: DPoP ")
        });
        assert_eq!(
            challenged,
            malformed || matches!(status, 401 | 403),
            "{name} ({status})"
        );
    }
}
