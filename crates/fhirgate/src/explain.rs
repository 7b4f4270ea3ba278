//! `fhirgate explain`: what the gateway would decide for one request, and why.
//!
//! Every step is the gateway's own: the accept step and base-path routing, the claim mapping,
//! the grant, classification and decision ([`crate::proxy::classify_and_decide`]), query
//! narrowing, break-the-glass, the upstream URL and the refusal mapping of [`crate::refusal`].
//! Only the token
//! is treated differently: it is decoded, never verified, and what the gateway would say about
//! it is reported next to the decision rather than instead of it.

mod break_glass;
mod render;
mod report;
mod token;

use fhirgate_policy::decision::{self, Decision, Obligations, Precheck};
use fhirgate_policy::grant::Grant;
use fhirgate_policy::request::FhirRequest;
use fhirgate_policy::scope::{Context, OtherKind, Perms, Scope, TypeSel};
use fhirgate_policy::verify::{Expect, ResponseCheck};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};

pub use self::render::render_text;
pub use self::report::Report;
pub use self::token::Credentials;

use self::report::{
    Answer, CheckReport, Classified, Compartment, DecisionReport, EntryReport, GrantReport,
    HeaderReport, IgnoredScope, ObligationsReport, Param, PrecheckReport, RefusedEntryReport,
    RequestReport, ScopeReport,
};
use crate::config::{Config, Route};
use crate::proxy;
use crate::refusal::{OutcomeFormat, Refusal, forwardable, without_format_param};

/// A usage, configuration or input error: `fhirgate explain` exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExplainError(pub String);

/// What to explain.
#[derive(Debug, Clone)]
pub struct Input {
    pub config: Config,
    /// The configuration file, or `embedded default`.
    pub config_origin: String,
    pub credentials: Credentials,
    pub method: String,
    pub url: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    /// The request body, read from `--body`.
    pub body: Option<Vec<u8>>,
    /// Purposes of use given by `--purpose`, as if the token's purpose-of-use claim stated
    /// them too.
    pub purposes: Vec<String>,
}

impl Report {
    /// Did the gateway allow the request?
    pub fn allowed(&self) -> bool {
        self.decision.outcome == "allow"
    }
}

/// Builds the explanation of one request.
pub fn explain(input: &Input) -> Result<Report, ExplainError> {
    let config = &input.config;
    let method = parse_method(&input.method)?;
    let (mut headers, mut header_reports) = parse_headers(&input.headers)?;
    let (uri, host) = parse_url(&input.url, config)?;
    let query = uri.query().map(str::to_owned);
    let route = config.route_for(host.as_deref(), uri.path());

    let route_audience = route.and_then(|r| r.audience.as_deref());
    let mut decoded = token::decode(&input.credentials, config, route_audience)?;
    add_purposes(&mut decoded, &input.purposes)?;
    let grant = decoded.identity.grant.clone();
    let grant_report = grant_report(&grant);

    let reads_body = proxy::reads_body(&method);
    let body: &[u8] = match &input.body {
        Some(body) if reads_body => body,
        _ => &[],
    };
    if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        let assumed = assumed_content_type(body);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(assumed));
        header_reports.push(HeaderReport {
            name: "Content-Type".into(),
            value: assumed.into(),
            assumed: true,
        });
    }
    let mut request = RequestReport {
        method: method.to_string(),
        url: input.url.clone(),
        relative_path: None,
        query: query.clone(),
        headers: header_reports,
        body_bytes: input.body.as_ref().map(Vec::len),
        body_ignored: input
            .body
            .as_ref()
            .filter(|_| !reads_body)
            .map(|_| format!("the gateway does not read a {method} request's body")),
        classified: None,
    };

    let base_path = route.map(|r| r.path.as_str());
    let relative = match proxy::accept(&method, uri.path(), query.as_deref(), &headers, base_path) {
        Ok(relative) => relative,
        Err(Refusal::NotFound) => return Err(outside_base(&input.url, config)),
        Err(refusal) => {
            return Ok(report(input, decoded.report, grant_report, request, {
                refused("accept", &refusal)
            }));
        }
    };
    request.relative_path = Some(relative.to_owned());
    let Some(route) = route else {
        return Err(outside_base(&input.url, config));
    };

    let wanted = OutcomeFormat::negotiate(query.as_deref(), &headers);
    if proxy::is_public(&method, relative) {
        if let Err(refusal) = forwardable(wanted, false) {
            let decision = refused("format", &refusal);
            return Ok(report(
                input,
                decoded.report,
                grant_report,
                request,
                decision,
            ));
        }
        let obligations = Obligations {
            rule: "public",
            ..Obligations::default()
        };
        let decision = DecisionReport {
            outcome: "allow",
            step: "public",
            rule: Some("public".into()),
            scope: None,
            answer: None,
            obligations: Some(obligations_report(
                route,
                &method,
                relative,
                query.as_deref(),
                &headers,
                None,
                &obligations,
            )),
            break_glass: None,
        };
        return Ok(report(
            input,
            decoded.report,
            grant_report,
            request,
            decision,
        ));
    }

    let limit = config.limits.max_request_body;
    if body.len() > limit {
        let decision = refused("limits", &Refusal::BodyTooLarge { limit });
        return Ok(report(
            input,
            decoded.report,
            grant_report,
            request,
            decision,
        ));
    }

    let options = config.route_policy_options(route);
    let decision = match proxy::classify_and_decide(
        &method,
        relative,
        query.as_deref(),
        &headers,
        body,
        &grant,
        &options,
    ) {
        Err(refusal) => refused("classify", &refusal),
        Ok((fhir_request, decision)) => {
            request.classified = Some(classified(&fhir_request));
            let (decision, break_glass) = break_glass::reopen(
                config,
                &decoded.identity,
                &headers,
                &grant,
                &fhir_request,
                decision,
                &options,
            );
            let mut report = match decision {
                Decision::Deny(denial) => {
                    let rule = denial.rule;
                    let mut report = refused("policy", &Refusal::Policy(denial));
                    report.rule = Some(rule.to_owned());
                    report
                }
                Decision::Allow(obligations)
                    if let Err(refusal) =
                        forwardable(wanted, proxy::checks_response(&obligations)) =>
                {
                    let mut report = refused("format", &refusal);
                    report.rule = Some(obligations.rule.to_owned());
                    report
                }
                Decision::Allow(obligations) => DecisionReport {
                    outcome: "allow",
                    step: "policy",
                    rule: Some(obligations.rule.to_owned()),
                    scope: obligations.scope.clone(),
                    answer: None,
                    obligations: Some(obligations_report(
                        route,
                        &method,
                        relative,
                        query.as_deref(),
                        &headers,
                        Some(&fhir_request),
                        &obligations,
                    )),
                    break_glass: None,
                },
            };
            report.break_glass = break_glass;
            report
        }
    };
    Ok(report(
        input,
        decoded.report,
        grant_report,
        request,
        decision,
    ))
}

fn report(
    input: &Input,
    token: report::TokenReport,
    grant: GrantReport,
    request: RequestReport,
    decision: DecisionReport,
) -> Report {
    Report {
        version: report::REPORT_VERSION,
        config: input.config_origin.clone(),
        token,
        grant,
        request,
        decision,
    }
}

fn refused(step: &'static str, refusal: &Refusal) -> DecisionReport {
    DecisionReport {
        outcome: "deny",
        step,
        rule: refusal.rule().map(str::to_owned),
        scope: None,
        answer: Some(answer(refusal)),
        obligations: None,
        break_glass: None,
    }
}

/// `--purpose` codes join the purposes the claims state, reduced as a claim's would be.
fn add_purposes(decoded: &mut token::Decoded, given: &[String]) -> Result<(), ExplainError> {
    for text in given {
        let code = crate::token::purpose::reduce(text.trim()).ok_or_else(|| {
            ExplainError(format!(
                "--purpose {text:?}: not a purpose-of-use code such as BTG"
            ))
        })?;
        let caller = std::sync::Arc::make_mut(&mut decoded.identity.caller);
        if !caller.purposes_of_use.contains(&code) {
            caller.purposes_of_use.push(code);
        }
    }
    decoded.report.identity.purposes_of_use = decoded.identity.caller.purposes_of_use.clone();
    Ok(())
}

/// The gateway's answer to a refusal, from the one mapping in `refusal.rs`.
pub(crate) fn answer(refusal: &Refusal) -> Answer {
    let status = refusal.status();
    let challenge = refusal.challenge();
    let error = challenge.as_deref().and_then(|c| {
        let (_, rest) = c.split_once("error=\"")?;
        rest.split_once('"').map(|(error, _)| error.to_owned())
    });
    let expression = match refusal {
        Refusal::Policy(denial) => denial.expression.clone(),
        _ => Vec::new(),
    };
    Answer {
        status: status.as_u16(),
        status_text: status.canonical_reason().unwrap_or("").to_owned(),
        issue_code: refusal.issue_code().code(),
        www_authenticate: challenge,
        error,
        message: refusal.details(),
        expression,
        audit_reason: refusal.reason(),
    }
}

fn parse_method(text: &str) -> Result<Method, ExplainError> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| ExplainError(format!("{text:?} is not an HTTP method")))
}

fn parse_headers(lines: &[String]) -> Result<(HeaderMap, Vec<HeaderReport>), ExplainError> {
    let mut map = HeaderMap::new();
    let mut reports = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ExplainError(format!(
                "--header {line:?}: expected 'Name: value'"
            )));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ExplainError(format!("--header {line:?}: invalid header name")))?;
        if name == header::AUTHORIZATION {
            return Err(ExplainError(
                "--header: pass the access token with --token, not as an Authorization header"
                    .into(),
            ));
        }
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| ExplainError(format!("--header {line:?}: invalid header value")))?;
        reports.push(HeaderReport {
            name: name.to_string(),
            value: value.to_str().unwrap_or_default().to_owned(),
            assumed: false,
        });
        map.append(name, value);
    }
    Ok((map, reports))
}

/// A body without `Content-Type`: a JSON object is FHIR JSON, a JSON array a JSON Patch,
/// anything else a form (`POST _search`).
fn assumed_content_type(body: &[u8]) -> &'static str {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(_)) => "application/json-patch+json",
        Ok(_) => "application/fhir+json",
        Err(_) => "application/x-www-form-urlencoded",
    }
}

/// The public base URLs of the configuration: each route's `public_url`, and the audiences it
/// accepts (its own, or the issuers') that are URLs ending in its base path.
fn public_bases(config: &Config) -> Vec<String> {
    let mut bases: Vec<String> = Vec::new();
    for route in &config.routes {
        let base_path = route.path.as_str();
        let audiences: Vec<&str> = match &route.audience {
            Some(audience) => vec![audience.as_str()],
            None => config.issuers.iter().map(|i| i.audience.as_str()).collect(),
        };
        let found = route
            .public_url
            .iter()
            .map(|url| url.as_str())
            .chain(
                audiences
                    .into_iter()
                    .map(|audience| audience.trim_end_matches('/').to_owned()),
            )
            .filter(|base| {
                base.parse::<Uri>().is_ok_and(|uri| {
                    matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some()
                        && uri.path().trim_end_matches('/') == base_path
                })
            });
        for base in found {
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
    }
    bases
}

fn outside_base(url: &str, config: &Config) -> ExplainError {
    let mut accepted: Vec<String> = config
        .routes
        .iter()
        .map(|route| format!("a path under {}/", route.path.as_str()))
        .collect();
    accepted.extend(public_bases(config).into_iter().map(|b| format!("{b}/...")));
    ExplainError(format!(
        "{url}: not under the public FHIR base; expected {}",
        accepted.join(" or ")
    ))
}

/// The request target as the gateway's listener would see it (a path with an optional
/// query), and the host an absolute URL names.
fn parse_url(url: &str, config: &Config) -> Result<(Uri, Option<String>), ExplainError> {
    if url.contains('#') {
        return Err(ExplainError(format!("{url}: a URL with a fragment")));
    }
    let lower = url.to_ascii_lowercase();
    let target = if lower.starts_with("http://") || lower.starts_with("https://") {
        let uri: Uri = url
            .parse()
            .map_err(|e| ExplainError(format!("{url}: not a valid URL: {e}")))?;
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        )
        .to_ascii_lowercase();
        let under = public_bases(config).iter().any(|base| {
            let Some((scheme, rest)) = base.split_once("://") else {
                return false;
            };
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            origin == format!("{scheme}://{authority}").to_ascii_lowercase()
                && (uri.path() == path || uri.path().starts_with(&format!("{path}/")))
        });
        if !under {
            return Err(outside_base(url, config));
        }
        let target = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        (target, uri.host().map(str::to_owned))
    } else if url.starts_with('/') {
        (url.to_owned(), None)
    } else {
        return Err(outside_base(url, config));
    };
    let (target, host) = target;
    let target = target
        .parse()
        .map_err(|e| ExplainError(format!("{url}: not a valid request target: {e}")))?;
    Ok((target, host))
}

fn params(pairs: &[(String, String)]) -> Vec<Param> {
    pairs
        .iter()
        .map(|(name, value)| Param {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn grant_report(grant: &Grant) -> GrantReport {
    let scopes = &grant.scopes;
    let resource_scopes = scopes
        .resource_scopes()
        .iter()
        .map(|scope| {
            let inactive =
                (scope.context == Context::Patient && grant.patient.is_none()).then(|| {
                    "patient/ scope, but the token carries no patient context: grants nothing"
                        .into()
                });
            ScopeReport {
                scope: scope.text.clone(),
                context: scope.context.as_str(),
                resource_type: match &scope.resource_type {
                    TypeSel::Any => "*".to_owned(),
                    TypeSel::Named(name) => name.clone(),
                },
                permissions: scope.perms.to_string(),
                permission_names: permission_names(scope.perms),
                parameters: params(&scope.params),
                inactive,
            }
        })
        .collect();
    let ignored = scopes
        .others()
        .iter()
        .map(|text| IgnoredScope {
            scope: text.clone(),
            kind: match Scope::parse(text) {
                Scope::Other(OtherKind::Launch) => "launch",
                Scope::Other(OtherKind::Identity) => "identity",
                Scope::Other(OtherKind::Refresh) => "refresh",
                _ => "extension",
            },
        })
        .collect();
    GrantReport {
        patient: grant.patient.clone(),
        resource_scopes,
        ignored,
        unsupported: scopes.unsupported().to_vec(),
        malformed: scopes.malformed().to_vec(),
    }
}

fn permission_names(perms: Perms) -> Vec<&'static str> {
    [
        (Perms::C, "create"),
        (Perms::R, "read"),
        (Perms::U, "update"),
        (Perms::D, "delete"),
        (Perms::S, "search"),
    ]
    .into_iter()
    .filter(|(letter, _)| perms.contains(*letter))
    .map(|(_, name)| name)
    .collect()
}

fn classified(request: &FhirRequest) -> Classified {
    use fhirgate_policy::request::Patch;
    Classified {
        interaction: request.interaction.code(),
        resource_type: request.resource_type.clone(),
        id: request.id.clone(),
        version_id: request.version_id.clone(),
        compartment: request
            .compartment
            .as_ref()
            .map(|(resource_type, id)| Compartment {
                resource_type: resource_type.clone(),
                id: id.clone(),
            }),
        operation: request.operation.clone(),
        parameters: params(&request.params),
        conditional: request.conditional,
        if_none_exist: params(&request.if_none_exist),
        body_resource_type: request
            .resource
            .as_ref()
            .and_then(|r| r.get("resourceType"))
            .and_then(|t| t.as_str())
            .map(str::to_owned),
        patch: request.patch.as_ref().map(|patch| match patch {
            Patch::Readable { names, whole: true } => {
                format!(
                    "readable, replaces the whole resource; touches {}",
                    names.join(", ")
                )
            }
            Patch::Readable { names, .. } => format!("readable; touches {}", names.join(", ")),
            Patch::Opaque => "opaque (a format the gateway cannot read)".to_owned(),
        }),
        entries: request.entries.iter().map(classified).collect(),
    }
}

fn obligations_report(
    route: &Route,
    method: &Method,
    relative: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    request: Option<&FhirRequest>,
    obligations: &Obligations,
) -> ObligationsReport {
    let upstream_base = route.upstream.url.as_str();
    let narrowed;
    let upstream_query = if obligations.add_params.is_empty() {
        query
    } else {
        narrowed = decision::narrowed_query(query, &obligations.add_params);
        Some(narrowed.as_str())
    };
    // As the pipeline does: checks and checked responses are asked for without `_format`.
    let json_query = upstream_query.map(without_format_param);
    let upstream_query = if proxy::checks_response(obligations) {
        json_query.as_deref()
    } else {
        upstream_query
    };
    let upstream_if_none_exist = (!obligations.add_if_none_exist.is_empty()).then(|| {
        let original = headers.get("if-none-exist").and_then(|v| v.to_str().ok());
        decision::narrowed_query(original, &obligations.add_if_none_exist)
    });
    let precheck = obligations.precheck.as_ref().map(|precheck| {
        let withheld = answer(&Refusal::ResponseWithheld);
        match precheck {
            Precheck::Target(check) => {
                let target = request
                    .and_then(|r| Some(format!("{}/{}", r.resource_type.as_ref()?, r.id.as_ref()?)))
                    .unwrap_or_default();
                PrecheckReport {
                    kind: "target",
                    fetch_url: proxy::target_url(&upstream_base, &target, None),
                    checks: format!(
                        "the current resource must be covered: {}; a target that does not exist \
                         (404, 410) passes",
                        covered_by(check)
                    ),
                    fails_with: vec![withheld],
                }
            }
            Precheck::Matches(check) => PrecheckReport {
                kind: "matches",
                fetch_url: proxy::target_url(&upstream_base, relative, json_query.as_deref()),
                checks: format!(
                    "every resource the criteria match must be covered: {}; the matches must fit \
                     in one page",
                    covered_by(check)
                ),
                fails_with: vec![withheld, answer(&Refusal::TooManyMatches)],
            },
        }
    });
    let response_check = obligations
        .response_check
        .as_ref()
        .map(|check| check_report(check, obligations.withheld_as_not_found));
    let bundle_entries = obligations
        .entries
        .iter()
        .map(|entry| EntryReport {
            entry: format!("Bundle.entry[{}]", entry.index),
            added_parameters: params(&entry.add_params),
            response_check: entry
                .response_check
                .as_ref()
                .map(|check| check_report(check, false)),
        })
        .collect();
    let refused_entries = obligations
        .refused_entries
        .iter()
        .map(|(index, denial)| RefusedEntryReport {
            entry: format!("Bundle.entry[{index}]"),
            answer: answer(&Refusal::Policy(denial.clone())),
        })
        .collect();
    ObligationsReport {
        none: obligations.is_empty(),
        added_parameters: params(&obligations.add_params),
        upstream_method: method.to_string(),
        upstream_url: proxy::target_url(&upstream_base, relative, upstream_query),
        added_if_none_exist: params(&obligations.add_if_none_exist),
        upstream_if_none_exist,
        precheck,
        response_check,
        withheld_as_not_found: obligations.withheld_as_not_found,
        bind_export_to_client: obligations.bind_export_to_client,
        bundle_entries,
        refused_entries,
    }
}

/// A response check in words, with the answer when a single resource fails it.
fn check_report(check: &ResponseCheck, withheld_as_not_found: bool) -> CheckReport {
    let (expect, checks, fails_with) = match check.expect {
        Expect::Resource => {
            let refusal = if withheld_as_not_found {
                Refusal::ResponseHidden
            } else {
                Refusal::ResponseWithheld
            };
            (
                "resource",
                format!(
                    "the returned resource must be covered: {}",
                    covered_by(check)
                ),
                Some(answer(&refusal)),
            )
        }
        Expect::Bundle => (
            "bundle",
            format!(
                "each Bundle entry must be covered: {}; entries that are not are withheld \
                 and a warning OperationOutcome entry says how many",
                covered_by(check)
            ),
            None,
        ),
    };
    CheckReport {
        expect,
        permissions: check.perms.to_string(),
        patient: check.patient.clone(),
        checks,
        fails_with,
    }
}

/// What "covered" means for a check, in words.
fn covered_by(check: &ResponseCheck) -> String {
    let letters: Vec<String> = check
        .perms
        .to_string()
        .chars()
        .map(|c| format!("'{c}'"))
        .collect();
    let mut text = format!(
        "a granted scope holding {} on its type",
        letters.join(" or ")
    );
    let scopes = check.grant.scopes.resource_scopes();
    if scopes.iter().any(|s| s.context == Context::Patient) {
        match &check.patient {
            Some(patient) => text.push_str(&format!(
                ", under patient/ scopes in the compartment of Patient/{patient}"
            )),
            None => text.push_str(", and patient/ scopes cover nothing without a patient"),
        }
    }
    if scopes.iter().any(|s| s.is_granular()) {
        text.push_str(", matching the scope's granular parameters");
    }
    text
}

/// The exit status of an explanation: 0 allow, 1 deny.
pub fn exit_status(report: &Report) -> u8 {
    if report.allowed() { 0 } else { 1 }
}

/// Renders the report as pretty JSON.
pub fn render_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("the report serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<String, ExplainError> {
        parse_url(url, &Config::embedded_default()).map(|(uri, _)| uri.to_string())
    }

    /// Absolute URLs are checked here; paths by the accept step, as the gateway routes them.
    #[test]
    fn urls_must_be_under_the_public_base() {
        assert_eq!(
            target("/fhir/Patient?name=a%20b").unwrap(),
            "/fhir/Patient?name=a%20b"
        );
        assert_eq!(
            target("HTTP://127.0.0.1:8080/fhir/Patient/1?_format=json").unwrap(),
            "/fhir/Patient/1?_format=json"
        );
        assert_eq!(target("http://127.0.0.1:8080/fhir").unwrap(), "/fhir");
        for outside in [
            "Patient/1",
            "http://127.0.0.1:8080/fhirx/Patient",
            "http://127.0.0.1:9999/fhir/Patient",
            "https://127.0.0.1:8080/fhir/Patient",
            "/fhir/Patient#x",
            "ftp://127.0.0.1:8080/fhir/Patient",
        ] {
            assert!(target(outside).is_err(), "{outside}");
        }
    }

    #[test]
    fn a_body_without_content_type_is_read_by_its_shape() {
        assert_eq!(
            assumed_content_type(br#"{"resourceType":"Patient"}"#),
            "application/fhir+json"
        );
        assert_eq!(
            assumed_content_type(br#"[{"op":"remove","path":"/x"}]"#),
            "application/json-patch+json"
        );
        assert_eq!(
            assumed_content_type(b"code=1&_count=5"),
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn answers_come_from_the_refusal_mapping() {
        let answer = answer(&Refusal::ResponseWithheld);
        assert_eq!(answer.status, 403);
        assert_eq!(answer.issue_code, "forbidden");
        assert_eq!(answer.error.as_deref(), Some("insufficient_scope"));
        let none = super::answer(&Refusal::MethodNotAllowed);
        assert_eq!(none.status, 405);
        assert_eq!(none.error, None);
    }
}
