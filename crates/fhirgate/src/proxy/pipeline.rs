//! One request through every step, and its audit record.

use std::sync::Arc;

use bytes::Bytes;
use fhirgate_policy::decision::{self, Decision, Precheck};
use fhirgate_policy::grant::Grant;
use fhirgate_policy::options::PolicyOptions;
use fhirgate_policy::request::{self, FhirRequest, Interaction, RequestParts};
use fhirgate_policy::verify::{self as policy_verify, ResponseCheck, VerifyError};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::accept::{ACCESS_TOKEN, accept, has_param, token_in_url};
use super::break_glass::{BREAK_GLASS_HEADER, purposes};
use super::bundle::BundlePlan;
use super::cors;
use super::forward::{Outbound, add_identity_headers, upstream_headers};
use super::headers::{self, REQUEST_ID};
use super::public::{self, PublicRequest, SMART_CONFIGURATION};
use super::rewrite::{Rewrite, Rewrites};
use super::upstream::Upstream;
use super::verify::check_body;
use super::{Gateway, Peer, Route};
use crate::audit::{self, AuditDecision, AuditRecord};
use crate::body::{self, Body};
use crate::metrics::{Answered, Limit, Reason, Route as RouteName};
use crate::ratelimit::{Charge, Standing, Verdict, client_address, cost_of};
use crate::refusal::{NotAcceptable, OutcomeFormat, Refusal, forwardable, without_format_param};
use crate::telemetry;
use crate::token::{Identity, Presentation};

/// What the steps learn about a request, for its audit record.
#[derive(Default)]
struct Facts {
    identity: Option<Arc<Identity>>,
    interaction: Option<Interaction>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    rule: Option<String>,
    upstream_status: Option<u16>,
    /// How long the upstream took to answer (headers), summed over prechecks and the call.
    upstream_took: Option<std::time::Duration>,
    target_patient: Option<String>,
    withheld: Option<usize>,
    /// The tightest rate-limit standing, for the response headers.
    rate: Option<Standing>,
    /// The reason recorded for an answered request when it is not `allowed`.
    reason: Option<Reason>,
    /// The purposes of use the request states (token claim, and the break-the-glass header
    /// when one is configured).
    purposes: Vec<String>,
    /// The codes the request broke the glass with, when it did.
    break_glass: Option<Vec<String>>,
}

/// Answers one request: forwards it when the token allows it, refuses it otherwise, and
/// records the decision either way.
pub async fn handle(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
    peer: Arc<Peer>,
) -> Response<Body> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let request_id = headers::request_id(request.headers());
    // The client's address after the trusted-proxy rules, as rate limits see it.
    let source = client_address(
        peer.address.ip(),
        request.headers(),
        &gateway.config.rate_limits.trusted_proxies,
    );
    let method = request.method().to_string();
    let path = audit::redact_path(request.uri().path());
    let route = gateway.routes.find(request.headers(), request.uri());
    let cors = gateway.cors.allowance(
        request.method(),
        request.uri().path(),
        request.headers(),
        route.map(|r| r.base_path.as_str()),
    );
    // Recorded without the value of any token a client put in the URL.
    let query = request.uri().query().map(audit::redact_query);
    let wanted = OutcomeFormat::negotiate(query.as_deref(), request.headers());
    // Refusals decided before the format is checked go out in JSON when it is unacceptable.
    let format = wanted.clone().unwrap_or(OutcomeFormat::Json);
    let mut facts = Facts::default();
    let span = telemetry::request_span(&request_id, &method);

    let result = run(
        &gateway,
        route,
        request,
        &peer,
        &request_id,
        wanted,
        &mut facts,
    )
    .instrument(span.clone())
    .await;
    let (mut response, decision, reason) = match result {
        Ok(response) if facts.withheld.is_some() => {
            let reason = facts.reason.unwrap_or(Reason::ALLOWED);
            (response, AuditDecision::Filter, reason)
        }
        Ok(response) => {
            let reason = facts.reason.unwrap_or(Reason::ALLOWED);
            (response, AuditDecision::Allow, reason)
        }
        Err(refusal) => {
            let decision = if matches!(
                refusal,
                Refusal::UpstreamUnavailable
                    | Refusal::UpstreamTimeout
                    | Refusal::UpstreamDown { .. }
                    | Refusal::DiscoveryUnavailable
            ) {
                AuditDecision::Allow
            } else {
                AuditDecision::Deny
            };
            let reason = Reason::of(&refusal);
            if facts.rule.is_none() {
                facts.rule = refusal.rule().map(str::to_owned);
            }
            tracing::debug!(request.id = %request_id, reason = reason.as_str(), %refusal, "request refused");
            (refusal.into_response(format), decision, reason)
        }
    };
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), headers::value(&request_id));
    // Only the gateway says a request broke the glass.
    response.headers_mut().remove(&BREAK_GLASS_HEADER);
    if let Some(codes) = &facts.break_glass {
        response
            .headers_mut()
            .insert(BREAK_GLASS_HEADER, headers::value(&codes.join(", ")));
    }
    let success = response.status().is_success();
    gateway.cors.apply(&cors, success, response.headers_mut());
    if let Some(standing) = facts.rate.take()
        && gateway.config.rate_limits.headers
    {
        let (policy, state) = standing.headers();
        for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(http::HeaderName::from_static(name), value);
            }
        }
    }

    let took = started.elapsed();
    let identity = facts.identity.take();
    let record = AuditRecord {
        record_id: uuid::Uuid::now_v7().to_string(),
        instance: gateway.instance.clone(),
        time: audit::now_rfc3339(),
        started: audit::rfc3339(started_at),
        request_id,
        route: route.map(|r| std::borrow::Cow::Borrowed(r.name.as_str())),
        client_id: identity.as_ref().and_then(|i| i.caller.client_id.clone()),
        issuer: identity.as_ref().map(|i| i.caller.issuer.clone()),
        subject: identity.as_ref().and_then(|i| i.caller.subject.clone()),
        fhir_user: identity.as_ref().and_then(|i| i.caller.fhir_user.clone()),
        patient: identity.as_ref().and_then(|i| i.caller.patient.clone()),
        encounter: identity.as_ref().and_then(|i| i.caller.encounter.clone()),
        fhir_context: identity
            .as_ref()
            .and_then(|i| i.caller.fhir_context.clone()),
        token_id: identity.as_ref().and_then(|i| i.token_id.clone()),
        scopes: identity.as_ref().and_then(|i| i.caller.scope.clone()),
        source: source.to_string(),
        method,
        path,
        query,
        interaction: facts.interaction.map(|i| i.code().into()),
        resource_type: facts.resource_type,
        resource_id: facts.resource_id,
        target_patient: facts.target_patient,
        decision,
        reason: reason.as_str().to_owned(),
        rule: facts.rule,
        status: response.status().as_u16(),
        upstream_status: facts.upstream_status,
        withheld: facts.withheld,
        latency_ms: took.as_secs_f64() * 1000.0,
        upstream_latency_ms: facts.upstream_took.map(|t| t.as_secs_f64() * 1000.0),
        purpose_of_use: (!facts.purposes.is_empty()).then(|| facts.purposes.join(" ")),
        break_glass: facts.break_glass.is_some(),
    };
    let mut answered = Answered {
        route: route.map_or(RouteName::NONE, |r| r.name),
        decision,
        reason,
        interaction: facts.interaction,
        status: response.status(),
        took,
    };
    if let Err(error) = gateway.audit.record(&record).await {
        // Without its record the answer cannot go out; the client is told to come back.
        tracing::error!(request.id = %record.request_id, %error, status = record.status, "request answered 503: its audit record cannot be written");
        let refusal = Refusal::AuditUnavailable;
        answered.decision = AuditDecision::Deny;
        answered.reason = Reason::of(&refusal);
        let mut refused = refusal.into_response(format);
        answered.status = refused.status();
        refused
            .headers_mut()
            .insert(REQUEST_ID.clone(), headers::value(&record.request_id));
        gateway.cors.apply(&cors, false, refused.headers_mut());
        count(&gateway, &span, &answered);
        return refused;
    }
    count(&gateway, &span, &answered);
    response
}

/// The break-the-glass step: a decision that refused for missing scope, decided again under
/// the emergency grant when the request states an emergency and may break the glass. Any
/// other decision, and every decision without a `break_glass` section, passes unchanged.
fn break_glass(
    gateway: &Gateway,
    route: &Route,
    grant: &Grant,
    request: &FhirRequest,
    decision: Decision,
    facts: &mut Facts,
    request_id: &str,
) -> Decision {
    let (Some(policy), Some(identity)) = (&gateway.break_glass, &facts.identity) else {
        return decision;
    };
    if facts.purposes.is_empty() {
        return decision;
    }
    let attempt = policy.attempt(
        identity,
        &facts.purposes,
        grant,
        request,
        &decision,
        &route.policy,
    );
    match attempt {
        Ok(broken) => {
            tracing::info!(
                request.id = %request_id,
                client.id = identity.caller.client_id.as_deref().unwrap_or_default(),
                purpose = %broken.codes.join(" "),
                interaction = request.interaction.code(),
                "request allowed under break-the-glass"
            );
            facts.reason = Some(Reason::BREAK_GLASS);
            facts.break_glass = Some(broken.codes);
            Decision::Allow(broken.obligations)
        }
        Err(why) => {
            if why.is_refused_emergency() {
                tracing::info!(
                    request.id = %request_id,
                    client.id = identity.caller.client_id.as_deref().unwrap_or_default(),
                    purpose = %facts.purposes.join(" "),
                    why = why.describe(),
                    "break-the-glass refused"
                );
            }
            decision
        }
    }
}

/// Counts an answered request in the metrics and records it on its span.
fn count(gateway: &Gateway, span: &tracing::Span, answered: &Answered) {
    gateway.metrics.request(answered);
    telemetry::record_answer(span, answered);
}

async fn run(
    gateway: &Gateway,
    route: Option<&Route>,
    request: Request<Incoming>,
    peer: &Peer,
    request_id: &str,
    wanted: Result<OutcomeFormat, NotAcceptable>,
    facts: &mut Facts,
) -> Result<Response<Body>, Refusal> {
    if !gateway.audit.accepting() {
        return Err(Refusal::AuditUnavailable);
    }
    let (parts, incoming) = request.into_parts();
    let base_path = route.map(|r| r.base_path.as_str());
    if cors::is_preflight(&parts.method, &parts.headers) {
        let answer = gateway.cors.answer_preflight(&parts, base_path)?;
        facts.reason = Some(Reason::CORS_PREFLIGHT);
        return Ok(answer);
    }
    let relative = accept(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        base_path,
    )?;
    // `accept` finds no FHIR API without a route.
    let route = route.ok_or(Refusal::NotFound)?;

    if is_public(&parts.method, relative) {
        forwardable(wanted, false)?;
        let request = PublicRequest {
            parts: &parts,
            relative,
            peer,
            request_id,
            base: public_base(route, &parts, peer.tls),
            route,
        };
        let answered = public::answer(gateway, request).await;
        facts.interaction = Some(answered.interaction);
        if let Some(call) = answered.upstream {
            facts.upstream_took = Some(call.took);
            facts.upstream_status = call.status;
        }
        return answered.result;
    }

    let url = || request_url(route, &parts, relative, peer.tls);
    let presentation = Presentation {
        headers: &parts.headers,
        method: parts.method.as_str(),
        url: &url,
        client_certificate: peer.certificate.as_deref(),
        audience: route.audience.as_deref(),
    };
    let authenticated = gateway
        .tokens
        .authenticate(&presentation)
        .instrument(telemetry::authenticate_span())
        .await;
    let identity = match authenticated {
        Ok(identity) => identity,
        Err(error) => {
            // Bad or missing tokens count against the client's address too.
            let anonymous = Identity::default();
            let charge = unit_charge(gateway, &parts.headers, peer, &anonymous, "unauthenticated");
            charge_limits(gateway, &charge, facts).await?;
            return Err(error.into());
        }
    };
    let grant = identity.grant.clone();
    let header = gateway.break_glass.as_ref().and_then(|b| b.header());
    facts.purposes = purposes(&identity, header, &parts.headers);
    facts.identity = Some(identity);

    let body = read_request_body(gateway, &parts.method, incoming).await?;
    let form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .starts_with("application/x-www-form-urlencoded")
        });
    if form && has_param(&String::from_utf8_lossy(&body), ACCESS_TOKEN) {
        return Err(token_in_url());
    }
    let classified = classify_and_decide(
        &parts.method,
        relative,
        parts.uri.query(),
        &parts.headers,
        &body,
        &grant,
        &route.policy,
    );
    let (fhir_request, decision) = match classified {
        Ok(classified) => classified,
        Err(refusal) => {
            // A request too malformed to classify still costs its sender one unit.
            if let Some(identity) = facts.identity.clone() {
                let charge = unit_charge(gateway, &parts.headers, peer, &identity, "invalid");
                charge_limits(gateway, &charge, facts).await?;
            }
            return Err(refusal);
        }
    };
    facts.interaction = Some(fhir_request.interaction);
    facts.resource_type = fhir_request.resource_type.clone();
    facts.resource_id = fhir_request.id.clone();
    facts.target_patient = target_patient(&fhir_request);
    throttle(gateway, &parts.headers, peer, &fhir_request, facts).await?;

    let decision = break_glass(
        gateway,
        route,
        &grant,
        &fhir_request,
        decision,
        facts,
        request_id,
    );
    let obligations = match decision {
        Decision::Deny(denial) => return Err(Refusal::Policy(denial)),
        Decision::Allow(obligations) => obligations,
    };
    facts.rule = Some(obligations.rule.to_owned());

    let narrowed;
    let query = if obligations.add_params.is_empty() {
        parts.uri.query()
    } else {
        narrowed = decision::narrowed_query(parts.uri.query(), &obligations.add_params);
        Some(narrowed.as_str())
    };

    let plan = BundlePlan::new(&obligations, &body);
    let checked = checks_response(&obligations);
    forwardable(wanted, checked)?;
    // The upstream answers checks and checked responses in JSON: no `_format` may say otherwise.
    let json_query = query.map(without_format_param);

    match &obligations.precheck {
        Some(Precheck::Target(check)) => {
            precheck_target(
                gateway,
                route,
                &fhir_request,
                check,
                &parts.headers,
                peer,
                request_id,
            )
            .await?;
        }
        Some(Precheck::Matches(check)) => {
            let target = Target {
                path: relative,
                query: json_query.as_deref(),
            };
            let at = Fetch {
                gateway,
                upstream: &route.upstream,
                client_headers: &parts.headers,
                peer,
                request_id,
            };
            precheck_matches(&at, target, check).await?;
        }
        None => {}
    }

    let body = match &plan {
        Some(plan) => plan.upstream_body(&body)?,
        None => body,
    };
    let query = if checked {
        json_query.as_deref()
    } else {
        query
    };
    // Absolute URLs of the public base become the upstream's own.
    let rewrites = rewrites(route, &parts, peer.tls);
    let body = rewrites.outbound(&body).map_or(body, Bytes::from);
    let outbound_query;
    let query = match query.and_then(|q| rewrites.outbound(q.as_bytes())) {
        Some(rewritten) => {
            outbound_query = String::from_utf8(rewritten).unwrap_or_default();
            Some(outbound_query.as_str())
        }
        None => query,
    };
    let mut headers = upstream_headers(&parts.headers, peer, request_id, checked);
    if route.identity_headers
        && let Some(identity) = &facts.identity
    {
        add_identity_headers(&mut headers, identity);
        if let Some(codes) = &facts.break_glass {
            headers.insert(BREAK_GLASS_HEADER, headers::value(&codes.join(", ")));
        }
    }
    if !obligations.add_if_none_exist.is_empty() {
        narrow_if_none_exist(&mut headers, &obligations.add_if_none_exist)?;
    }
    // A HEAD whose answer is checked is a GET upstream: its headers (ETag, Content-Length)
    // describe a body, and only the body shows whether the client may know of it. The checked
    // answer then goes out without its body.
    let method = if checked && parts.method == Method::HEAD {
        &Method::GET
    } else {
        &parts.method
    };
    let outbound = Outbound {
        method,
        path: relative,
        query,
        headers,
        body,
    };
    let response = send_upstream(&route.upstream, outbound, facts).await?;

    if !checked || !response.status().is_success() {
        // Errors (an OperationOutcome at most) and bodiless answers carry no clinical data.
        let head_only = parts.method == Method::HEAD;
        let to_client = rewrites.to_client.as_ref();
        return pass_through(gateway, &route.upstream, response, to_client, head_only).await;
    }
    let (head, incoming) = response.into_parts();
    let bytes = route
        .upstream
        .read_body(
            incoming,
            head.headers.get(header::CONTENT_ENCODING),
            gateway.config.limits.max_checked_response,
        )
        .await?;
    let (body, withheld) = match (&plan, obligations.response_check.as_ref()) {
        (Some(plan), _) => {
            let checked = plan.checked_response(&bytes)?;
            (checked.body, checked.withheld)
        }
        (None, Some(check)) => {
            let checked = check_body(check, bytes).map_err(|refusal| match refusal {
                Refusal::ResponseWithheld if obligations.withheld_as_not_found => {
                    Refusal::ResponseHidden
                }
                other => other,
            })?;
            (checked.body, checked.withheld)
        }
        (None, None) => (bytes, 0),
    };
    if withheld > 0 {
        facts.withheld = Some(withheld);
    }
    Ok(checked_reply(
        head,
        body,
        withheld > 0 || plan.is_some(),
        rewrites.to_client.as_deref(),
    ))
}

/// The request the client asked for, sent upstream, with its status and time recorded.
async fn send_upstream(
    upstream: &Upstream,
    outbound: Outbound<'_>,
    facts: &mut Facts,
) -> Result<Response<Incoming>, Refusal> {
    let sent = Instant::now();
    let answer = upstream.send(outbound).await;
    facts.upstream_took = Some(sent.elapsed());
    let response = answer?;
    facts.upstream_status = Some(response.status().as_u16());
    Ok(response)
}

/// The patient whose record a request names itself, for the accounting of disclosures:
/// `Patient/X` and its compartment, or a `patient` / `subject` search parameter naming one
/// patient. Which patient a token's context names is recorded apart.
fn target_patient(request: &FhirRequest) -> Option<String> {
    if let Some((kind, id)) = &request.compartment
        && kind == "Patient"
        && is_fhir_id(id)
    {
        return Some(id.clone());
    }
    if request.resource_type.as_deref() == Some("Patient")
        && let Some(id) = request.id.as_ref().filter(|id| is_fhir_id(id))
    {
        return Some(id.clone());
    }
    let searches_patients = request.resource_type.as_deref() == Some("Patient");
    request.params.iter().find_map(|(name, value)| {
        let name = name.split(':').next().unwrap_or(name);
        let value = match name {
            "patient" => value.strip_prefix("Patient/").unwrap_or(value),
            "subject" => value.strip_prefix("Patient/")?,
            "_id" if searches_patients => value,
            _ => return None,
        };
        is_fhir_id(value).then(|| value.to_owned())
    })
}

/// A FHIR id: 1 to 64 letters, digits, `-` and `.` (one patient, not a list or a path).
fn is_fhir_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

/// A response whose body the gateway checked (and may have changed).
fn checked_reply(
    mut head: http::response::Parts,
    body: Bytes,
    changed: bool,
    rewrite: Option<&Rewrite>,
) -> Response<Body> {
    super::headers::remove_hop_by_hop(&mut head.headers);
    let body = match rewrite {
        Some(rewrite) => {
            rewrite_location(&mut head.headers, rewrite);
            rewrite.apply(&body).map_or(body, Bytes::from)
        }
        None => body,
    };
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.remove(header::CONTENT_ENCODING);
    if changed {
        // The body changed, so validators of the old one no longer hold.
        head.headers.remove(header::ETAG);
    }
    Response::from_parts(head, body::full(body))
}

/// The throttle step: charges the request to every rate-limit rule (refused requests too, so
/// probing costs as much as reading).
async fn throttle(
    gateway: &Gateway,
    headers: &http::HeaderMap,
    peer: &Peer,
    request: &FhirRequest,
    facts: &mut Facts,
) -> Result<(), Refusal> {
    if !gateway.limiter.is_active() {
        return Ok(());
    }
    let Some(identity) = facts.identity.clone() else {
        return Ok(());
    };
    let limits = &gateway.config.rate_limits;
    let client_ip = client_address(peer.address.ip(), headers, &limits.trusted_proxies);
    // A batch or transaction is charged entry by entry, so rules narrowed to interactions or
    // types see the searches and writes inside it.
    let bundled = matches!(
        request.interaction,
        Interaction::Batch | Interaction::Transaction
    ) && !request.entries.is_empty();
    let parts: Vec<&FhirRequest> = if bundled {
        request.entries.iter().collect()
    } else {
        vec![request]
    };
    let charges: Vec<Charge<'_>> = parts
        .into_iter()
        .map(|part| Charge {
            identity: &identity,
            authenticated: true,
            client_ip,
            interaction: part.interaction.code(),
            resource_type: part.resource_type.as_deref(),
            cost: cost_of(part, &limits.costs),
        })
        .collect();
    let verdict = gateway.limiter.charge_all(&charges).await;
    settle(gateway, verdict, facts)
}

/// A one-unit charge for a request that got no further than `interaction` says: a refused
/// token (charged as unauthenticated when `identity` is empty) or a request that could not be
/// classified.
fn unit_charge<'a>(
    gateway: &Gateway,
    headers: &http::HeaderMap,
    peer: &Peer,
    identity: &'a Identity,
    interaction: &'a str,
) -> Charge<'a> {
    Charge {
        identity,
        authenticated: !identity.caller.issuer.is_empty(),
        client_ip: client_address(
            peer.address.ip(),
            headers,
            &gateway.config.rate_limits.trusted_proxies,
        ),
        interaction,
        resource_type: None,
        cost: 1,
    }
}

/// Charges the rules and turns the verdict into the step's outcome.
async fn charge_limits(
    gateway: &Gateway,
    charge: &Charge<'_>,
    facts: &mut Facts,
) -> Result<(), Refusal> {
    if !gateway.limiter.is_active() {
        return Ok(());
    }
    let verdict = gateway.limiter.charge(charge).await;
    settle(gateway, verdict, facts)
}

/// A rate-limit verdict as the step's outcome: the standing kept for the headers, or the
/// refusal.
fn settle(gateway: &Gateway, verdict: Verdict, facts: &mut Facts) -> Result<(), Refusal> {
    match verdict {
        Verdict::Allowed(standing) => {
            facts.rate = standing;
            Ok(())
        }
        Verdict::Throttled { rule, retry_after } => {
            gateway.metrics.throttled();
            facts.rule = Some(rule.clone());
            Err(Refusal::Throttled { rule, retry_after })
        }
        Verdict::StoreUnavailable => Err(Refusal::RateLimitUnavailable),
    }
}

/// The URL the client addressed, without query: under the route's `public_url` when
/// configured, else made of the connection's scheme, the `Host` the client sent and the
/// route's base path.
fn request_url(route: &Route, parts: &http::request::Parts, relative: &str, tls: bool) -> String {
    let base = public_base(route, parts, tls);
    if relative.is_empty() {
        base
    } else {
        format!("{base}/{relative}")
    }
}

/// The FHIR base URL of `route` as this client addresses the gateway: the route's
/// `public_url`, or the connection's scheme, the `Host` header and the route's base path.
fn public_base(route: &Route, parts: &http::request::Parts, tls: bool) -> String {
    match &route.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .unwrap_or("localhost");
            let scheme = if tls { "https://" } else { "http://" };
            let path = route.base_path.as_str();
            let mut base = String::with_capacity(scheme.len() + host.len() + path.len());
            for part in [scheme, host, path] {
                base.push_str(part);
            }
            base
        }
    }
}

/// The rewrites between the route's upstream base and the public base this request names.
fn rewrites(route: &Route, parts: &http::request::Parts, tls: bool) -> Rewrites {
    let public = public_base(route, parts, tls);
    route.rewrites.get(|| route.upstream_base.clone(), public)
}

/// `metadata` and SMART discovery are public, as SMART App Launch requires.
pub fn is_public(method: &Method, relative: &str) -> bool {
    (*method == Method::GET || *method == Method::HEAD)
        && (relative == "metadata" || relative == SMART_CONFIGURATION)
}

/// Does the gateway read and check the response of a request allowed with `obligations`?
/// Such a response is had from the upstream in JSON only. The pipeline and `fhirgate
/// explain` both ask here.
pub fn checks_response(obligations: &decision::Obligations) -> bool {
    obligations.response_check.is_some() || BundlePlan::applies(obligations)
}

/// Does the gateway read (and classify) the body of requests with this method?
pub fn reads_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Classifies a request from what the gateway received (method, path relative to the public
/// base, raw query, headers, body as read) and decides it against `grant`. The pipeline and
/// `fhirgate explain` both come here, so they cannot disagree.
pub fn classify_and_decide(
    method: &Method,
    relative: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
    body: &[u8],
    grant: &Grant,
    policy: &PolicyOptions,
) -> Result<(FhirRequest, Decision), Refusal> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let fhir_request = request::classify_with(
        &RequestParts {
            method: method.as_str(),
            path: relative,
            query,
            content_type: text(header::CONTENT_TYPE.as_str()),
            body: (!body.is_empty()).then_some(body),
            if_none_exist: text("if-none-exist"),
        },
        policy,
    )?;
    let decision = decision::decide_with(grant, &fhir_request, policy);
    Ok((fhir_request, decision))
}

/// Reads the request body of methods that have one; it is needed to classify and check them.
/// It must arrive whole within `limits.request_body_timeout`.
async fn read_request_body(
    gateway: &Gateway,
    method: &Method,
    incoming: Incoming,
) -> Result<Bytes, Refusal> {
    if !reads_body(method) {
        return Ok(Bytes::new());
    }
    let limits = &gateway.config.limits;
    let (limit, timeout) = (limits.max_request_body, limits.request_body_timeout);
    let read = tokio::time::timeout(timeout, Limited::new(incoming, limit).collect()).await;
    match read {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Refusal::BodyTooLarge { limit })
        }
        Ok(Err(_)) => Err(Refusal::BadRequest("request body could not be read".into())),
        Err(_) => {
            gateway.metrics.limit_hit(Limit::RequestBodyTimeout);
            Err(Refusal::BodyTimeout { timeout })
        }
    }
}

/// A conditional create's `If-None-Exist` criteria, with the decision's parameters ANDed in.
fn narrow_if_none_exist(
    headers: &mut http::HeaderMap,
    add: &[(String, String)],
) -> Result<(), Refusal> {
    let original = headers
        .get("if-none-exist")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| Refusal::BadRequest("If-None-Exist is not valid text".into()))?;
    let narrowed = decision::narrowed_query(original.as_deref(), add);
    let value = http::HeaderValue::from_str(&narrowed)
        .map_err(|_| Refusal::BadRequest("If-None-Exist cannot be narrowed".into()))?;
    headers.insert(http::HeaderName::from_static("if-none-exist"), value);
    Ok(())
}

/// Where a pre-check search goes: the write's path and its (narrowed) criteria.
struct Target<'a> {
    path: &'a str,
    query: Option<&'a str>,
}

/// Where the pre-check fetches of one request go, and what they are sent with.
struct Fetch<'a> {
    gateway: &'a Gateway,
    upstream: &'a Upstream,
    client_headers: &'a http::HeaderMap,
    peer: &'a Peer,
    request_id: &'a str,
}

/// A GET the gateway makes on its own behalf before a write, without the write's body headers.
async fn fetch_for_check(at: &Fetch<'_>, target: Target<'_>) -> Result<Option<Bytes>, Refusal> {
    let mut headers = upstream_headers(at.client_headers, at.peer, at.request_id, true);
    headers.remove(header::CONTENT_TYPE);
    headers.remove(header::IF_MATCH);
    headers.remove("if-none-exist");
    let outbound = Outbound {
        method: &Method::GET,
        path: target.path,
        query: target.query,
        headers,
        body: Bytes::new(),
    };
    let response = at.upstream.send(outbound).await?;
    match response.status() {
        StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(None),
        status if !status.is_success() => {
            return Err(Refusal::UpstreamUnverifiable(format!(
                "pre-check fetch answered {status}"
            )));
        }
        _ => {}
    }
    let (head, incoming) = response.into_parts();
    let bytes = at
        .upstream
        .read_body(
            incoming,
            head.headers.get(header::CONTENT_ENCODING),
            at.gateway.config.limits.max_checked_response,
        )
        .await?;
    Ok(Some(bytes))
}

/// Before an update, patch or delete under `patient/` or granular scopes: the current resource
/// must be one the token may touch. A target that does not exist yet passes (the body was
/// checked).
async fn precheck_target(
    gateway: &Gateway,
    route: &Route,
    fhir_request: &FhirRequest,
    check: &ResponseCheck,
    client_headers: &http::HeaderMap,
    peer: &Peer,
    request_id: &str,
) -> Result<(), Refusal> {
    let (Some(resource_type), Some(id)) = (&fhir_request.resource_type, &fhir_request.id) else {
        return Err(Refusal::BadRequest(
            "the target of this write cannot be checked".into(),
        ));
    };
    let path = format!("{resource_type}/{id}");
    let target = Target {
        path: &path,
        query: None,
    };
    let at = Fetch {
        gateway,
        upstream: &route.upstream,
        client_headers,
        peer,
        request_id,
    };
    match fetch_for_check(&at, target).await? {
        None => Ok(()),
        Some(bytes) => check_body(check, bytes).map(|_| ()),
    }
}

/// Before a conditional update, patch or delete: search its narrowed criteria and check every
/// match, so a server that ignored the narrowing cannot be made to write another patient's
/// data. More matches than one page are refused.
async fn precheck_matches(
    at: &Fetch<'_>,
    target: Target<'_>,
    check: &ResponseCheck,
) -> Result<(), Refusal> {
    let Some(bytes) = fetch_for_check(at, target).await? else {
        return Ok(());
    };
    match policy_verify::check_matches(check, &bytes) {
        Ok(_) => Ok(()),
        Err(VerifyError::NotCovered { .. }) => Err(Refusal::ResponseWithheld),
        Err(VerifyError::TooManyMatches) => Err(Refusal::TooManyMatches),
        Err(error) => Err(Refusal::UpstreamUnverifiable(error.to_string())),
    }
}

/// Bodies the gateway need not check but must rewrite are read whole up to this size when
/// their length is known, so they go out in one piece with a `Content-Length`; longer ones,
/// and those of unknown length, are rewritten as they stream.
const WHOLE_REWRITE_MAX: u64 = 256 * 1024;

/// An upstream response on its way to the client, with the upstream's base replaced.
async fn pass_through(
    gateway: &Gateway,
    upstream: &Upstream,
    response: Response<Incoming>,
    rewrite: Option<&Arc<Rewrite>>,
    head_only: bool,
) -> Result<Response<Body>, Refusal> {
    let (mut head, incoming) = response.into_parts();
    super::headers::remove_hop_by_hop(&mut head.headers);
    let Some(rewrite) = rewrite else {
        return Ok(Response::from_parts(head, body::stream(incoming)));
    };
    rewrite_location(&mut head.headers, rewrite);
    let encoded = head
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let textual = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .is_some_and(is_textual);
    if !textual || head_only {
        return Ok(Response::from_parts(head, body::stream(incoming)));
    }
    if encoded {
        // Asked for identity, the upstream compressed anyway. The body goes on as encoded
        // unless, decoded (within the checked size limit), it names the upstream's base: then
        // it goes on decoded with the base replaced, compressed again on the way out for
        // clients that accept it.
        let limit = gateway.config.limits.max_checked_response;
        let raw = upstream.read_raw(incoming, limit).await?;
        let decoded = upstream.decode(
            head.headers.get(header::CONTENT_ENCODING),
            raw.clone(),
            limit,
        )?;
        let bytes = match rewrite.apply(&decoded) {
            Some(rewritten) => {
                head.headers.remove(header::CONTENT_ENCODING);
                Bytes::from(rewritten)
            }
            None => raw,
        };
        return Ok(whole(head, bytes));
    }
    let length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = length.filter(|&length| length <= WHOLE_REWRITE_MAX) {
        let bytes = upstream.read_raw(incoming, length as usize).await?;
        let bytes = rewrite.apply(&bytes).map_or(bytes, Bytes::from);
        return Ok(whole(head, bytes));
    }
    head.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        head,
        rewrite.clone().stream(body::stream(incoming)),
    ))
}

/// A response with its whole body, and the `Content-Length` of that body.
fn whole(mut head: http::response::Parts, bytes: Bytes) -> Response<Body> {
    head.headers
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
    Response::from_parts(head, body::full(bytes))
}

/// `Location` and `Content-Location` pointing at the upstream's base point at the public one.
/// Every response header naming the upstream's base (`Location`, `Content-Location`, `Link`,
/// any other) names the public one instead.
fn rewrite_location(headers: &mut http::HeaderMap, rewrite: &Rewrite) {
    for value in headers.values_mut() {
        if let Some(replaced) = rewrite.header_value(value) {
            *value = replaced;
        }
    }
}

/// Media types whose bodies may carry the upstream's URLs as text.
fn is_textual(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || media.ends_with("json")
        || media.ends_with("xml")
        || media.ends_with("+json")
        || media.ends_with("+xml")
        || media == "application/x-ndjson"
}
