//! The `fhirgate` command as an operator runs it.

use std::process::Command;

const DEFAULT: &str = include_str!("../config/default.yaml");

fn check(text: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("fhirgate-cli-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    output
}

#[test]
fn check_accepts_the_embedded_default() {
    let output = check(DEFAULT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_names_a_misspelt_key_and_its_line_and_exits_2() {
    let text = DEFAULT.replace("  connect_timeout:", "  conect_timeout:");
    let line = text
        .lines()
        .position(|l| l.contains("conect_timeout"))
        .unwrap()
        + 1;
    let output = check(&text);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("conect_timeout"), "{stderr}");
    assert!(
        stderr.contains(&format!(":{line}:")),
        "line {line} in: {stderr}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "--config", "/nonexistent/fhirgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
}
