use http::HeaderValue;

use super::*;
use OutcomeFormat::{Json, Xml};

fn accept(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(ACCEPT, HeaderValue::from_str(value).unwrap());
    }
    headers
}

fn by_accept(value: &str) -> Result<OutcomeFormat, NotAcceptable> {
    OutcomeFormat::negotiate(None, &accept(&[value]))
}

fn by_format(query: &str) -> Result<OutcomeFormat, NotAcceptable> {
    OutcomeFormat::negotiate(Some(query), &HeaderMap::new())
}

#[test]
fn format_parameter_values() {
    let cases = [
        ("_format=json", Json),
        ("_format=xml", Xml),
        ("_format=JSON", Json),
        ("_format=application/fhir%2Bjson", Json),
        ("_format=application%2Ffhir%2Bxml", Xml),
        ("_format=application/fhir+json", Json),
        ("_format=application/fhir json", Json),
        ("_format=application/json", Json),
        ("_format=application/xml", Xml),
        ("_format=text/xml", Xml),
        ("_format=application/json%2Bfhir", Json),
        ("_format=application/xml%2Bfhir", Xml),
        ("_format=application/fhir%2Bxml;%20fhirVersion=4.0", Xml),
        (
            "_format=application/fhir%2Bjson%3B%20fhirVersion%3D4.0.1",
            Json,
        ),
        ("_format=json;charset=utf-8", Json),
        ("%5Fformat=xml", Xml),
        ("a=b&_format=xml&_format=application/fhir%2Bxml", Xml),
        ("_format=&_format=xml", Xml),
    ];
    for (query, want) in cases {
        assert_eq!(by_format(query), Ok(want), "{query}");
    }
}

#[test]
fn several_format_parameters_must_agree() {
    // Servers differ in which one they obey: the gateway answers only when it does not matter.
    for query in ["_format=xml&_format=json", "_format=json&_format=html"] {
        assert!(
            matches!(by_format(query), Err(NotAcceptable::Format(_))),
            "{query}"
        );
    }
}

#[test]
fn format_parameter_overrides_accept() {
    let xml = accept(&["application/fhir+xml"]);
    assert_eq!(
        OutcomeFormat::negotiate(Some("_format=json"), &xml),
        Ok(Json)
    );
    let html = accept(&["text/html"]);
    assert_eq!(
        OutcomeFormat::negotiate(Some("_format=xml"), &html),
        Ok(Xml)
    );
    let json = accept(&["application/fhir+json"]);
    assert_eq!(
        OutcomeFormat::negotiate(Some("_format=html"), &json),
        Err(NotAcceptable::Format("html".into()))
    );
    // An empty `_format` is no `_format`.
    assert_eq!(OutcomeFormat::negotiate(Some("_format="), &xml), Ok(Xml));
}

#[test]
fn formats_the_gateway_does_not_write() {
    for (query, echoed) in [
        ("_format=html", "html"),
        ("_format=text/html", "text/html"),
        ("_format=ttl", "ttl"),
        ("_format=text/turtle", "text/turtle"),
        (
            "_format=application/fhir%2Bturtle",
            "application/fhir+turtle",
        ),
        ("_format=*/*", "*/*"),
        ("_format=json;q=2", "json;q=2"),
    ] {
        assert_eq!(
            by_format(query),
            Err(NotAcceptable::Format(echoed.into())),
            "{query}"
        );
    }
    assert_eq!(
        by_format("_format=json;fhirVersion=3.0"),
        Err(NotAcceptable::FhirVersion("3.0".into()))
    );
    let long = format!("_format={}", "x".repeat(200));
    let Err(NotAcceptable::Format(echoed)) = by_format(&long) else {
        panic!("a long _format is not acceptable");
    };
    assert_eq!(echoed.len(), ECHO_LIMIT + 3);
}

#[test]
fn accept_without_preference_means_json() {
    assert_eq!(OutcomeFormat::negotiate(None, &HeaderMap::new()), Ok(Json));
    for value in ["", "*/*", "application/*", "text/*", "garbage", "*/*;q=0.1"] {
        assert_eq!(by_accept(value), Ok(Json), "{value:?}");
    }
}

#[test]
fn accept_names_formats_by_every_mime_type() {
    for (value, want) in [
        ("application/fhir+json", Json),
        ("application/fhir+xml", Xml),
        ("application/json", Json),
        ("text/json", Json),
        ("application/xml", Xml),
        ("text/xml", Xml),
        ("application/json+fhir", Json),
        ("application/xml+fhir", Xml),
        ("Application/FHIR+XML", Xml),
        ("application/fhir+xml; fhirVersion=4.0", Xml),
        ("application/fhir+xml;fhirVersion=4.0.1;charset=utf-8", Xml),
        ("application/fhir+xml; fhirversion=\"4.0\"", Xml),
    ] {
        assert_eq!(by_accept(value), Ok(want), "{value}");
    }
}

#[test]
fn accept_quality_values() {
    for (value, want) in [
        ("application/fhir+xml;q=0.5, application/fhir+json", Json),
        ("application/fhir+json;q=0.5, application/fhir+xml", Xml),
        ("application/fhir+xml, application/fhir+json", Xml),
        ("application/fhir+json, application/fhir+xml", Json),
        (
            "application/fhir+xml;q=0.9, application/fhir+json;q=0.9",
            Xml,
        ),
        ("application/fhir+xml;Q=1.000, */*", Xml),
        ("*/*, application/fhir+xml", Json),
        ("*/*;q=0.1, application/fhir+xml", Xml),
        (
            "text/html, application/xhtml+xml, application/xml;q=0.9, */*;q=0.8",
            Xml,
        ),
        ("text/html, */*;q=0.8", Json),
        // A more specific range overrides a wildcard for the formats it names.
        ("application/fhir+json;q=0, */*", Xml),
        ("application/fhir+xml;q=0, */*", Json),
        ("application/json;q=0, application/fhir+json", Json),
        // A range whose quality cannot be read counts for nothing.
        (
            "application/fhir+xml;q=high, application/fhir+json;q=0.1",
            Json,
        ),
        (
            "application/fhir+xml;q=1.5, application/fhir+json;q=0.1",
            Json,
        ),
    ] {
        assert_eq!(by_accept(value), Ok(want), "{value}");
    }
}

#[test]
fn several_accept_headers_are_one_list() {
    let headers = accept(&["text/html", "application/fhir+xml;q=0.5"]);
    assert_eq!(OutcomeFormat::negotiate(None, &headers), Ok(Xml));
}

#[test]
fn accept_that_excludes_every_format_is_not_acceptable() {
    for value in [
        "text/html",
        "application/fhir+turtle",
        "text/turtle, text/html;q=0.9",
        "application/fhir+json;q=0, application/fhir+xml;q=0",
        "application/fhir+xml;q=0",
        "application/json;q=0, application/xml;q=0, text/html",
    ] {
        assert_eq!(by_accept(value), Err(NotAcceptable::Accept), "{value}");
    }
}

#[test]
fn other_fhir_versions_are_not_offered() {
    assert_eq!(
        by_accept("application/fhir+json; fhirVersion=3.0"),
        Err(NotAcceptable::FhirVersion("3.0".into()))
    );
    assert_eq!(
        by_accept("application/fhir+xml; fhirVersion=5.0, text/html"),
        Err(NotAcceptable::FhirVersion("5.0".into()))
    );
    // Another version is a preference like any other: R4 ranges and wildcards still count.
    assert_eq!(
        by_accept("application/fhir+json; fhirVersion=3.0, application/fhir+xml;q=0.5"),
        Ok(Xml)
    );
    assert_eq!(
        by_accept("application/fhir+xml; fhirVersion=3.0, */*;q=0.1"),
        Ok(Json)
    );
}

#[test]
fn qvalues() {
    for (text, want) in [
        ("0", Some(0)),
        ("0.", Some(0)),
        ("0.5", Some(500)),
        ("0.123", Some(123)),
        ("1", Some(1000)),
        ("1.0", Some(1000)),
        ("1.000", Some(1000)),
        ("1.001", None),
        ("0.1234", None),
        ("2", None),
        ("-1", None),
        ("0.x", None),
        ("", None),
    ] {
        assert_eq!(qvalue(text), want, "{text:?}");
    }
}

#[test]
fn format_parameters_are_taken_out_of_a_query() {
    assert_eq!(without_format_param("a=1&_format=xml&b=2"), "a=1&b=2");
    assert_eq!(without_format_param("_format=xml"), "");
    assert_eq!(
        without_format_param("%5Fformat=xml&_format=json&_count=5"),
        "_count=5"
    );
    assert!(matches!(
        without_format_param("_formats=1&x=_format"),
        Cow::Borrowed("_formats=1&x=_format")
    ));
}

#[test]
fn content_types_are_the_r4_mime_types() {
    assert_eq!(Json.content_type(), "application/fhir+json; charset=utf-8");
    assert_eq!(Xml.content_type(), "application/fhir+xml; charset=utf-8");
}
