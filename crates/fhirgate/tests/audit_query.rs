//! `fhirgate audit query` over small trails written into a scratch folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

const DEFAULT: &str = include_str!("../config/default.yaml");

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("fhirgate-audit-query-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `lines` (each followed by a line break) to the file `name`.
    fn file(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.0.join(name);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
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

impl Run {
    /// The record ids of JSON lines output, in order.
    fn ids(&self) -> Vec<String> {
        self.stdout
            .lines()
            .map(|line| {
                let record: Value = serde_json::from_str(line).expect("a JSON line");
                record["record_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }
}

fn run_in(dir: Option<&Path>, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    command.arg("audit").arg("query").args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output().unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `fhirgate audit query ARGS...`
fn query(args: &[&str]) -> Run {
    run_in(None, args)
}

/// `fhirgate audit query --trail TRAIL --format json ARGS...`, which must succeed.
fn json_ids(trail: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--trail", trail, "--format", "json"];
    all.extend_from_slice(args);
    let run = query(&all);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.ids()
}

/// A record as the gateway writes it: a patient app reading its own patient's record,
/// with `changes` merged over it.
fn record(id: &str, time: &str, changes: Value) -> String {
    let mut record = json!({
        "record_id": id,
        "instance": "gw-test",
        "time": time,
        "started": time,
        "request_id": format!("req-{id}"),
        "client_id": "patient-app",
        "issuer": "https://idp.synthetic.test",
        "subject": "sub-1",
        "fhir_user": "Patient/pat-1",
        "patient": "pat-1",
        "token_id": "tok-1",
        "scopes": "launch/patient patient/*.rs",
        "source": "10.0.0.1",
        "method": "GET",
        "path": "/fhir/Patient/pat-1",
        "query": null,
        "interaction": "read",
        "resource_type": "Patient",
        "resource_id": "pat-1",
        "target_patient": "pat-1",
        "decision": "allow",
        "reason": "allowed",
        "rule": "patient-read",
        "status": 200,
        "upstream_status": 200,
        "latency_ms": 3.5,
    });
    for (key, value) in changes.as_object().unwrap() {
        record[key] = value.clone();
    }
    serde_json::to_string(&record).unwrap()
}

/// Four records of several patients, clients, users and decisions, out of time order.
fn mixed_trail(scratch: &Scratch) -> String {
    scratch.file(
        "audit.jsonl",
        &[
            record("r3", "2026-12-04T10:00:00.000Z", json!({})),
            record(
                "r1",
                "2026-12-04T08:00:00.000Z",
                json!({
                    "client_id": "clinic-app", "subject": "sub-9", "fhir_user": "Practitioner/prac-9",
                    "patient": null, "target_patient": "pat-2", "resource_id": "pat-2",
                    "path": "/fhir/Patient/pat-2",
                }),
            ),
            record(
                "r4",
                "2026-12-04T11:00:00.000Z",
                json!({
                    "target_patient": "pat-3", "resource_id": "pat-3", "path": "/fhir/Patient/pat-3",
                    "decision": "deny", "reason": "other_patient", "status": 403,
                    "upstream_status": null, "rule": null,
                }),
            ),
            record(
                "r2",
                "2026-12-04T09:00:00.000Z",
                json!({
                    "client_id": "clinic-app", "subject": "sub-9", "fhir_user": null,
                    "patient": "pat-2", "target_patient": "pat-2", "interaction": "search-type",
                    "resource_type": "Observation", "resource_id": null, "path": "/fhir/Observation",
                    "query": "patient=pat-2&code=1234-5", "decision": "filter", "withheld": 2,
                }),
            ),
        ],
    );
    scratch.path("audit.jsonl")
}

#[test]
fn every_record_comes_out_once_in_time_order() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    assert_eq!(json_ids(&trail, &[]), ["r1", "r2", "r3", "r4"]);
}

#[test]
fn patient_matches_the_patient_in_context_or_the_one_the_request_names() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    assert_eq!(json_ids(&trail, &["--patient", "pat-2"]), ["r1", "r2"]);
    assert_eq!(json_ids(&trail, &["--patient", "pat-3"]), ["r4"]);
    assert_eq!(json_ids(&trail, &["--patient", "pat-1"]), ["r3", "r4"]);
    assert!(json_ids(&trail, &["--patient", "pat-"]).is_empty());
}

#[test]
fn client_user_and_decision_filters_match_exactly() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    assert_eq!(json_ids(&trail, &["--client", "clinic-app"]), ["r1", "r2"]);
    assert!(json_ids(&trail, &["--client", "clinic"]).is_empty());
    assert_eq!(json_ids(&trail, &["--user", "sub-9"]), ["r1", "r2"]);
    assert_eq!(json_ids(&trail, &["--user", "Practitioner/prac-9"]), ["r1"]);
    assert_eq!(json_ids(&trail, &["--user", "Patient/pat-1"]), ["r3", "r4"]);
    assert_eq!(json_ids(&trail, &["--decision", "deny"]), ["r4"]);
    assert_eq!(json_ids(&trail, &["--decision", "filter"]), ["r2"]);
    assert_eq!(json_ids(&trail, &["--decision", "allow"]), ["r1", "r3"]);
    assert_eq!(
        json_ids(
            &trail,
            &[
                "--client",
                "clinic-app",
                "--patient",
                "pat-2",
                "--decision",
                "allow"
            ]
        ),
        ["r1"]
    );
}

#[test]
fn route_tells_apart_the_same_patient_id_on_two_fhir_apis() {
    let scratch = Scratch::new();
    scratch.file(
        "audit.jsonl",
        &[
            record(
                "a1",
                "2026-12-04T08:00:00.000Z",
                json!({"route": "tenant-a"}),
            ),
            record(
                "b1",
                "2026-12-04T09:00:00.000Z",
                json!({"route": "tenant-b", "path": "/b/fhir/Patient/pat-1"}),
            ),
            record("none", "2026-12-04T10:00:00.000Z", json!({"route": null})),
            record("old", "2026-12-04T11:00:00.000Z", json!({})),
        ],
    );
    let trail = scratch.path("audit.jsonl");
    assert_eq!(
        json_ids(&trail, &["--patient", "pat-1"]),
        ["a1", "b1", "none", "old"]
    );
    assert_eq!(
        json_ids(&trail, &["--patient", "pat-1", "--route", "tenant-a"]),
        ["a1"]
    );
    assert_eq!(json_ids(&trail, &["--route", "tenant-b"]), ["b1"]);
    assert!(json_ids(&trail, &["--route", "tenant"]).is_empty());
    let table = query(&["--trail", &trail, "--route", "tenant-b"]);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(
        table.stdout.ends_with("1 matching record\n"),
        "{}",
        table.stdout
    );
}

#[test]
fn break_glass_selects_the_requests_allowed_under_it() {
    let scratch = Scratch::new();
    scratch.file(
        "audit.jsonl",
        &[
            record("r1", "2026-12-04T08:00:00.000Z", json!({})),
            record(
                "r2",
                "2026-12-04T09:00:00.000Z",
                json!({
                    "client_id": "ward-app", "fhir_user": "Practitioner/prac-9", "patient": null,
                    "reason": "break_glass", "rule": "break-glass", "break_glass": true,
                    "purpose_of_use": "BTG",
                }),
            ),
            // Stated the emergency, refused all the same: not a break-the-glass access.
            record(
                "r3",
                "2026-12-04T10:00:00.000Z",
                json!({
                    "decision": "deny", "reason": "insufficient_scope", "status": 403,
                    "purpose_of_use": "BTG",
                }),
            ),
        ],
    );
    let trail = scratch.path("audit.jsonl");
    assert_eq!(json_ids(&trail, &["--break-glass"]), ["r2"]);
    assert_eq!(
        json_ids(&trail, &["--break-glass", "--client", "ward-app"]),
        ["r2"]
    );
    assert!(json_ids(&trail, &["--break-glass", "--decision", "deny"]).is_empty());
    assert_eq!(json_ids(&trail, &[]), ["r1", "r2", "r3"]);
}

#[test]
fn the_time_range_includes_since_and_excludes_until() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    let range = |since: &str, until: &str| json_ids(&trail, &["--since", since, "--until", until]);
    assert_eq!(
        range("2026-12-04T09:00:00Z", "2026-12-04T11:00:00Z"),
        ["r2", "r3"]
    );
    assert_eq!(
        range("2026-12-04T08:59:59.999Z", "2026-12-04T11:00:00.001Z"),
        ["r2", "r3", "r4"]
    );
    assert_eq!(range("2026-12-04", "2026-12-05"), ["r1", "r2", "r3", "r4"]);
    assert!(range("2026-12-05", "2026-12-06").is_empty());
}

/// A time `ago` before now, as the gateway writes times.
fn ago(ago: Duration) -> String {
    fhirgate::audit::rfc3339(SystemTime::now() - ago)
}

#[test]
fn since_and_until_as_durations_count_back_from_now() {
    let scratch = Scratch::new();
    let hour = Duration::from_secs(3600);
    scratch.file(
        "audit.jsonl",
        &[
            record("old", &ago(30 * hour), json!({})),
            record("recent", &ago(hour), json!({})),
            record("middle", &ago(5 * hour), json!({})),
        ],
    );
    let trail = scratch.path("audit.jsonl");
    assert_eq!(json_ids(&trail, &["--since", "24h"]), ["middle", "recent"]);
    assert_eq!(json_ids(&trail, &["--since", "2h"]), ["recent"]);
    assert_eq!(json_ids(&trail, &["--until", "2h"]), ["old", "middle"]);
    assert_eq!(
        json_ids(&trail, &["--since", "2days", "--until", "1day"]),
        ["old"]
    );
}

/// The name of a file rotated at `at`, next to `audit.jsonl`.
fn rotated(at: SystemTime) -> String {
    let at = fhirgate::audit::rfc3339(at);
    let digits: String = at[..19].chars().filter(char::is_ascii_digit).collect();
    format!("audit.jsonl.{}T{}Z", &digits[..8], &digits[8..])
}

#[test]
fn rotated_files_are_read_and_those_older_than_since_are_not_opened() {
    let scratch = Scratch::new();
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    // Rotated 40 hours ago, and (to prove it is never read) nothing but damage inside.
    let old = rotated(now - 40 * hour);
    scratch.file(
        &old,
        &["{\"record_id\":\"cut sh".to_owned(), "garbage".to_owned()],
    );
    // Rotated 10 hours ago: read for the last 24 hours.
    let newer = rotated(now - 10 * hour);
    scratch.file(
        &newer,
        &[
            record("r-20h", &ago(20 * hour), json!({})),
            record("r-12h", &ago(12 * hour), json!({})),
        ],
    );
    scratch.file("audit.jsonl", &[record("r-1h", &ago(hour), json!({}))]);
    let trail = scratch.path("audit.jsonl");

    let run = query(&["--trail", &trail, "--format", "json", "--since", "24h"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.ids(), ["r-20h", "r-12h", "r-1h"]);
    assert!(!run.stderr.contains("malformed"), "{}", run.stderr);

    // Over the whole trail the old file is read, and its damage reported.
    let run = query(&["--trail", &trail, "--format", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.ids(), ["r-20h", "r-12h", "r-1h"]);
    assert!(
        run.stderr.contains(&old) && run.stderr.contains("skipped 2 malformed lines"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_rotated_file_whose_last_second_reaches_since_is_read() {
    let scratch = Scratch::new();
    // Rotated in the second 10:00:00; a record at 10:00:00.500 is in it.
    scratch.file(
        "audit.jsonl.20261204T100000Z",
        &[record("edge", "2026-12-04T10:00:00.500Z", json!({}))],
    );
    scratch.file(
        "audit.jsonl",
        &[record("later", "2026-12-04T11:00:00.000Z", json!({}))],
    );
    let trail = scratch.path("audit.jsonl");
    assert_eq!(
        json_ids(&trail, &["--since", "2026-12-04T10:00:00.250Z"]),
        ["edge", "later"]
    );
    assert_eq!(
        json_ids(&trail, &["--since", "2026-12-04T10:00:01Z"]),
        ["later"]
    );
}

#[test]
fn a_record_delivered_twice_comes_out_once() {
    let scratch = Scratch::new();
    let twice = record("dup", "2026-12-04T09:00:00.000Z", json!({}));
    scratch.file(
        "audit.jsonl.20261204T093000Z",
        &[
            twice.clone(),
            record("a", "2026-12-04T09:10:00.000Z", json!({})),
            twice.clone(),
        ],
    );
    scratch.file(
        "audit.jsonl",
        &[twice, record("b", "2026-12-04T10:00:00.000Z", json!({}))],
    );
    let trail = scratch.path("audit.jsonl");
    assert_eq!(json_ids(&trail, &[]), ["dup", "a", "b"]);
    assert_eq!(json_ids(&trail, &["--patient", "pat-1"]), ["dup", "a", "b"]);
    let table = query(&["--trail", &trail]);
    assert!(
        table.stdout.ends_with("3 matching records\n"),
        "{}",
        table.stdout
    );
}

#[test]
fn malformed_lines_are_skipped_counted_and_named() {
    let scratch = Scratch::new();
    scratch.file(
        "audit.jsonl",
        &[
            record("a", "2026-12-04T09:00:00.000Z", json!({})),
            "{\"record_id\":\"b\",\"time\":\"2026-12-04T09:01:00.000Z\",\"patient\":\"pat-1"
                .to_owned(),
            "not json at all".to_owned(),
            String::new(),
            // A whole object, but not a record: its time is no time.
            record("c", "yesterday", json!({})),
            record("d", "2026-12-04T09:02:00.000Z", json!({})),
        ],
    );
    let trail = scratch.path("audit.jsonl");
    let run = query(&["--trail", &trail, "--format", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.ids(), ["a", "d"]);
    assert!(
        run.stderr.contains(&format!(
            "{trail}: skipped 3 malformed lines (first at line 2)"
        )),
        "{}",
        run.stderr
    );

    // Cut-short lines are found whatever the filter; the others only when they could match.
    let run = query(&["--trail", &trail, "--format", "json", "--patient", "pat-9"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.ids().is_empty());
    assert!(
        run.stderr
            .contains("skipped 2 malformed lines (first at line 2)"),
        "{}",
        run.stderr
    );
}

#[test]
fn json_output_is_the_lines_as_stored() {
    let scratch = Scratch::new();
    // Stored with a field order and spacing of its own, and a field this version lacks.
    let stored = r#"{"time":"2026-12-04T09:00:00.000Z", "record_id":"x1","decision":"deny","patient":"pat-1","future_field":{"a":[1,2]}}"#;
    std::fs::write(scratch.0.join("audit.jsonl"), format!("{stored}\r\n")).unwrap();
    let run = query(&["--trail", &scratch.path("audit.jsonl"), "--format", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, format!("{stored}\n"));
}

#[test]
fn the_table_shows_who_reached_which_patient_and_what() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    let run = query(&["--trail", &trail]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", run.stdout);
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(lines[0]),
        [
            "TIME",
            "(UTC)",
            "DECISION",
            "STATUS",
            "CLIENT",
            "USER",
            "PATIENT",
            "INTERACTION",
            "RESOURCE",
            "SCOPES",
            "REASON"
        ]
    );
    // fhir_user as the user; no patient in context, the one named.
    assert_eq!(
        words(lines[1]),
        [
            "2026-12-04T08:00:00.000Z",
            "allow",
            "200",
            "clinic-app",
            "Practitioner/prac-9",
            "->",
            "pat-2",
            "read",
            "Patient/pat-2",
            "launch/patient",
            "patient/*.rs",
            "allowed"
        ]
    );
    // The subject when there is no fhir_user; a search shows its query.
    assert_eq!(
        words(lines[2]),
        [
            "2026-12-04T09:00:00.000Z",
            "filter",
            "200",
            "clinic-app",
            "sub-9",
            "pat-2",
            "search-type",
            "Observation?patient=pat-2&code=1234-5",
            "launch/patient",
            "patient/*.rs",
            "allowed"
        ]
    );
    // A refused read of another patient than the one in context.
    assert_eq!(
        words(lines[4]),
        [
            "2026-12-04T11:00:00.000Z",
            "deny",
            "403",
            "patient-app",
            "Patient/pat-1",
            "pat-1",
            "->",
            "pat-3",
            "read",
            "Patient/pat-3",
            "launch/patient",
            "patient/*.rs",
            "other_patient"
        ]
    );
    assert_eq!(lines[5], "4 matching records");
    // Aligned: every column starts where its heading does.
    let start = |line: &str, cell: &str| line.find(cell).unwrap();
    let resource = start(lines[0], "RESOURCE");
    assert_eq!(start(lines[1], "Patient/pat-2"), resource);
    assert_eq!(start(lines[2], "Observation?"), resource);
    assert_eq!(start(lines[4], "Patient/pat-3"), resource);
}

#[test]
fn no_match_is_a_count_of_zero_and_exit_0() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    let run = query(&["--trail", &trail, "--patient", "pat-404"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "0 matching records\n");
    let run = query(&[
        "--trail",
        &trail,
        "--patient",
        "pat-404",
        "--format",
        "json",
    ]);
    assert_eq!((run.code, run.stdout.as_str()), (Some(0), ""));
}

#[test]
fn limit_keeps_the_first_records_and_says_how_many_matched() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    let run = query(&["--trail", &trail, "--limit", "2"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("08:00:00.000Z") && run.stdout.contains("09:00:00.000Z"));
    assert!(!run.stdout.contains("10:00:00.000Z"), "{}", run.stdout);
    assert!(
        run.stdout
            .ends_with("2 records shown of 4 matching (limit)\n"),
        "{}",
        run.stdout
    );
    let run = query(&["--trail", &trail, "--limit", "2", "--format", "json"]);
    assert_eq!(run.ids(), ["r1", "r2"]);
    assert!(
        run.stderr.contains("2 records shown of 4 matching"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_configuration_names_the_trail() {
    let scratch = Scratch::new();
    scratch.file(
        "audit.jsonl.20261204T093000Z",
        &[record("a", "2026-12-04T09:00:00.000Z", json!({}))],
    );
    scratch.file(
        "audit.jsonl",
        &[record("b", "2026-12-04T10:00:00.000Z", json!({}))],
    );
    let config = DEFAULT.replace(
        "path: \"fhirgate-audit.jsonl\"",
        &format!("path: \"{}\"", scratch.path("audit.jsonl")),
    );
    std::fs::write(scratch.0.join("fhirgate.yaml"), config).unwrap();
    let run = query(&[
        "--config",
        &scratch.path("fhirgate.yaml"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.ids(), ["a", "b"]);

    // Without --config or --trail, the embedded default's trail in the working folder.
    scratch.file(
        "fhirgate-audit.jsonl",
        &[record("c", "2026-12-04T11:00:00.000Z", json!({}))],
    );
    let run = run_in(Some(&scratch.0), &["--format", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.ids(), ["c"]);
}

#[test]
fn usage_and_read_errors_exit_2_with_a_message() {
    let scratch = Scratch::new();
    let trail = mixed_trail(&scratch);
    let missing = scratch.path("missing.jsonl");
    let stdout_only = DEFAULT.replace(
        "    trail:\n      jsonl:\n        path: \"fhirgate-audit.jsonl\"",
        "    console:\n      stdout: {}",
    );
    std::fs::write(scratch.0.join("stdout.yaml"), stdout_only).unwrap();
    let stdout_config = scratch.path("stdout.yaml");
    let cases: [(&[&str], &str); 9] = [
        (&["--trail", &missing], "missing.jsonl"),
        (&["--trail", &trail, "--since", "last week"], "--since"),
        (
            &["--trail", &trail, "--until", "2026-12-04T09:00:00+01:00"],
            "--until",
        ),
        (
            &["--trail", &trail, "--since", "1h", "--until", "2h"],
            "empty time range",
        ),
        (&["--trail", &trail, "--decision", "maybe"], "maybe"),
        (&["--trail", &trail, "--format", "xml"], "xml"),
        (&["--trail", &trail, "--limit", "0"], "--limit"),
        (&["--trail", &trail, "--config", &stdout_config], "--config"),
        (&["--config", &stdout_config], "no jsonl sink"),
    ];
    for (args, named) in cases {
        let run = query(args);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(named), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
}

#[test]
fn an_unreadable_trail_file_is_named() {
    let scratch = Scratch::new();
    // A folder where the file should be cannot be read as one.
    std::fs::create_dir(scratch.0.join("audit.jsonl")).unwrap();
    let run = query(&["--trail", &scratch.path("audit.jsonl")]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .contains(&format!("cannot read {}", scratch.path("audit.jsonl"))),
        "{}",
        run.stderr
    );
}
