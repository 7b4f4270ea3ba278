//! Which records a query wants, and the time bounds it is given.

use std::time::SystemTime;

use super::{QueryError, Summary};
use crate::audit::AuditDecision;

/// Which records a query wants. Every given criterion must hold; an empty filter matches
/// every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The patient in the token's context (`patient`) or the one the request names
    /// (`target_patient`).
    pub patient: Option<String>,
    /// The client (`client_id`).
    pub client: Option<String>,
    /// The user, as the token's `subject` or its `fhir_user`.
    pub user: Option<String>,
    pub decision: Option<AuditDecision>,
    /// The route (`route`): patients, clients and users of different FHIR APIs behind one
    /// gateway may share ids.
    pub route: Option<String>,
    /// Records made at or after this time.
    pub since: Option<SystemTime>,
    /// Records made before this time.
    pub until: Option<SystemTime>,
    /// Only records of requests allowed under break-the-glass.
    pub break_glass: bool,
}

impl Filter {
    /// Whether the record's fields match (the time is checked by [`Filter::covers`]).
    pub fn matches(&self, record: &Summary<'_>) -> bool {
        let is = |want: &Option<String>, field: &Option<super::Text<'_>>| {
            field
                .as_ref()
                .is_some_and(|f| Some(f.as_str()) == want.as_deref())
        };
        (self.patient.is_none()
            || is(&self.patient, &record.patient)
            || is(&self.patient, &record.target_patient))
            && (self.client.is_none() || is(&self.client, &record.client_id))
            && (self.user.is_none()
                || is(&self.user, &record.subject)
                || is(&self.user, &record.fhir_user))
            && self.decision.is_none_or(|d| d == record.decision)
            && (self.route.is_none() || is(&self.route, &record.route))
            && (!self.break_glass || record.break_glass)
    }

    /// Whether `time` is in the range.
    pub fn covers(&self, time: SystemTime) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }

    /// What a matching record's line must hold: the values as JSON strings, most selective
    /// first, then the member `"break_glass":true` when only break-the-glass records are
    /// wanted (records are written compact).
    pub(super) fn needles(&self) -> Vec<String> {
        let decision = self.decision.map(|d| d.as_str().to_owned());
        let mut needles: Vec<String> = [
            &self.patient,
            &self.user,
            &self.client,
            &self.route,
            &decision,
        ]
        .into_iter()
        .flatten()
        .map(|value| serde_json::to_string(value).expect("strings serialise"))
        .collect();
        if self.break_glass {
            needles.push(r#""break_glass":true"#.to_owned());
        }
        needles
    }

    /// Fails when both bounds are given and no time is in the range.
    pub fn check_range(&self) -> Result<(), QueryError> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since >= until => Err(QueryError::EmptyRange {
                since: crate::audit::rfc3339(since),
                until: crate::audit::rfc3339(until),
            }),
            _ => Ok(()),
        }
    }
}

/// A `--since` or `--until` value: a duration back from `now` (`24h`, `90m`, `7days`), an
/// RFC 3339 UTC time (`2026-12-04T03:45:00Z`, fractions allowed), or a UTC date
/// (`2026-12-04`, its midnight).
pub fn parse_time(value: &str, now: SystemTime) -> Result<SystemTime, QueryError> {
    let invalid = || QueryError::Time {
        value: value.to_owned(),
    };
    let text = value.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        return now.checked_sub(ago).ok_or_else(invalid);
    }
    let is_date = text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
    let time = if is_date {
        humantime::parse_rfc3339(&format!("{text}T00:00:00Z"))
    } else {
        humantime::parse_rfc3339(text)
    };
    time.map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_are_durations_back_from_now_or_utc_times_or_dates() {
        let now = humantime::parse_rfc3339("2026-12-04T12:00:00Z").unwrap();
        let at = |s| humantime::parse_rfc3339(s).unwrap();
        assert_eq!(parse_time("24h", now).unwrap(), at("2026-12-03T12:00:00Z"));
        assert_eq!(
            parse_time("90m", now).unwrap(),
            now - Duration::from_secs(5400)
        );
        assert_eq!(
            parse_time("2026-12-01T03:45:12.345Z", now).unwrap(),
            at("2026-12-01T03:45:12.345Z")
        );
        assert_eq!(
            parse_time("2026-12-01", now).unwrap(),
            at("2026-12-01T00:00:00Z")
        );
        for bad in ["", "yesterday", "2026-12-01T03:45:12+01:00", "2026-13-01"] {
            assert!(
                matches!(parse_time(bad, now), Err(QueryError::Time { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn needles_are_the_values_as_json_strings_most_selective_first() {
        let filter = Filter {
            patient: Some("pat-1".into()),
            client: Some("app \"x\"".into()),
            user: Some("Practitioner/p1".into()),
            decision: Some(AuditDecision::Deny),
            ..Filter::default()
        };
        assert_eq!(
            filter.needles(),
            [
                "\"pat-1\"",
                "\"Practitioner/p1\"",
                "\"app \\\"x\\\"\"",
                "\"deny\""
            ]
        );
        assert!(Filter::default().needles().is_empty());
        let emergencies = Filter {
            break_glass: true,
            ..Filter::default()
        };
        assert_eq!(emergencies.needles(), [r#""break_glass":true"#]);
    }

    #[test]
    fn break_glass_wants_records_allowed_under_it() {
        let line = |extra: &str| {
            format!(
                r#"{{"record_id":"r1","time":"2026-12-04T03:45:12.345Z","decision":"allow"{extra}}}"#
            )
        };
        let broken = line(r#","reason":"break_glass","break_glass":true"#);
        let ordinary = line(r#","reason":"allowed""#);
        let broken: Summary<'_> = serde_json::from_str(&broken).unwrap();
        let ordinary: Summary<'_> = serde_json::from_str(&ordinary).unwrap();
        let emergencies = Filter {
            break_glass: true,
            ..Filter::default()
        };
        assert!(emergencies.matches(&broken));
        assert!(!emergencies.matches(&ordinary));
        assert!(Filter::default().matches(&ordinary));
    }

    #[test]
    fn the_range_is_half_open() {
        let at = |s| Some(humantime::parse_rfc3339(s).unwrap());
        let filter = Filter {
            since: at("2026-12-04T00:00:00Z"),
            until: at("2026-12-05T00:00:00Z"),
            ..Filter::default()
        };
        assert!(filter.covers(at("2026-12-04T00:00:00Z").unwrap()));
        assert!(!filter.covers(at("2026-12-05T00:00:00Z").unwrap()));
        assert!(filter.check_range().is_ok());
        let empty = Filter {
            until: filter.since,
            ..filter
        };
        assert!(matches!(
            empty.check_range(),
            Err(QueryError::EmptyRange { .. })
        ));
    }
}
