//! Content negotiation: which FHIR format a client wants, by `_format` first and `Accept`
//! second (FHIR R4 http page, "Content Types and encodings"; RFC 9110 section 12.5.1).
//!
//! fhirgate writes FHIR R4 JSON and FHIR R4 XML and nothing else. A client that insists on
//! anything else (Turtle, HTML, another FHIR version) gets [`NotAcceptable`]; the rules are
//! in `docs/FORMATS.md`.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::ACCEPT;

/// The query parameter that overrides `Accept`.
const FORMAT_PARAM: &str = "_format";

/// The `fhirVersion` values of FHIR R4 (the mime-type parameter names major.minor; the full
/// version is tolerated).
const R4_VERSIONS: [&str; 2] = ["4.0", "4.0.1"];

/// How much of a client's value an error repeats.
const ECHO_LIMIT: usize = 64;

/// A format fhirgate writes: FHIR R4 JSON or FHIR R4 XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeFormat {
    /// `application/fhir+json`
    Json,
    /// `application/fhir+xml`
    Xml,
}

/// Why no format fhirgate writes satisfies a request: answered 406 `not-supported`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAcceptable {
    /// `_format` names a format other than FHIR JSON or XML (the value, shortened).
    #[error("_format={0} is not a format the gateway writes")]
    Format(String),
    /// No media range of `Accept` with a quality above zero is FHIR JSON or XML.
    #[error("the Accept header lists no format the gateway writes")]
    Accept,
    /// The only acceptable answers are of another FHIR version (the value, shortened).
    #[error("fhirVersion={0} is not offered: the gateway speaks FHIR R4 (4.0)")]
    FhirVersion(String),
}

impl OutcomeFormat {
    /// The `Content-Type` of a body in this format. Always the R4 FHIR mime type, also when
    /// the client asked with a generic or a pre-R4 one.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/fhir+json; charset=utf-8",
            Self::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// The format a request asks for: `_format` in `query` when it has a value, else the
    /// `Accept` headers, else JSON.
    pub fn negotiate(query: Option<&str>, headers: &HeaderMap) -> Result<Self, NotAcceptable> {
        let values = query.map(format_params).unwrap_or_default();
        if let Some(first) = values.first() {
            // Servers differ in which of several `_format`s they obey: every one must name
            // the same format, or the request is not one the gateway can answer knowingly.
            let wanted = from_format_param(first)?;
            for other in &values[1..] {
                if from_format_param(other)? != wanted {
                    return Err(NotAcceptable::Format(shorten(&values.join(","))));
                }
            }
            return Ok(wanted);
        }
        let accept: Vec<&str> = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        from_accept(&accept.join(","))
    }
}

/// The non-empty `_format` values of a query, percent-decoded (the name too).
fn format_params(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            if decode(name) != FORMAT_PARAM {
                return None;
            }
            let value = decode(value);
            let value = value.trim();
            (!value.is_empty()).then(|| value.to_owned())
        })
        .collect()
}

fn decode(text: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy()
}

/// A query without its `_format` parameters, for an upstream that must answer JSON.
pub fn without_format_param(query: &str) -> Cow<'_, str> {
    let is_format =
        |pair: &&str| decode(pair.split_once('=').map_or(pair, |(n, _)| n)) == FORMAT_PARAM;
    if !query.split('&').any(|pair| is_format(&pair)) {
        return Cow::Borrowed(query);
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_format(pair)).collect();
    Cow::Owned(kept.join("&"))
}

/// What a media type (or a `_format` shorthand) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// One format, by one of its mime types.
    Exactly(OutcomeFormat),
    /// A subtype wildcard covering both formats (`application/*`, `text/*`).
    Subtypes,
    /// `*/*`.
    Anything,
    /// Something fhirgate does not write.
    Other,
}

/// What `media` (lowercased, parameters removed) names. The generic and pre-R4 mime types
/// count as the format they carry.
fn names(media: &str) -> Names {
    match media {
        "application/fhir+json" | "application/json+fhir" | "application/json" | "text/json" => {
            Names::Exactly(OutcomeFormat::Json)
        }
        "application/fhir+xml" | "application/xml+fhir" | "application/xml" | "text/xml" => {
            Names::Exactly(OutcomeFormat::Xml)
        }
        "application/*" | "text/*" => Names::Subtypes,
        "*/*" => Names::Anything,
        _ => Names::Other,
    }
}

/// One media range: what it names, its quality in thousandths, and its `fhirVersion`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MediaRange {
    names: Names,
    quality: u16,
    fhir_version: Option<String>,
}

impl MediaRange {
    /// Parses `type/subtype; name=value; ...`; `None` when the quality is not a qvalue.
    fn parse(item: &str) -> Option<Self> {
        let mut parts = item.split(';');
        // A `+` that reached us decoded as a space still means `+`.
        let media = parts.next()?.trim().to_ascii_lowercase().replace(' ', "+");
        let mut range = Self {
            names: names(&media),
            quality: 1000,
            fhir_version: None,
        };
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => range.quality = qvalue(value)?,
                "fhirversion" => range.fhir_version = Some(value.to_owned()),
                _ => {}
            }
        }
        Some(range)
    }

    /// Does it ask for a FHIR version fhirgate does not speak?
    fn other_version(&self) -> Option<&str> {
        self.fhir_version
            .as_deref()
            .filter(|v| !R4_VERSIONS.contains(v))
    }
}

/// An RFC 9110 qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `_format`: a FHIR shorthand or a mime type, possibly with parameters.
fn from_format_param(value: &str) -> Result<OutcomeFormat, NotAcceptable> {
    let echo = || shorten(value);
    let range = MediaRange::parse(value).ok_or_else(|| NotAcceptable::Format(echo()))?;
    if let Some(version) = range.other_version() {
        return Err(NotAcceptable::FhirVersion(shorten(version)));
    }
    let media = value.split(';').next().unwrap_or("").trim();
    match (media.to_ascii_lowercase().as_str(), range.names) {
        ("json", _) => Ok(OutcomeFormat::Json),
        ("xml", _) => Ok(OutcomeFormat::Xml),
        (_, Names::Exactly(format)) => Ok(format),
        _ => Err(NotAcceptable::Format(echo())),
    }
}

/// `Accept`: the format with the highest quality, each format weighed by the most specific
/// ranges that cover it; ties go to the range the client listed first, then to JSON. No
/// readable range at all (none of the form `type/subtype`) means JSON.
fn from_accept(accept: &str) -> Result<OutcomeFormat, NotAcceptable> {
    let ranges: Vec<MediaRange> = accept
        .split(',')
        .filter(|item| {
            item.split(';')
                .next()
                .is_some_and(|media| media.contains('/'))
        })
        .filter_map(MediaRange::parse)
        .collect();
    if ranges.is_empty() {
        return Ok(OutcomeFormat::Json);
    }
    let best = [OutcomeFormat::Json, OutcomeFormat::Xml]
        .into_iter()
        .filter_map(|format| weigh(&ranges, format).map(|(q, at)| (q, at, format)))
        .filter(|(quality, _, _)| *quality > 0)
        .min_by_key(|(quality, at, format)| {
            (u16::MAX - quality, *at, *format == OutcomeFormat::Xml)
        });
    if let Some((_, _, format)) = best {
        return Ok(format);
    }
    match ranges
        .iter()
        .find(|r| r.quality > 0 && r.names != Names::Other && r.other_version().is_some())
    {
        Some(range) => Err(NotAcceptable::FhirVersion(shorten(
            range.other_version().unwrap_or_default(),
        ))),
        None => Err(NotAcceptable::Accept),
    }
}

/// The quality the client gives `format` and the position of the range that gives it: from
/// the ranges naming it exactly if any, else from subtype wildcards, else from `*/*`. Ranges
/// of another FHIR version do not count.
fn weigh(ranges: &[MediaRange], format: OutcomeFormat) -> Option<(u16, usize)> {
    let tiers = [Names::Exactly(format), Names::Subtypes, Names::Anything];
    tiers.into_iter().find_map(|tier| {
        ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.names == tier && r.other_version().is_none())
            .map(|(at, r)| (r.quality, at))
            .min_by_key(|(quality, at)| (u16::MAX - quality, *at))
    })
}

/// A client's value cut to [`ECHO_LIMIT`] characters.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(ECHO_LIMIT) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests;
