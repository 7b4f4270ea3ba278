"""SMART discovery through the gateway: a real SMART client library (Python fhirclient 4.4.0)
finds the real authorization server from `.well-known/smart-configuration` and `metadata`,
gets a token from the endpoint it found and reads data; and CORS for a browser app's origin."""
from __future__ import annotations

import json
import subprocess
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from fhirclient import client
from fhirclient.models.patient import Patient

from helpers import (
    CLIENT_SECRETS, FHIR_DIRECT, GATEWAY, IDP_URL, VALIDATOR_PYTHON, VALIDATOR_SCRIPT,
)

# the origin the cors section of e2e/fhirgate-e2e.yaml allows
APP_ORIGIN = "https://app.example.org"
OTHER_ORIGIN = "https://other.example.net"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


class RecordingAdapter(requests.adapters.HTTPAdapter):
    """Tags each request with a fresh X-Request-Id and remembers where it went."""

    def __init__(self, sent: list[tuple[str, str, str, requests.Response]]):
        super().__init__()
        self.sent = sent

    def send(self, request, **kwargs):
        request_id = str(uuid.uuid4())
        request.headers["X-Request-Id"] = request_id
        response = super().send(request, **kwargs)
        self.sent.append((request_id, request.method, request.url, response))
        return response


@pytest.fixture(scope="module")
def idp_document() -> dict:
    """The authorization server's own discovery document, fetched directly (ground truth)."""
    resp = requests.get(f"{IDP_URL}/.well-known/openid-configuration", timeout=10)
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()


@pytest.fixture(scope="module")
def smart():
    """A fhirclient that knows only the gateway's base: no token, no endpoints."""
    smart_client = client.FHIRClient(settings={"app_id": "fhirgate-e2e-discovery", "api_base": GATEWAY + "/",
                                               "redirect_uri": "http://127.0.0.1:9/callback"})
    sent: list[tuple[str, str, str, requests.Response]] = []
    adapter = RecordingAdapter(sent)
    smart_client.server.session.mount("http://", adapter)
    smart_client.server.session.mount("https://", adapter)
    smart_client.sent = sent
    return smart_client


def _record(gw, smart, start: int, token: str | None, decision: str, interaction: str,
            resource_type: str | None = None):
    """Register the library's requests with the audit and R4 checks that run last."""
    base_path = urlsplit(GATEWAY).path
    for request_id, method, url, response in smart.sent[start:]:
        assert response.headers.get("X-Request-Id") == request_id, "X-Request-Id not echoed"
        parts = urlsplit(url)
        gw.record(request_id, method, parts.path[len(base_path):].lstrip("/"), parts.query, response,
                  token, decision, interaction, resource_type)


def test_smart_configuration_is_made_from_the_real_idp(gw, idp_document):
    resp = gw.get(".well-known/smart-configuration", decision="allow", interaction="smart-configuration")
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    assert resp.headers.get("Cache-Control", "").startswith("public, max-age=")
    doc = resp.json()
    for member in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint"):
        assert doc[member] == idp_document[member], member
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["grant_types_supported"] == idp_document["grant_types_supported"]
    for capability in ("permission-v1", "permission-v2", "permission-patient", "permission-user",
                       "launch-standalone", "client-confidential-symmetric"):
        assert capability in doc["capabilities"], doc["capabilities"]
    assert ("permission-offline" in doc["capabilities"]) == (
        "offline_access" in idp_document.get("scopes_supported", [])
        and "refresh_token" in idp_document.get("grant_types_supported", []))


def test_fhirclient_discovers_the_authorization_server_through_the_gateway(gw, smart):
    start = len(smart.sent)
    config = smart.server.session.get(GATEWAY + "/.well-known/smart-configuration", timeout=10)
    assert config.status_code == 200
    _record(gw, smart, start, None, "allow", "smart-configuration")

    start = len(smart.sent)
    assert not smart.prepare(), "no token yet: the client must not be ready"
    _record(gw, smart, start, None, "allow", "capabilities")
    auth = smart.server.auth
    discovered = config.json()
    assert auth._authorize_uri == discovered["authorization_endpoint"]
    assert auth._token_uri == discovered["token_endpoint"]
    assert auth.authorize_uri(smart.server).startswith(discovered["authorization_endpoint"] + "?")
    statement = smart.server.capabilityStatement
    security = statement.rest[0].security
    assert any(c.code == "SMART-on-FHIR" for s in security.service for c in s.coding)
    assert security.cors is True, "the e2e configuration has a cors section"
    for _, _, url, _ in smart.sent:
        assert urlsplit(url).netloc == urlsplit(GATEWAY).netloc, f"fhirclient went to {url}"


def test_fhirclient_reads_with_a_token_from_the_discovered_endpoint(gw, smart, tokens, patient_a):
    token_uri = smart.server.auth._token_uri
    answer = requests.post(token_uri, data={"grant_type": "client_credentials", "scope": "patient/*.rs",
                                            "patient": patient_a.id},
                           auth=("patient-app", CLIENT_SECRETS["patient-app"]), timeout=10)
    assert answer.status_code == 200, answer.text[:300]
    token = tokens.remember(answer.json()["access_token"])
    smart.server.auth.access_token = token
    assert smart.ready
    start = len(smart.sent)
    patient = Patient.read(patient_a.id, smart.server)
    assert patient.id == patient_a.id
    assert patient.name[0].family == patient_a.family
    _record(gw, smart, start, token, "allow", "read", "Patient")


def test_metadata_is_a_valid_r4_capability_statement_without_the_upstream_base(gw):
    resp = gw.get("metadata", decision="allow", interaction="capabilities")
    assert resp.status_code == 200
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    assert FHIR_DIRECT not in resp.text, "the upstream's base leaked"
    doc = resp.json()
    assert doc["implementation"]["url"] == GATEWAY
    oauth = [e for e in doc["rest"][0]["security"]["extension"] if e["url"] == OAUTH_URIS]
    assert {e["url"] for e in oauth[0]["extension"]} >= {"authorize", "token"}
    result = subprocess.run([str(VALIDATOR_PYTHON), str(VALIDATOR_SCRIPT), "--type", "CapabilityStatement", "-"],
                            input=json.dumps(doc, separators=(",", ":")) + "\n", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"R4 validation failed:\n{result.stdout}\n{result.stderr}"


def test_cors_for_the_configured_origin_only(gw, tokens, patient_a):
    token = tokens.mint("patient/*.rs", patient=patient_a.id)
    preflight = gw.request("OPTIONS", f"Patient/{patient_a.id}", decision="allow",
                           headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET",
                                    "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204
    assert preflight.headers.get("Access-Control-Allow-Origin") == APP_ORIGIN
    assert "authorization" in preflight.headers.get("Access-Control-Allow-Headers", "").lower()
    assert "GET" in preflight.headers.get("Access-Control-Allow-Methods", "")

    read = gw.get(f"Patient/{patient_a.id}", token, headers={"Origin": APP_ORIGIN}, decision="allow",
                  interaction="read", resource_type="Patient")
    assert read.status_code == 200
    assert read.headers.get("Access-Control-Allow-Origin") == APP_ORIGIN
    refused = gw.get("Patient", headers={"Origin": APP_ORIGIN}, decision="deny")
    assert refused.status_code == 401
    assert refused.headers.get("Access-Control-Allow-Origin") == APP_ORIGIN
    assert "www-authenticate" in refused.headers.get("Access-Control-Expose-Headers", "").lower()

    other = gw.request("OPTIONS", f"Patient/{patient_a.id}", decision="deny",
                       headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "GET"})
    assert other.status_code == 403
    assert not [h for h in other.headers if h.lower().startswith("access-control-")]
    other_read = gw.get(f"Patient/{patient_a.id}", token, headers={"Origin": OTHER_ORIGIN}, decision="allow",
                        interaction="read", resource_type="Patient")
    assert other_read.status_code == 200
    assert not [h for h in other_read.headers if h.lower().startswith("access-control-")]
