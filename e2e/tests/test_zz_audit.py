"""Checks over everything the tests sent: R4 refusals and the audit trail.

These run last (see MODULE_ORDER in helpers.py): they look at every exchange recorded by
the `gw` fixture during the session.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import re

import subprocess
import time

import pytest
import requests

from helpers import AUDIT_FILE, ROOT, VALIDATOR_PYTHON, read_audit_lines, run_validator

AUDIT_FHIR = os.environ.get("AUDIT_FHIR", "http://127.0.0.1:18092/fhir").rstrip("/")
AUDIT_VALIDATOR = ROOT / "e2e" / "validator" / "validate_audit_events.py"
OUTCOME_VALIDATOR = ROOT / "e2e" / "validator" / "validate_outcomes.py"

REQUIRED_FIELDS = {
    "time": str, "request_id": str, "client_id": (str, type(None)), "subject": (str, type(None)),
    "patient": (str, type(None)), "scopes": (str, type(None)), "method": str, "path": str,
    "query": (str, type(None)), "interaction": (str, type(None)), "resource_type": (str, type(None)),
    "decision": str, "reason": (str, type(None)), "status": int, "latency_ms": (int, float),
}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def test_every_error_body_is_a_valid_r4_operation_outcome(gw, tmp_path):
    # Answers to HEAD carry no body, by HTTP's rules.
    errors = [e for e in gw.exchanges if e.status >= 400 and e.method != "HEAD"]
    assert len(errors) >= 5, "too few refusals recorded; did the other tests run?"
    bodies = []
    xml = []
    for e in errors:
        if e.content_type.startswith("application/fhir+xml"):
            xml.append(e)
            continue
        try:
            json.loads(e.body)
        except ValueError:
            pytest.fail(f"{e.method} {e.path} -> {e.status}: body is neither XML nor JSON: {e.body[:300]!r}")
        bodies.append(e.body)
    result = run_validator(bodies)
    assert result.returncode == 0, f"R4 validation failed:\n{result.stdout}\n{result.stderr}"
    if xml:
        for n, e in enumerate(xml):
            (tmp_path / f"{n:04d}-{e.status}.xml").write_bytes(e.body)
        checked = subprocess.run([str(VALIDATOR_PYTHON), str(OUTCOME_VALIDATOR), "--quiet", str(tmp_path)],
                                 capture_output=True, text=True, timeout=300)
        assert checked.returncode == 0, f"R4 XML validation failed:\n{checked.stdout}\n{checked.stderr}"


@pytest.fixture(scope="module")
def audit(gw):
    want = {e.request_id for e in gw.exchanges}
    assert want, "no exchanges recorded"
    assert AUDIT_FILE.exists(), f"audit file {AUDIT_FILE} does not exist"
    lines = read_audit_lines(want)
    by_id = collections.defaultdict(list)
    for line in lines:
        by_id[line.get("request_id")].append(line)
    return by_id


def test_each_request_has_exactly_one_audit_line(gw, audit):
    missing = [f"{e.method} {e.path} ({e.request_id})" for e in gw.exchanges if not audit.get(e.request_id)]
    doubled = [f"{e.method} {e.path} ({e.request_id}) x{len(audit[e.request_id])}"
               for e in gw.exchanges if len(audit.get(e.request_id, [])) > 1]
    assert not missing, f"{len(missing)} requests without an audit line: {missing[:5]}"
    assert not doubled, f"requests with more than one audit line: {doubled[:5]}"


def test_audit_lines_have_the_contract_fields(gw, audit):
    problems = []
    for e in gw.exchanges:
        for line in audit.get(e.request_id, [])[:1]:
            for name, kind in REQUIRED_FIELDS.items():
                if name not in line:
                    problems.append(f"{e.request_id}: no field {name!r}")
                elif not isinstance(line[name], kind) or isinstance(line[name], bool):
                    problems.append(f"{e.request_id}: {name}={line[name]!r} has the wrong type")
            if isinstance(line.get("time"), str):
                if not RFC3339.match(line["time"]):
                    problems.append(f"{e.request_id}: time {line['time']!r} is not RFC 3339")
                else:
                    datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
            if "withheld" in line and not (isinstance(line["withheld"], int) and line["withheld"] >= 0):
                problems.append(f"{e.request_id}: withheld={line['withheld']!r}")
            if isinstance(line.get("latency_ms"), (int, float)) and line["latency_ms"] < 0:
                problems.append(f"{e.request_id}: negative latency")
    assert not problems, "\n".join(problems[:20])


def test_audit_lines_match_what_happened(gw, audit):
    problems = []
    for e in gw.exchanges:
        lines = audit.get(e.request_id, [])
        if not lines:
            continue
        line = lines[0]
        label = f"{e.method} {e.path}?{e.query} -> {e.status} ({e.request_id})"
        # what the gateway did decides: refusals are denials, answers passed on are allowed
        if e.status in (400, 401, 403):
            decision = "deny"
        elif e.status < 400:
            # allowed, or allowed with entries withheld from the response
            decision = "filter" if line.get("withheld") else "allow"
        else:
            decision = e.expect_decision or line.get("decision")
        if line.get("decision") != decision:
            problems.append(f"{label}: decision {line.get('decision')!r}, expected {decision!r}")
        if line.get("status") != e.status:
            problems.append(f"{label}: status {line.get('status')!r}")
        if line.get("method") != e.method:
            problems.append(f"{label}: method {line.get('method')!r}")
        if not str(line.get("path", "")).rstrip("/").endswith(e.path.rstrip("/")):
            problems.append(f"{label}: path {line.get('path')!r}")
        if e.authenticated:
            if e.interaction and line.get("interaction") != e.interaction:
                problems.append(f"{label}: interaction {line.get('interaction')!r}, expected {e.interaction!r}")
            if e.resource_type and line.get("resource_type") != e.resource_type:
                problems.append(f"{label}: resource_type {line.get('resource_type')!r}, expected {e.resource_type!r}")
            if e.client_id and line.get("client_id") != e.client_id:
                problems.append(f"{label}: client_id {line.get('client_id')!r}, expected {e.client_id!r}")
            if e.subject and line.get("subject") != e.subject:
                problems.append(f"{label}: subject {line.get('subject')!r}, expected {e.subject!r}")
            if line.get("patient") != e.patient:
                problems.append(f"{label}: patient {line.get('patient')!r}, expected {e.patient!r}")
            if e.scopes is not None and set(str(line.get("scopes") or "").split()) != set(e.scopes.split()):
                problems.append(f"{label}: scopes {line.get('scopes')!r}, expected {e.scopes!r}")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:25])


def exchange_entity(event: dict) -> dict:
    return next((e for e in event.get("entity", []) if e.get("type", {}).get("code") == "XrequestId"), {})


def fetch_audit_events(want: set[str], timeout: float = 60.0) -> dict[str, list[dict]]:
    """AuditEvents on the audit FHIR server by request id, waiting until all of `want` are there."""
    deadline = time.monotonic() + timeout
    while True:
        by_id: dict[str, list[dict]] = collections.defaultdict(list)
        url = f"{AUDIT_FHIR}/AuditEvent?_count=500"
        while url:
            bundle = requests.get(url, timeout=30, headers={"Accept": "application/fhir+json"}).json()
            for entry in bundle.get("entry", []):
                rid = exchange_entity(entry["resource"]).get("what", {}).get("identifier", {}).get("value")
                if rid in want:
                    by_id[rid].append(entry["resource"])
            url = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
        if want <= set(by_id) or time.monotonic() > deadline:
            return by_id
        time.sleep(1)


def test_every_request_is_one_valid_balp_audit_event_on_the_audit_server(gw, audit):
    want = {e.request_id for e in gw.exchanges}
    events = fetch_audit_events(want)
    missing = sorted(want - set(events))
    assert not missing, f"{len(missing)} requests without an AuditEvent, e.g. {missing[:5]}"
    doubled = [rid for rid, found in events.items() if len(found) > 1]
    assert not doubled, f"request ids with more than one AuditEvent: {doubled[:5]}"
    problems = []
    for e in gw.exchanges:
        event = events[e.request_id][0]
        line = audit[e.request_id][0]
        expected = "8" if e.status >= 500 else "4" if e.status >= 400 else "0"
        if event.get("outcome") != expected:
            problems.append(f"{e.method} {e.path} -> {e.status}: outcome {event.get('outcome')!r}, expected {expected}")
        if event.get("id") != line["record_id"]:
            problems.append(f"{e.request_id}: AuditEvent id {event.get('id')} is not the record id {line['record_id']}")
        if e.status >= 400 and line["reason"] not in event.get("outcomeDesc", ""):
            problems.append(f"{e.request_id}: outcomeDesc {event.get('outcomeDesc')!r} does not give the reason {line['reason']}")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:20])
    validated = subprocess.run(
        [str(VALIDATOR_PYTHON), str(AUDIT_VALIDATOR), "-"],
        input="\n".join(json.dumps(found[0]) for found in events.values()),
        text=True, capture_output=True, timeout=600)
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-2000:]
