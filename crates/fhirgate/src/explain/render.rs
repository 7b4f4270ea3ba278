//! The explanation as text, for people.

use std::fmt::Write as _;

use super::report::{Answer, Classified, Param, Report};

/// Renders the report for a terminal.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    token(&mut out, report);
    grant(&mut out, report);
    request(&mut out, report);
    decision(&mut out, report);
    out
}

fn line(out: &mut String, indent: usize, text: impl AsRef<str>) {
    let _ = writeln!(out, "{:indent$}{}", "", text.as_ref());
}

fn field(out: &mut String, indent: usize, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        line(out, indent, format!("{name}: {value}"));
    }
}

fn pairs(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| format!("{}={}", p.name, p.value))
        .collect::<Vec<_>>()
        .join(", ")
}

fn token(out: &mut String, report: &Report) {
    let token = &report.token;
    line(out, 0, format!("Configuration: {}", report.config));
    line(out, 0, "");
    let title = match token.source {
        "token" => "Token",
        _ => "Claims",
    };
    line(out, 0, title);
    line(out, 2, &token.note);
    field(out, 2, "algorithm", token.algorithm.as_deref());
    let issuer = match (&token.issuer, token.issuer_configured) {
        (Some(issuer), true) => format!("{issuer} (a configured issuer)"),
        (Some(issuer), false) => format!("{issuer} (NOT a configured issuer)"),
        (None, _) => "(none)".to_owned(),
    };
    line(out, 2, format!("issuer: {issuer}"));
    if !token.audience.is_empty() {
        let whose = if token.route_audience {
            "the route's"
        } else {
            "the issuer's"
        };
        let verdict = match &token.expected_audience {
            Some(expected) if token.audience.contains(expected) => {
                format!(" (matches {whose} audience)")
            }
            Some(_) => format!(" (does NOT match {whose} audience)"),
            None => String::new(),
        };
        line(
            out,
            2,
            format!("audience: {}{verdict}", token.audience.join(", ")),
        );
    }
    if let Some(expected) = token
        .expected_audience
        .as_ref()
        .filter(|expected| !token.audience.contains(expected))
    {
        line(out, 2, format!("expected audience: {expected}"));
    }
    field(out, 2, "issued at", token.issued_at.as_deref());
    field(out, 2, "not before", token.not_before.as_deref());
    field(out, 2, "expires", token.expires.as_deref());
    if token.problems.is_empty() {
        let none = if token.source == "token" {
            "problems: none found (the signature was not checked)"
        } else {
            "problems: none in these claims"
        };
        line(out, 2, none);
    } else {
        line(
            out,
            2,
            "problems (the gateway refuses the token before any decision):",
        );
        for problem in &token.problems {
            line(
                out,
                4,
                format!("- {}: {}", problem.message, answer_summary(&problem.answer)),
            );
        }
    }
    let identity = &token.identity;
    line(out, 2, "identity, as the gateway maps the claims:");
    let unset = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    line(out, 4, format!("subject: {}", unset(&identity.subject)));
    line(out, 4, format!("client: {}", unset(&identity.client_id)));
    line(out, 4, format!("fhirUser: {}", unset(&identity.fhir_user)));
    let patient = match (&identity.patient, &identity.patient_claim_unusable) {
        (Some(id), _) => id.clone(),
        (None, Some(claim)) => format!("- (the patient claim {claim} is not a usable id)"),
        (None, None) => "-".into(),
    };
    line(out, 4, format!("patient: {patient}"));
    field(out, 4, "encounter", identity.encounter.as_deref());
    field(out, 4, "fhirContext", identity.fhir_context.as_deref());
    field(out, 4, "token id", identity.token_id.as_deref());
    line(out, 4, format!("scopes: {}", unset(&identity.scope)));
    if !identity.purposes_of_use.is_empty() {
        line(
            out,
            4,
            format!("purposes of use: {}", identity.purposes_of_use.join(" ")),
        );
    }
}

fn grant(out: &mut String, report: &Report) {
    let grant = &report.grant;
    line(out, 0, "");
    line(out, 0, "Grant");
    let patient = grant
        .patient
        .as_ref()
        .map_or_else(|| "none".to_owned(), |p| format!("Patient/{p}"));
    line(out, 2, format!("patient context: {patient}"));
    if grant.resource_scopes.is_empty() {
        line(out, 2, "resource scopes: none (no data access)");
    } else {
        line(out, 2, "resource scopes:");
    }
    for scope in &grant.resource_scopes {
        line(out, 4, &scope.scope);
        let mut text = format!(
            "context {}, type {}, permissions {} ({})",
            scope.context,
            scope.resource_type,
            scope.permissions,
            scope.permission_names.join(", ")
        );
        if !scope.parameters.is_empty() {
            let _ = write!(
                text,
                ", only resources matching {}",
                pairs(&scope.parameters)
            );
        }
        line(out, 6, text);
        if let Some(inactive) = &scope.inactive {
            line(out, 6, inactive);
        }
    }
    if !grant.ignored.is_empty() {
        line(out, 2, "ignored for data access:");
        for scope in &grant.ignored {
            line(out, 4, format!("{} ({})", scope.scope, scope.kind));
        }
    }
    if !grant.unsupported.is_empty() {
        line(out, 2, "not enforceable by fhirgate, grant nothing:");
        for scope in &grant.unsupported {
            line(out, 4, scope);
        }
    }
    if !grant.malformed.is_empty() {
        line(out, 2, "malformed, grant nothing:");
        for scope in &grant.malformed {
            line(out, 4, scope);
        }
    }
}

fn request(out: &mut String, report: &Report) {
    let request = &report.request;
    line(out, 0, "");
    line(
        out,
        0,
        format!("Request: {} {}", request.method, request.url),
    );
    for header in &request.headers {
        let assumed = if header.assumed {
            " (assumed; set it with --header)"
        } else {
            ""
        };
        line(
            out,
            2,
            format!("{}: {}{assumed}", header.name, header.value),
        );
    }
    if let Some(bytes) = request.body_bytes {
        line(out, 2, format!("body: {bytes} bytes"));
    }
    field(out, 2, "note", request.body_ignored.as_deref());
    if let Some(relative) = &request.relative_path {
        let shown = if relative.is_empty() {
            "(the base)"
        } else {
            relative
        };
        line(out, 2, format!("path under the public base: {shown}"));
    }
    match &request.classified {
        Some(classified) => describe(out, 2, classified),
        None if report.decision.step == "public" => line(
            out,
            2,
            "public: forwarded without a token, classification or decision",
        ),
        None => line(out, 2, "not classified: refused before classification"),
    }
}

fn describe(out: &mut String, indent: usize, c: &Classified) {
    line(out, indent, format!("interaction: {}", c.interaction));
    field(out, indent, "resource type", c.resource_type.as_deref());
    field(out, indent, "id", c.id.as_deref());
    field(out, indent, "version", c.version_id.as_deref());
    if let Some(compartment) = &c.compartment {
        line(
            out,
            indent,
            format!(
                "compartment: {}/{}",
                compartment.resource_type, compartment.id
            ),
        );
    }
    field(
        out,
        indent,
        "operation",
        c.operation.as_ref().map(|o| format!("${o}")).as_deref(),
    );
    if !c.parameters.is_empty() {
        line(out, indent, format!("parameters: {}", pairs(&c.parameters)));
    }
    if c.conditional {
        line(out, indent, "conditional: yes");
    }
    if !c.if_none_exist.is_empty() {
        line(
            out,
            indent,
            format!("If-None-Exist: {}", pairs(&c.if_none_exist)),
        );
    }
    field(
        out,
        indent,
        "body resource",
        c.body_resource_type.as_deref(),
    );
    field(out, indent, "patch", c.patch.as_deref());
    if !c.entries.is_empty() {
        line(out, indent, format!("entries ({}):", c.entries.len()));
        for (index, entry) in c.entries.iter().enumerate() {
            line(
                out,
                indent + 2,
                format!("[{index}] {}", entry_summary(entry)),
            );
        }
    }
}

/// One Bundle entry on one line.
fn entry_summary(c: &Classified) -> String {
    let mut text = c.interaction.to_owned();
    match (&c.resource_type, &c.id) {
        (Some(ty), Some(id)) => {
            let _ = write!(text, " {ty}/{id}");
        }
        (Some(ty), None) => {
            let _ = write!(text, " {ty}");
        }
        _ => {}
    }
    if let Some(version) = &c.version_id {
        let _ = write!(text, "/_history/{version}");
    }
    if let Some(compartment) = &c.compartment {
        let _ = write!(text, " in {}/{}", compartment.resource_type, compartment.id);
    }
    if let Some(operation) = &c.operation {
        let _ = write!(text, " ${operation}");
    }
    if !c.parameters.is_empty() {
        let _ = write!(text, " ?{}", pairs(&c.parameters));
    }
    if c.conditional {
        text.push_str(" (conditional)");
    }
    if !c.if_none_exist.is_empty() {
        let _ = write!(text, " If-None-Exist: {}", pairs(&c.if_none_exist));
    }
    if let Some(ty) = &c.body_resource_type {
        let _ = write!(text, " body {ty}");
    }
    if !c.entries.is_empty() {
        let _ = write!(text, " ({} entries)", c.entries.len());
    }
    text
}

fn answer_summary(answer: &Answer) -> String {
    let mut text = format!(
        "{} {}, issue code {}",
        answer.status, answer.status_text, answer.issue_code
    );
    if let Some(error) = &answer.error {
        let _ = write!(text, ", error=\"{error}\"");
    }
    text
}

fn decision(out: &mut String, report: &Report) {
    let decision = &report.decision;
    line(out, 0, "");
    let verdict = if decision.outcome == "allow" {
        "ALLOW"
    } else {
        "DENY"
    };
    let mut head = format!("Decision: {verdict}");
    if let Some(rule) = &decision.rule {
        let _ = write!(head, " by rule {rule}");
    } else {
        let _ = write!(head, " at the {} step", decision.step);
    }
    line(out, 0, head);
    field(out, 2, "granted by", decision.scope.as_deref());
    if let Some(break_glass) = &decision.break_glass {
        let text = if break_glass.applied {
            format!(
                "applied: purpose {} broke the glass; decided under the token's scopes and {}",
                break_glass.codes.join(" "),
                break_glass.emergency_scopes.join(" ")
            )
        } else {
            let why = break_glass.not_applied.as_deref().unwrap_or_default();
            format!("not applied: {why}")
        };
        line(out, 2, format!("break-the-glass: {text}"));
    }
    if let Some(answer) = &decision.answer {
        line(
            out,
            2,
            format!("the gateway answers: {}", answer_summary(answer)),
        );
        field(
            out,
            2,
            "WWW-Authenticate",
            answer.www_authenticate.as_deref(),
        );
        line(out, 2, format!("message: {}", answer.message));
        for expression in &answer.expression {
            line(out, 2, format!("expression: {expression}"));
        }
        line(out, 2, format!("audit reason: {}", answer.audit_reason));
    }
    if let Some(obligations) = &decision.obligations {
        if obligations.none {
            line(out, 2, "obligations: none, forwarded unchanged");
        } else {
            line(out, 2, "obligations:");
        }
        if !obligations.added_parameters.is_empty() {
            line(
                out,
                4,
                format!(
                    "added to the query: {}",
                    pairs(&obligations.added_parameters)
                ),
            );
        }
        if !obligations.added_if_none_exist.is_empty() {
            line(
                out,
                4,
                format!(
                    "added to If-None-Exist: {}",
                    pairs(&obligations.added_if_none_exist)
                ),
            );
        }
        if let Some(precheck) = &obligations.precheck {
            line(
                out,
                4,
                format!("pre-check ({}): GET {}", precheck.kind, precheck.fetch_url),
            );
            line(out, 6, &precheck.checks);
            for answer in &precheck.fails_with {
                line(out, 6, format!("on failure: {}", answer_summary(answer)));
            }
        }
        if let Some(check) = &obligations.response_check {
            line(out, 4, format!("response check ({}):", check.expect));
            line(out, 6, &check.checks);
            if let Some(answer) = &check.fails_with {
                line(out, 6, format!("on failure: {}", answer_summary(answer)));
            }
        }
        for entry in &obligations.bundle_entries {
            line(out, 4, format!("{}:", entry.entry));
            if !entry.added_parameters.is_empty() {
                line(
                    out,
                    6,
                    format!("added to its URL: {}", pairs(&entry.added_parameters)),
                );
            }
            if let Some(check) = &entry.response_check {
                line(out, 6, format!("response check ({}):", check.expect));
                line(out, 8, &check.checks);
            }
        }
        for entry in &obligations.refused_entries {
            line(
                out,
                4,
                format!(
                    "{}: not forwarded; answered in the batch-response with {}",
                    entry.entry,
                    answer_summary(&entry.answer)
                ),
            );
            line(out, 6, format!("message: {}", entry.answer.message));
        }
        if obligations.withheld_as_not_found {
            line(
                out,
                4,
                "a resource that fails its check is answered as not found",
            );
        }
        if obligations.bind_export_to_client {
            line(
                out,
                4,
                "export status and file URLs are bound to the client that started the export",
            );
        }
        line(
            out,
            2,
            format!(
                "upstream request: {} {}",
                obligations.upstream_method, obligations.upstream_url
            ),
        );
        field(
            out,
            2,
            "upstream If-None-Exist",
            obligations.upstream_if_none_exist.as_deref(),
        );
    }
    if !report.token.problems.is_empty() {
        line(
            out,
            2,
            "note: this is the decision for these claims; the gateway refuses the token itself \
             first (see problems above)",
        );
    }
}
