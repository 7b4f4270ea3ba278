"""`fhirgate check` reports configuration mistakes with the key and its line; `fhirgate schema`
describes the same file for editors."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

from helpers import FHIRGATE_BIN, ROOT

E2E_CONFIG = ROOT / "e2e" / "fhirgate-e2e.yaml"


@pytest.fixture(scope="module")
def fhirgate():
    if not FHIRGATE_BIN.exists():
        pytest.fail(f"gateway binary not found at {FHIRGATE_BIN} (set FHIRGATE_BIN or build it)")
    return str(FHIRGATE_BIN)


def run_check(binary: str, path) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "check", "--config", str(path)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_check_accepts_the_e2e_config(fhirgate):
    result = run_check(fhirgate, E2E_CONFIG)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


@pytest.mark.parametrize("good,bad", [
    ("admin_listen:", "admin_lisen:"),
    ("connect_timeout:", "conect_timeout:"),
    ("leeway:", "leway:"),
], ids=["top-level", "upstream", "issuer"])
def test_check_names_a_misspelt_key_and_its_line(fhirgate, tmp_path, good, bad):
    lines = E2E_CONFIG.read_text().splitlines(keepends=True)
    # push the key further down so the line number is distinctive
    lines = ["# misspelt key test\n"] * 3 + lines
    line_no = next(n for n, line in enumerate(lines, 1) if line.lstrip().startswith(good))
    lines[line_no - 1] = lines[line_no - 1].replace(good, bad, 1)
    config = tmp_path / "bad.yaml"
    config.write_text("".join(lines))
    result = run_check(fhirgate, config)
    assert result.returncode == 2, f"exit {result.returncode}, expected 2\nstderr: {result.stderr}"
    key = bad.rstrip(":")
    assert key in result.stderr, f"stderr does not name {key!r}: {result.stderr}"
    assert re.search(rf"(?<!\d){line_no}(?!\d)", result.stderr), f"stderr does not give line {line_no}: {result.stderr}"


def test_check_of_a_missing_file_fails(fhirgate, tmp_path):
    result = run_check(fhirgate, tmp_path / "absent.yaml")
    assert result.returncode != 0
    assert "absent.yaml" in result.stderr


def config_schema(binary: str) -> dict:
    result = subprocess.run([binary, "schema"], capture_output=True, text=True, timeout=60, check=True)
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


SHIPPED_CONFIGS = [ROOT / "crates" / "fhirgate" / "config" / "default.yaml", E2E_CONFIG,
                   *sorted((ROOT / "examples").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_the_schema_accepts_every_shipped_configuration(fhirgate, path):
    validator = jsonschema.Draft202012Validator(config_schema(fhirgate))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("good,bad,where", [
    ("admin_listen:", "admin_lisen:", []),
    ("connect_timeout: \"2s\"", "connect_timeout: \"a while\"", ["upstream", "connect_timeout"]),
    ("algorithms: [\"RS256\", \"ES256\"]", "algorithms: [\"HS256\"]", ["issuers", 0, "algorithms", 0]),
], ids=["misspelt-key", "bad-duration", "hmac-algorithm"])
def test_the_schema_refuses_what_check_refuses(fhirgate, tmp_path, good, bad, where):
    text = E2E_CONFIG.read_text()
    assert good in text
    config = tmp_path / "bad.yaml"
    config.write_text(text.replace(good, bad, 1))
    assert run_check(fhirgate, config).returncode == 2
    validator = jsonschema.Draft202012Validator(config_schema(fhirgate))
    errors = list(validator.iter_errors(yaml.safe_load(config.read_text())))
    assert errors, "the schema accepted it"
    # An optional section is "this, or nothing": its own errors are the causes of that one.
    causes = list(every_cause(errors))
    assert any(list(e.absolute_path)[:len(where)] == where for e in causes), [e.message for e in causes]


def every_cause(errors):
    """The errors and, for those about a choice of schemas (anyOf, oneOf), each cause below."""
    for error in errors:
        yield error
        yield from every_cause(error.context or [])


def test_the_configuration_reference_is_the_one_the_schema_makes(fhirgate):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py"), fhirgate],
                            capture_output=True, text=True, timeout=60, check=True)
    committed = (ROOT / "docs" / "CONFIG-REFERENCE.md").read_text()
    assert result.stdout == committed, (
        "docs/CONFIG-REFERENCE.md is out of date: python3 scripts/config_reference.py target/debug/fhirgate "
        "> docs/CONFIG-REFERENCE.md")
