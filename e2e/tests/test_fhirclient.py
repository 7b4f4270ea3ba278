"""A real SMART client library (Python fhirclient 4.4.0) through the gateway."""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
import requests
from fhirclient import client, server
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

from helpers import GATEWAY


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
def smart(tokens, patient_a):
    token = tokens.mint("patient/*.rs launch/patient", patient=patient_a.id)
    state = {
        "app_id": "fhirgate-e2e",
        "server": {
            "base_uri": GATEWAY + "/",  # fhirclient joins paths with urljoin: keep the slash
            "auth_type": "oauth2",
            "auth": {"app_id": "fhirgate-e2e", "access_token": token},
        },
    }
    smart_client = client.FHIRClient(state=state)
    sent: list[tuple[str, str, str, requests.Response]] = []
    adapter = RecordingAdapter(sent)
    smart_client.server.session.mount("http://", adapter)
    smart_client.server.session.mount("https://", adapter)
    smart_client.sent = sent
    return smart_client


def _record(gw, smart, start: int, decision: str, interaction: str, resource_type: str):
    """Register the library's requests with the audit and R4 checks that run last."""
    base_path = urlsplit(GATEWAY).path
    for request_id, method, url, response in smart.sent[start:]:
        assert response.headers.get("X-Request-Id") == request_id, "X-Request-Id not echoed"
        parts = urlsplit(url)
        gw.record(request_id, method, parts.path[len(base_path):].lstrip("/"), parts.query, response,
                  smart.server.auth.access_token, decision, interaction, resource_type)


def test_fhirclient_reads_own_patient(gw, smart, patient_a):
    start = len(smart.sent)
    patient = Patient.read(patient_a.id, smart.server)
    assert patient.id == patient_a.id
    assert patient.name[0].family == patient_a.family
    _record(gw, smart, start, "allow", "read", "Patient")


def test_fhirclient_searches_own_observations(gw, smart, patient_a, patient_b):
    start = len(smart.sent)
    search = Observation.where(struct={"patient": patient_a.id, "_count": "100"})
    bundle = search.perform(smart.server)  # first page only; never follows Bundle.link itself
    ids = {entry.resource.id for entry in (bundle.entry or [])}
    assert ids, "no Observations through fhirclient"
    assert ids <= set(patient_a.ids["Observation"])
    assert not ids & patient_b.compartment_ids()
    _record(gw, smart, start, "allow", "search-type", "Observation")


def test_fhirclient_refusal_surfaces_as_http_error(gw, smart, patient_b):
    start = len(smart.sent)
    # fhirclient raises its own exception for 403 (requests.HTTPError for other codes)
    with pytest.raises(server.FHIRPermissionDeniedException) as caught:
        Patient.read(patient_b.id, smart.server)
    assert caught.value.response.status_code == 403
    assert caught.value.response.json()["resourceType"] == "OperationOutcome"
    _record(gw, smart, start, "deny", "read", "Patient")


def test_fhirclient_talked_only_to_the_gateway(smart):
    gateway = urlsplit(GATEWAY)
    assert smart.sent, "fhirclient sent nothing"
    for _, _, url, _ in smart.sent:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == (gateway.scheme, gateway.netloc), f"fhirclient went to {url}"
        assert parts.path.startswith(gateway.path + "/"), f"fhirclient left the FHIR base: {url}"
