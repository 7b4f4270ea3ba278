"""Nothing secret or identifying in what the gateway writes down.

Runs after every other module (MODULE_ORDER in helpers.py), against a gateway that has run
the whole session with debug logging on (scripts/test.sh starts it with FHIRGATE_LOG=debug),
and searches its log, its audit trail and its metrics for every access token the session
used, every client secret, and the synthetic patients' names. The patients' ids may appear
in the audit trail (that is whose data was reached), nowhere else.
"""
from __future__ import annotations

import json

import requests

from helpers import ADMIN, AUDIT_FILE, CLIENT_SECRETS, DATA_INDEX, INTROSPECTION_SECRET_FILE, LOG_FILE


def audit_text() -> str:
    """The trail file and every file rotated from it."""
    files = sorted(AUDIT_FILE.parent.glob(AUDIT_FILE.name + "*"))
    return "".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def patients() -> list[dict]:
    return json.loads(DATA_INDEX.read_text())["patients"]


def token_needles(tokens) -> list[str]:
    """Each token whole and, for a JWT, its signature alone (a log could cut the rest)."""
    out = []
    for token in tokens.seen:
        out.append(token)
        signature = token.rsplit(".", 1)[1] if token.count(".") == 2 else ""
        if len(signature) >= 16:
            out.append(signature)
    return out


def secret_needles() -> list[str]:
    secrets = list(CLIENT_SECRETS.values())
    secrets.append(INTROSPECTION_SECRET_FILE.read_text().strip())
    return secrets


def name_needles() -> list[str]:
    names = set()
    for patient in patients():
        names.add(patient["family"])
        names.update(patient["given"])
    return sorted(n for n in names if len(n) >= 4)


def found(text: str, needles: list[str]) -> list[str]:
    """The needles in `text`, described without being repeated (a failing test's output must
    not leak what it found)."""
    return sorted({f"{len(n)} characters ending …{n[-3:]}" for n in needles if n in text})


def test_the_session_was_logged_at_debug_level():
    log = LOG_FILE.read_text(encoding="utf-8", errors="replace")
    assert '"level":"DEBUG"' in log, f"{LOG_FILE} has no debug lines: is FHIRGATE_LOG=debug set?"
    assert log.count("\n") > 100, "too few log lines for a whole session"


def test_no_token_secret_or_name_in_the_log(tokens):
    assert len(tokens.seen) > 20, "too few tokens recorded; did the other tests run?"
    log = LOG_FILE.read_text(encoding="utf-8", errors="replace")
    assert found(log, token_needles(tokens)) == []
    assert found(log, secret_needles()) == []
    assert found(log, name_needles()) == []
    assert found(log, [p["id"] for p in patients()]) == []


def test_no_token_secret_or_name_in_the_audit_trail(tokens):
    trail = audit_text()
    assert trail.count("\n") > 100, "too few audit records for a whole session"
    assert found(trail, token_needles(tokens)) == []
    assert found(trail, secret_needles()) == []
    assert found(trail, name_needles()) == []
    # The patients whose data was reached are named by id, as they must be.
    assert found(trail, [p["id"] for p in patients()]) != []


def test_no_token_secret_name_or_patient_in_the_metrics(tokens):
    metrics = requests.get(f"{ADMIN}/metrics", timeout=10).text
    assert "fhirgate_requests_total" in metrics
    assert found(metrics, token_needles(tokens)) == []
    assert found(metrics, secret_needles()) == []
    assert found(metrics, name_needles()) == []
    assert found(metrics, [p["id"] for p in patients()]) == []
