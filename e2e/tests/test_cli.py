"""`fhirgate check` reports configuration mistakes with the key and its line."""
from __future__ import annotations

import re
import subprocess

import pytest

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
