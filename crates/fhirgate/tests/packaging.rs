//! What ships beside the binary: the example configurations, the systemd unit and the
//! container build.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_example_configuration_passes_check() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repository().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "examples: {examples:?}");
    // Relative paths in them are relative to the working directory, as under the unit.
    let work = support::TempDir::new();
    for example in examples {
        let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["check", "--config"])
            .arg(&example)
            .current_dir(&work.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read_dir(&work.0).unwrap().count(),
        0,
        "check wrote nothing"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here; the unit is not verified");
        return;
    };
    assert!(probe.status.success());
    let unit = std::fs::read_to_string(repository().join("deploy/systemd/fhirgate.service"))
        .unwrap()
        // The unit names the installed binary; verify wants it to exist.
        .replace("/usr/local/bin/fhirgate", env!("CARGO_BIN_EXE_fhirgate"));
    let dir = support::TempDir::new();
    let path = dir.0.join("fhirgate.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{complaints}");
    // Unknown or misspelt settings are only warned about: none may be.
    let about_the_unit: Vec<&str> = complaints
        .lines()
        .filter(|line| line.contains("fhirgate.service"))
        .collect();
    assert!(about_the_unit.is_empty(), "{about_the_unit:?}");
}

#[test]
fn the_container_build_context_leaves_out_build_output_and_local_state() {
    // `COPY . .` would otherwise send gigabytes of `target/` and the test stack's state.
    let ignored = std::fs::read_to_string(repository().join(".dockerignore")).unwrap();
    let entries: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    for wanted in [".git", "target", ".work", "fuzz/target", "**/node_modules"] {
        assert!(
            entries.contains(&wanted),
            "{wanted} is not in .dockerignore"
        );
    }
    let containerfile =
        std::fs::read_to_string(repository().join("deploy/container/Containerfile")).unwrap();
    assert!(
        containerfile.contains("COPY . ."),
        "the build copies its context"
    );
}
