//! Request classification and the decision on arbitrary requests (method, path, query,
//! content type, `If-None-Exist`, body), then the response check the decision asks for on an
//! arbitrary response. Never panics; `patient/` grants never reach another patient; break-the-glass
//! opens only refusals of `user/` grants the emergency grant allows, never operations.

#![no_main]

use arbitrary::Arbitrary;
use fhirgate_fuzz::{GRANTS, PATIENT, SynthBody, SynthResource, run_check};
use fhirgate_policy::break_glass::{self, Emergency};
use fhirgate_policy::compartment::{in_patient_compartment, is_compartment_type};
use fhirgate_policy::scope::{Context, Perms};
use fhirgate_policy::{
    Decision, FhirRequest, Interaction, OperationLevel, OperationRule, PolicyOptions, Precheck,
    ReadRefusal, RequestParts, check_matches, classify_with, decide_with,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::LazyLock;

/// Default options, and options with a base URL, an operation rule and 404 for refused reads.
static OPTIONS: LazyLock<[PolicyOptions; 2]> = LazyLock::new(|| {
    let mut custom = PolicyOptions {
        read_refusal: ReadRefusal::NotFound,
        base_urls: vec!["https://gw.example/fhir".to_owned()],
        ..PolicyOptions::default()
    };
    custom.operations.rules.push(OperationRule {
        name: "lastn".to_owned(),
        level: OperationLevel::Type,
        resource_type: Some("Observation".to_owned()),
        requires: Perms::S,
    });
    [PolicyOptions::default(), custom]
});

/// Grants made only of `patient/` scopes with a patient context (indexes into `GRANTS`).
const PATIENT_ONLY: std::ops::Range<usize> = 0..3;

#[derive(Arbitrary, Debug)]
enum Method<'a> {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Other(&'a str),
}

impl<'a> Method<'a> {
    fn as_str(&self) -> &'a str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Other(m) => m,
        }
    }
}

const TYPES: &[&str] = &[
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "Practitioner",
    "Group",
    "Binary",
    "patient",
    "observation",
];

#[derive(Arbitrary, Debug)]
enum Segment<'a> {
    Type(u8),
    OwnId,
    OtherId,
    History,
    Search,
    Metadata,
    Star,
    Operation(&'a str),
    Raw(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Path<'a> {
    Raw(&'a str),
    Segments(Vec<Segment<'a>>),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Self::Raw(raw) => (*raw).to_owned(),
            Self::Segments(segments) => segments
                .iter()
                .map(|segment| match segment {
                    Segment::Type(i) => TYPES[usize::from(*i) % TYPES.len()].to_owned(),
                    Segment::OwnId => PATIENT.to_owned(),
                    Segment::OtherId => "p2".to_owned(),
                    Segment::History => "_history".to_owned(),
                    Segment::Search => "_search".to_owned(),
                    Segment::Metadata => "metadata".to_owned(),
                    Segment::Star => "*".to_owned(),
                    Segment::Operation(name) => format!("${name}"),
                    Segment::Raw(raw) => (*raw).to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/"),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ContentType<'a> {
    FhirJson,
    Json,
    Form,
    Xml,
    Raw(&'a str),
}

impl<'a> ContentType<'a> {
    fn as_str(&self) -> &'a str {
        match self {
            Self::FhirJson => "application/fhir+json; charset=utf-8",
            Self::Json => "application/json",
            Self::Form => "application/x-www-form-urlencoded",
            Self::Xml => "application/fhir+xml",
            Self::Raw(raw) => raw,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Entry<'a> {
    method: Method<'a>,
    path: Path<'a>,
    query: Option<&'a str>,
    resource: Option<SynthResource<'a>>,
    if_none_exist: Option<&'a str>,
}

#[derive(Arbitrary, Debug)]
enum Body<'a> {
    Synth(SynthBody<'a>),
    Form(&'a str),
    Bundle {
        transaction: bool,
        entries: Vec<Entry<'a>>,
    },
}

impl Body<'_> {
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Synth(body) => body.to_bytes(),
            Self::Form(form) => form.as_bytes().to_vec(),
            Self::Bundle {
                transaction,
                entries,
            } => {
                let entries: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let mut url = e.path.render();
                        if let Some(q) = e.query {
                            url.push('?');
                            url.push_str(q);
                        }
                        let mut request = json!({ "method": e.method.as_str(), "url": url });
                        if let Some(criteria) = e.if_none_exist {
                            request["ifNoneExist"] = criteria.into();
                        }
                        let mut entry = json!({ "request": request });
                        if let Some(resource) = &e.resource {
                            entry["resource"] = resource.to_value();
                        }
                        entry
                    })
                    .collect();
                let kind = if *transaction { "transaction" } else { "batch" };
                json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
                    .to_string()
                    .into_bytes()
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    custom_options: bool,
    method: Method<'a>,
    path: Path<'a>,
    query: Option<&'a str>,
    content_type: Option<ContentType<'a>>,
    if_none_exist: Option<&'a str>,
    body: Option<Body<'a>>,
    response: SynthBody<'a>,
}

/// What `patient/` grants with context `PATIENT` must never allow.
fn assert_patient_bounds(req: &FhirRequest, grant_index: usize) {
    if !PATIENT_ONLY.contains(&grant_index) {
        return;
    }
    if let Some((ty, id)) = &req.compartment {
        assert!(
            !(ty == "Patient" && id != PATIENT),
            "compartment search of another patient allowed: {req:?}"
        );
    }
    let instance = matches!(
        req.interaction,
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance
    );
    if instance && req.resource_type.as_deref() == Some("Patient") {
        assert_eq!(
            req.id.as_deref(),
            Some(PATIENT),
            "another patient's record allowed: {req:?}"
        );
    }
    if req.interaction == Interaction::Create
        && let Some(resource) = &req.resource
        && let Some(ty) = resource.get("resourceType").and_then(Value::as_str)
        && is_compartment_type(ty)
        && ty != "Patient"
    {
        assert!(
            in_patient_compartment(resource, PATIENT),
            "create outside the patient's compartment allowed: {resource}"
        );
    }
}

/// Emergencies: reads and searches on every type, and everything on Observation.
static EMERGENCIES: LazyLock<[Emergency; 2]> = LazyLock::new(|| {
    [
        Emergency {
            permissions: Perms::R.union(Perms::S),
            resource_types: Vec::new(),
        },
        Emergency {
            permissions: Perms::ALL,
            resource_types: vec!["Observation".to_owned()],
        },
    ]
});

/// What break-the-glass may do with `decision`: open it only for a grant of `user/` scopes,
/// never for an operation, and only as the emergency grant's own decision allows.
fn assert_break_glass_bounds(
    grant: &fhirgate_policy::Grant,
    req: &FhirRequest,
    decision: &Decision,
    options: &PolicyOptions,
) {
    for emergency in EMERGENCIES.iter() {
        let Ok(obligations) = break_glass::decide(grant, req, decision, options, emergency) else {
            continue;
        };
        assert_eq!(obligations.rule, break_glass::RULE);
        let scopes = grant.scopes.resource_scopes();
        assert!(
            !scopes.is_empty() && scopes.iter().all(|s| s.context == Context::User),
            "break-the-glass opened a request of a grant that is not a user's: {req:?}"
        );
        let operation = |r: &FhirRequest| r.interaction == Interaction::Operation;
        assert!(
            !operation(req) && !req.entries.iter().any(operation),
            "break-the-glass opened an operation: {req:?}"
        );
        assert!(
            !matches!(decision, Decision::Allow(ob) if ob.refused_entries.is_empty()),
            "break-the-glass changed an allow"
        );
        let widened = emergency.grant(grant);
        assert!(
            matches!(decide_with(&widened, req, options), Decision::Allow(_)),
            "break-the-glass allowed what the emergency grant refuses: {req:?}"
        );
    }
}

/// Is everything `req` asks for public: the capability statement or SMART configuration, or
/// a Bundle whose entries are all such (an empty Bundle included)?
fn public_only(req: &FhirRequest) -> bool {
    match req.interaction {
        Interaction::Capabilities | Interaction::SmartConfiguration => true,
        Interaction::Batch | Interaction::Transaction => req.entries.iter().all(public_only),
        _ => false,
    }
}

fuzz_target!(|input: Input<'_>| {
    let path = input.path.render();
    let body = input.body.as_ref().map(Body::to_bytes);
    let parts = RequestParts {
        method: input.method.as_str(),
        path: &path,
        query: input.query,
        content_type: input.content_type.as_ref().map(ContentType::as_str),
        body: body.as_deref(),
        if_none_exist: input.if_none_exist,
    };
    let options = &OPTIONS[usize::from(input.custom_options)];
    let Ok(req) = classify_with(&parts, options) else {
        return;
    };
    let response = input.response.to_bytes();
    for (index, grant) in GRANTS.iter().enumerate() {
        let decision = decide_with(grant, &req, options);
        assert_break_glass_bounds(grant, &req, &decision, options);
        let Decision::Allow(obligations) = decision else {
            continue;
        };
        assert!(!obligations.rule.is_empty());
        if index == GRANTS.len() - 1 {
            assert!(
                public_only(&req),
                "a grant without data scopes allowed {req:?}"
            );
        }
        assert_patient_bounds(&req, index);
        if let Some(check) = &obligations.response_check {
            run_check(check, &response);
        }
        for entry in &obligations.entries {
            assert!(
                entry.index < req.entries.len(),
                "entry obligation out of range"
            );
            if let Some(check) = &entry.response_check {
                run_check(check, &response);
            }
        }
        for (index, _) in &obligations.refused_entries {
            assert!(*index < req.entries.len(), "refused entry out of range");
        }
        match &obligations.precheck {
            Some(Precheck::Target(check)) => run_check(check, &response),
            Some(Precheck::Matches(check)) if check_matches(check, &response).is_ok() => {
                let filtered = fhirgate_policy::filter_bundle(check, &response)
                    .expect("accepted matches are a Bundle");
                assert_eq!(filtered.withheld, 0, "a match outside the grant passed");
            }
            Some(Precheck::Matches(_)) | None => {}
        }
    }
});
