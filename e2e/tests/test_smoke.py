"""The gateway is up, public metadata needs no token, request ids come back."""
from __future__ import annotations

import requests

from helpers import ADMIN, GATEWAY


def test_admin_health_and_readiness():
    assert requests.get(f"{ADMIN}/healthz", timeout=5).status_code == 200
    ready = requests.get(f"{ADMIN}/readyz", timeout=5)
    assert ready.status_code == 200, f"/readyz answered {ready.status_code}: {ready.text[:300]}"


def test_metadata_is_public(gw):
    resp = gw.get("metadata", decision="allow")
    assert resp.status_code == 200, resp.text[:500]
    doc = resp.json()
    assert doc["resourceType"] == "CapabilityStatement"
    assert doc.get("fhirVersion", "").startswith("4.0")


def test_request_id_is_generated_when_absent():
    resp = requests.get(f"{GATEWAY}/metadata", headers={"Accept": "application/fhir+json"}, timeout=10)
    assert resp.status_code == 200
    assert resp.headers.get("X-Request-Id", "").strip(), "no X-Request-Id on a response"


def test_request_id_on_refusals(gw):
    resp = gw.get("Patient", decision="deny")  # no token; gw checks the id is echoed
    assert resp.status_code == 401
