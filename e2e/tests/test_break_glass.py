"""Break-the-glass, with gateway processes of their own against the real parts.

The identity provider's `clinician-app` issues a clinician's token: `user/Patient.rs` only, a
Practitioner as fhirUser, no patient in context, and, when asked, the purpose-of-use claim
`["urn:oid:2.16.840.1.113883.5.8#BTG"]`. Three gateways read the real FHIR server: one with
`break_glass: {}` (the claim only), one that also reads the `X-Purpose-Of-Use` header, and one
without the section (off). Each ships its records to a JSON lines file and as AuditEvents to
the audit FHIR server, under request ids of its own.

* the claim breaks the glass: the clinician reads the patient's Observations, the same the
  FHIR server holds, marked `X-Fhirgate-Break-Glass: BTG`; the record has purpose_of_use BTG,
  break_glass true, reason break_glass; the AuditEvent carries BTG as purpose of event and of
  use and validates as R4 in the BALP shapes;
* without the claim: 403 insufficient_scope, the FHIR server not asked; a write with BTG is
  refused and the resource unchanged; a patient token with BTG (claim or header) is refused;
* the header breaks the glass only where configured; nothing breaks it without the section.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
import requests

from helpers import (FHIR_DIRECT, IDP_URL, ROOT, VALIDATOR_PYTHON, assert_refused, bundle_resources, free_port,
                     run_validator, start_gateway_process)

AUDIT_FHIR = os.environ.get("AUDIT_FHIR", "http://127.0.0.1:18092/fhir").rstrip("/")
AUDIT_VALIDATOR = ROOT / "e2e" / "validator" / "validate_audit_events.py"
GATEWAY_AUDIENCE = "http://127.0.0.1:18080/fhir"  # tokens from the IdP carry this audience
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
CLINICIAN_SCOPE = "openid fhirUser user/Patient.rs"

SECTIONS = {
    "claim": "break_glass: {}\n",
    "header": "break_glass:\n  header: \"X-Purpose-Of-Use\"\n",
    "off": "",
}


class OwnGateway:
    """A gateway process with a configuration of its own; every request gets a request id
    under its prefix."""

    def __init__(self, tmp, section: str) -> None:
        self.listen, admin = free_port(), free_port()
        self.audit = tmp / "audit.jsonl"
        self.prefix = f"btg-{uuid.uuid4().hex[:8]}"
        config = tmp / "fhirgate.yaml"
        config.write_text(f"""listen: "127.0.0.1:{self.listen}"
admin_listen: "127.0.0.1:{admin}"
upstream:
  url: "{FHIR_DIRECT}"
  public_base_path: "/fhir"
issuers:
  - issuer: "{IDP_URL}"
    audience: "{GATEWAY_AUDIENCE}"
    algorithms: ["RS256", "ES256"]
    leeway: "5s"
audit:
  spool: {{ path: "{self.audit}.spool" }}
  sinks:
    trail: {{ jsonl: {{ path: "{self.audit}" }} }}
    audit-fhir: {{ fhir: {{ url: "{AUDIT_FHIR}", batch: 20 }} }}
{section}""")
        self.proc = start_gateway_process(config, admin, tmp / "fhirgate.log")
        self.base = f"http://127.0.0.1:{self.listen}/fhir"
        self.http = requests.Session()
        self.sent: list[str] = []

    def request(self, method: str, path: str, token: str, *, headers: dict | None = None,
                params: dict | None = None, body: bytes | None = None) -> tuple[str, requests.Response]:
        request_id = f"{self.prefix}-{len(self.sent)}"
        hdrs = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json", "X-Request-Id": request_id}
        if body is not None:
            hdrs["Content-Type"] = "application/fhir+json"
        hdrs.update(headers or {})
        resp = self.http.request(method, f"{self.base}/{path}", headers=hdrs, params=params, data=body, timeout=60)
        assert resp.headers.get("X-Request-Id") == request_id
        self.sent.append(request_id)
        return request_id, resp

    def line(self, request_id: str) -> dict:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.audit.exists():
                found = [json.loads(line) for line in self.audit.read_text().splitlines()
                         if line.strip() and json.loads(line).get("request_id") == request_id]
                if found:
                    assert len(found) == 1, f"{len(found)} audit lines for one request"
                    return found[0]
            time.sleep(0.2)
        pytest.fail(f"no audit line for {request_id}")

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    started: dict[str, OwnGateway] = {}
    try:
        for name, section in SECTIONS.items():
            started[name] = OwnGateway(tmp_path_factory.mktemp(f"btg-{name}"), section)
        yield started
    finally:
        for gateway in started.values():
            gateway.stop()


@pytest.fixture(scope="module")
def practitioner(patient_a) -> str:
    return f"Practitioner/{patient_a.ids['Practitioner'][0]}"


@pytest.fixture(scope="module")
def clinician_btg(tokens, practitioner) -> str:
    return tokens.mint(CLINICIAN_SCOPE, client="clinician-app",
                       extra={"fhirUser": practitioner, "purpose_of_use": "BTG"})


@pytest.fixture(scope="module")
def clinician(tokens, practitioner) -> str:
    return tokens.mint(CLINICIAN_SCOPE, client="clinician-app", extra={"fhirUser": practitioner})


def test_the_identity_provider_states_the_purpose_in_the_token(tokens, clinician_btg, clinician, practitioner):
    claims = tokens.claims_of(clinician_btg)
    assert claims["purpose_of_use"] == ["urn:oid:2.16.840.1.113883.5.8#BTG"], claims
    assert claims["fhirUser"] == practitioner
    assert "patient" not in claims
    assert "purpose_of_use" not in tokens.claims_of(clinician)


def test_btg_in_the_token_reads_what_the_scopes_do_not_cover(gateways, direct, clinician_btg, patient_a):
    gw = gateways["claim"]
    request_id, resp = gw.request("GET", "Observation", clinician_btg, params={"patient": patient_a.id, "_count": "100"})
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers.get("X-Fhirgate-Break-Glass") == "BTG"
    got = {r["id"] for r in bundle_resources(resp) if r["resourceType"] == "Observation"}
    truth = direct.get("Observation", params={"patient": patient_a.id, "_count": "100"})
    assert got == {r["id"] for r in bundle_resources(truth)}, "not the Observations the FHIR server holds"
    assert got, "no Observations"
    line = gw.line(request_id)
    assert (line["decision"], line["reason"], line["rule"]) == ("allow", "break_glass", "break-glass"), line
    assert line["break_glass"] is True
    assert line["purpose_of_use"] == "BTG"
    assert line["upstream_status"] == 200
    assert line["client_id"] == "clinician-app"

    one = sorted(got)[0]
    request_id, resp = gw.request("GET", f"Observation/{one}", clinician_btg)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["id"] == one
    assert gw.line(request_id)["break_glass"] is True


def test_without_btg_the_read_is_refused_before_the_fhir_server(gateways, clinician, patient_a):
    gw = gateways["claim"]
    request_id, resp = gw.request("GET", "Observation", clinician, params={"patient": patient_a.id})
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    assert "X-Fhirgate-Break-Glass" not in resp.headers
    line = gw.line(request_id)
    assert (line["decision"], line["reason"]) == ("deny", "insufficient_scope"), line
    assert line.get("upstream_status") is None, "the FHIR server was asked"
    assert "break_glass" not in line and "purpose_of_use" not in line, line
    result = run_validator([resp.content])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_write_with_btg_stays_refused_and_changes_nothing(gateways, direct, clinician_btg, patient_a):
    gw = gateways["claim"]
    rid = sorted(patient_a.ids["Observation"])[0]
    before = direct.get(f"Observation/{rid}")
    assert before.status_code == 200
    changed = before.json()
    changed["status"] = "entered-in-error"
    request_id, resp = gw.request("PUT", f"Observation/{rid}", clinician_btg, body=json.dumps(changed).encode())
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    line = gw.line(request_id)
    assert line["purpose_of_use"] == "BTG" and "break_glass" not in line, line
    assert line.get("upstream_status") is None
    assert direct.get(f"Observation/{rid}").content == before.content, "the resource changed"


def test_a_patient_token_with_btg_is_refused(gateways, tokens, patient_a):
    gw = gateways["header"]
    token = tokens.mint("launch/patient patient/Patient.rs", patient=patient_a.id)
    request_id, resp = gw.request("GET", "Observation", token, params={"patient": patient_a.id},
                                  headers={"X-Purpose-Of-Use": "BTG"})
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    line = gw.line(request_id)
    assert line["reason"] == "insufficient_scope" and line["purpose_of_use"] == "BTG", line
    assert line.get("upstream_status") is None


def test_the_header_breaks_the_glass_only_where_configured(gateways, clinician, patient_a):
    header = {"X-Purpose-Of-Use": "BTG"}
    request_id, resp = gateways["header"].request("GET", "Observation", clinician,
                                                  params={"patient": patient_a.id}, headers=header)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers.get("X-Fhirgate-Break-Glass") == "BTG"
    line = gateways["header"].line(request_id)
    assert line["break_glass"] is True and line["purpose_of_use"] == "BTG", line

    request_id, resp = gateways["claim"].request("GET", "Observation", clinician,
                                                 params={"patient": patient_a.id}, headers=header)
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    line = gateways["claim"].line(request_id)
    assert "purpose_of_use" not in line, "a header that is not configured was read"


def test_without_the_section_nothing_breaks_the_glass(gateways, clinician_btg, patient_a):
    gw = gateways["off"]
    request_id, resp = gw.request("GET", "Observation", clinician_btg, params={"patient": patient_a.id},
                                  headers={"X-Purpose-Of-Use": "BTG"})
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    line = gw.line(request_id)
    assert line["reason"] == "insufficient_scope" and "break_glass" not in line, line
    # The token's purpose is recorded all the same.
    assert line["purpose_of_use"] == "BTG"


def exchange(event: dict) -> dict:
    return next((e for e in event.get("entity", []) if e.get("type", {}).get("system") == BALP_ENTITY
                 and e["type"].get("code") == "XrequestId"), {})


def audit_events(request_ids: set[str], timeout: float = 60.0) -> dict[str, dict]:
    """The AuditEvents of these request ids on the audit FHIR server, waiting for all of them."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, dict] = {}
        url = f"{AUDIT_FHIR}/AuditEvent?_count=500"
        while url:
            bundle = requests.get(url, timeout=30, headers={"Accept": "application/fhir+json"}).json()
            for entry in bundle.get("entry", []):
                rid = exchange(entry["resource"]).get("what", {}).get("identifier", {}).get("value")
                if rid in request_ids:
                    found[rid] = entry["resource"]
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        if request_ids <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_audit_events_carry_the_purpose_and_mark_break_the_glass(gateways):
    """Runs after the requests above: every one of them is an AuditEvent on the audit server."""
    sent = {rid for gw in gateways.values() for rid in gw.sent}
    assert len(sent) >= 8, "the requests of this module did not run"
    lines = {rid: gw.line(rid) for gw in gateways.values() for rid in gw.sent}
    events = audit_events(sent)
    assert set(events) == sent, f"no AuditEvent for {sorted(sent - set(events))[:5]}"
    btg = [{"coding": [{"system": ACT_REASON, "code": "BTG"}]}]
    broken = [rid for rid, line in lines.items() if line.get("break_glass")]
    assert len(broken) >= 3
    for rid, event in events.items():
        line = lines[rid]
        details = {d["type"]: d["valueString"] for d in exchange(event).get("detail", [])}
        requestor = next(a for a in event["agent"] if a.get("requestor"))
        if line.get("purpose_of_use"):
            assert event.get("purposeOfEvent") == btg, event
            assert requestor.get("purposeOfUse") == btg, requestor
        else:
            assert "purposeOfEvent" not in event
        if rid in broken:
            assert event["outcome"] == "0"
            assert event["outcomeDesc"].startswith("break_glass: "), event["outcomeDesc"]
            assert details.get("break-glass") == "true", details
            assert details.get("rule") == "break-glass"
        else:
            assert "break-glass" not in details, details
    validated = subprocess.run([str(VALIDATOR_PYTHON), str(AUDIT_VALIDATOR), "-"],
                               input="\n".join(json.dumps(e) for e in events.values()),
                               text=True, capture_output=True, timeout=300)
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-2000:]
