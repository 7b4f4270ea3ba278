"""Content negotiation through the running gateway, and its own answers in JSON and XML.

Refusals of each kind are asked for in JSON and in XML; every answer is written to a folder
and validated by e2e/validator/validate_outcomes.py (R4 JSON with fhir.resources, R4 XML by
its rules, the two formats of one refusal saying the same thing). The rules: docs/FORMATS.md.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import FHIR_JSON, GATEWAY, ROOT, VALIDATOR_PYTHON

OUTCOME_VALIDATOR = ROOT / "e2e" / "validator" / "validate_outcomes.py"
FHIR_XML = "application/fhir+xml"
JSON_TYPE = "application/fhir+json; charset=utf-8"
XML_TYPE = "application/fhir+xml; charset=utf-8"
# the gateway's origin, for a path outside its FHIR base
ORIGIN = GATEWAY.rsplit("/", 1)[0]


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> Path:
    """The folder every gateway answer of this module is written to, as NAME.json / NAME.xml."""
    return tmp_path_factory.mktemp("outcomes")


@pytest.fixture(scope="module")
def token_a(tokens, patient_a) -> str:
    return tokens.mint("patient/*.rs", patient=patient_a.id)


@pytest.fixture(scope="module")
def patient_only(tokens, patient_a) -> str:
    return tokens.mint("patient/Patient.rs", patient=patient_a.id)


@pytest.fixture(scope="module")
def system_token(tokens) -> str:
    return tokens.mint("system/Patient.rs", client="system-app")


@pytest.fixture(scope="module")
def invalid_token(tokens, token_a) -> str:
    header, payload, signature = token_a.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return tokens.remember(f"{header}.{payload}.{flipped}")


def save(folder: Path, name: str, resp) -> None:
    """Writes an answer for the validator, by the format its Content-Type names."""
    kind = "xml" if resp.headers.get("Content-Type", "").startswith(FHIR_XML) else "json"
    path = folder / f"{name}.{kind}"
    assert not path.exists(), f"{path.name} written twice"
    path.write_bytes(resp.content)


def outside_base(gw, path: str, headers: dict):
    """A request to the gateway's origin outside its FHIR base, recorded like gw's own."""
    request_id = str(uuid.uuid4())
    resp = gw.session.get(f"{ORIGIN}/{path}", headers={**headers, "X-Request-Id": request_id}, timeout=30)
    assert resp.headers.get("X-Request-Id") == request_id
    gw.record(request_id, "GET", f"/{path}", "", resp, None, "deny", None, None)
    return resp


# (name, status, issue code, token fixture or None, path, params)
REFUSALS = [
    ("missing_token", 401, "login", None, "Patient/{a}", {}),
    ("invalid_token", 401, "unknown", "invalid_token", "Patient/{a}", {}),
    ("other_patient", 403, "forbidden", "token_a", "Patient/{b}", {}),
    ("insufficient_scope", 403, "forbidden", "patient_only", "Observation", {"patient": "{a}"}),
]
# how a client asks for each format
ASK = {
    "json": ({"Accept": FHIR_JSON}, {}),
    "xml": ({"Accept": FHIR_XML}, {}),
    "xml_by_format": ({"Accept": FHIR_JSON}, {"_format": "xml"}),
}


def fill(value: str, patient_a, patient_b) -> str:
    return value.replace("{a}", patient_a.id).replace("{b}", patient_b.id)


@pytest.mark.parametrize("ask", list(ASK), ids=list(ASK))
@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusals_speak_the_format_asked_for(request, gw, answers, patient_a, patient_b, case, ask):
    name, status, code, token_name, path, params = case
    headers, format_params = ASK[ask]
    token = request.getfixturevalue(token_name) if token_name else None
    query = {k: fill(v, patient_a, patient_b) for k, v in params.items()} | format_params
    resp = gw.get(fill(path, patient_a, patient_b), token, params=query, headers=headers, decision="deny",
                  resource_type=path.split("/")[0])
    assert resp.status_code == status, resp.text[:300]
    if ask == "json":
        assert resp.headers["Content-Type"] == JSON_TYPE
        assert resp.json()["issue"][0]["code"] == code
    else:
        assert resp.headers["Content-Type"] == XML_TYPE
        assert f'<code value="{code}"/>' in resp.text
    if ask != "xml_by_format":
        save(answers, name, resp)


@pytest.mark.parametrize("ask", ["json", "xml"])
def test_unknown_route_speaks_the_format_asked_for(gw, answers, ask):
    resp = outside_base(gw, "not-fhir/Patient", ASK[ask][0])
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == (JSON_TYPE if ask == "json" else XML_TYPE)
    save(answers, "unknown_route", resp)


NOT_ACCEPTABLE = [
    ("format_html", {"_format": "html"}, {"Accept": FHIR_XML}),
    ("format_turtle", {"_format": "ttl"}, {}),
    ("accept_html", {}, {"Accept": "text/html"}),
    ("accept_turtle", {}, {"Accept": "application/fhir+turtle, text/turtle;q=0.5"}),
    ("accept_excludes_both", {}, {"Accept": "application/fhir+json;q=0, application/fhir+xml;q=0"}),
    ("fhir_version_3", {}, {"Accept": "application/fhir+json; fhirVersion=3.0"}),
]


@pytest.mark.parametrize("case", NOT_ACCEPTABLE, ids=[c[0] for c in NOT_ACCEPTABLE])
def test_formats_the_gateway_does_not_write_are_406_in_json(gw, answers, token_a, patient_a, case):
    name, params, headers = case
    resp = gw.get(f"Patient/{patient_a.id}", token_a, params=params, headers=headers, decision="deny",
                  interaction="read", resource_type="Patient")
    assert resp.status_code == 406, resp.text[:300]
    assert resp.headers["Content-Type"] == JSON_TYPE
    issue = resp.json()["issue"][0]
    assert issue["code"] == "not-supported"
    assert "application/fhir+json" in issue["details"]["text"]
    save(answers, f"not_acceptable_{name}", resp)


def test_an_unsatisfiable_accept_does_not_hide_a_missing_token(gw, answers, patient_a):
    resp = gw.get(f"Patient/{patient_a.id}", None, headers={"Accept": "text/html"}, decision="deny",
                  resource_type="Patient")
    assert resp.status_code == 401
    assert resp.headers["Content-Type"] == JSON_TYPE
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="fhirgate"'
    save(answers, "missing_token_accept_html", resp)


def own_observation(patient) -> str:
    """An Observation of the patient: reading it under patient/ scopes is checked."""
    return f"Observation/{patient.ids['Observation'][0]}"


@pytest.mark.parametrize("how", ["accept", "format", "format_mime"])
def test_xml_for_a_checked_response_is_refused_before_the_upstream(gw, answers, token_a, patient_a, how):
    headers, params = {
        "accept": ({"Accept": FHIR_XML}, {}),
        "format": ({}, {"_format": "xml"}),
        "format_mime": ({}, {"_format": "application/fhir+xml; fhirVersion=4.0"}),
    }[how]
    resp = gw.get(own_observation(patient_a), token_a, params=params, headers=headers, decision="deny",
                  interaction="read", resource_type="Observation")
    assert resp.status_code == 406, resp.text[:300]
    assert resp.headers["Content-Type"] == XML_TYPE
    assert 'value="not-supported"' in resp.text
    assert "_format=json" in resp.text
    save(answers, f"json_required_{how}", resp)


def test_checked_responses_come_back_in_json(gw, token_a, patient_a):
    for params, headers in [({"_format": "json"}, {"Accept": FHIR_XML}),
                            ({"_format": "json", "x": "1"}, {}),
                            ({}, {"Accept": "application/fhir+xml;q=0.5, application/fhir+json"}),
                            ({}, {"Accept": "*/*"})]:
        resp = gw.get(own_observation(patient_a), token_a, params=params, headers=headers, decision="allow",
                      interaction="read", resource_type="Observation")
        assert resp.status_code == 200, resp.text[:300]
        assert resp.headers["Content-Type"].startswith(FHIR_JSON)
        assert resp.json()["id"] == patient_a.ids["Observation"][0]


def test_format_parameters_that_disagree_are_not_acceptable(gw, token_a, patient_a):
    """Servers differ in which of several `_format`s they obey, so the gateway answers only
    when they agree: `_format=json&_format=xml` is a 406 (in JSON) before the upstream, for
    checked and unchecked responses alike; `_format=json&_format=json` is JSON."""
    # A checked read, and the launch patient's own Patient resource, which passes unchecked.
    for path, resource_type in ((own_observation(patient_a), "Observation"), (f"Patient/{patient_a.id}", "Patient")):
        resp = gw.get(f"{path}?_format=json&_format=xml", token_a, decision="deny",
                      interaction="read", resource_type=resource_type)
        assert resp.status_code == 406, resp.text[:300]
        assert resp.headers["Content-Type"].startswith(FHIR_JSON)
    resp = gw.get(f"{own_observation(patient_a)}?_format=json&_format=json", token_a, decision="allow",
                  interaction="read", resource_type="Observation")
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["id"] == patient_a.ids["Observation"][0]


@pytest.mark.parametrize("how", ["accept", "format", "own_patient"])
def test_unchecked_responses_pass_the_upstreams_xml(gw, system_token, token_a, patient_a, how):
    """Unrestricted system/ scopes, and the launch patient's own Patient resource, are not
    checked: the upstream's XML passes through."""
    headers, params = ({"Accept": FHIR_XML}, {}) if how == "accept" else ({}, {"_format": "xml"})
    token = token_a if how == "own_patient" else system_token
    resp = gw.get(f"Patient/{patient_a.id}", token, params=params, headers=headers, decision="allow",
                  interaction="read", resource_type="Patient")
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["Content-Type"].startswith(FHIR_XML)
    assert "<Patient" in resp.text and f'<id value="{patient_a.id}"/>' in resp.text


def test_public_metadata_negotiates_too(gw, answers):
    xml = gw.get("metadata", None, params={"_format": "xml"}, decision="allow", interaction="capabilities")
    assert xml.status_code == 200
    assert xml.headers["Content-Type"].startswith(FHIR_XML)
    assert "<CapabilityStatement" in xml.text
    html = gw.get("metadata", None, params={"_format": "html"}, decision="deny", interaction="capabilities")
    assert html.status_code == 406
    assert html.headers["Content-Type"] == JSON_TYPE
    save(answers, "not_acceptable_metadata_html", html)


def test_every_answer_validates(answers):
    """Runs last in this module: every answer written above, through the validator."""
    files = sorted(p.name for p in answers.iterdir())
    assert len(files) >= 20, f"too few answers written: {files}"
    for name in ("missing_token", "invalid_token", "other_patient", "insufficient_scope", "unknown_route"):
        assert f"{name}.json" in files and f"{name}.xml" in files, f"{name}: both formats expected"
    if not VALIDATOR_PYTHON.exists():
        pytest.fail(f"the R4 validator venv is missing ({VALIDATOR_PYTHON}); scripts/test.sh installs it")
    result = subprocess.run([str(VALIDATOR_PYTHON), str(OUTCOME_VALIDATOR), str(answers)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"validation failed:\n{result.stdout}\n{result.stderr}"


def test_refusal_samples_of_the_unit_tests_validate():
    """The snapshot bodies of every refusal kind (crates/fhirgate/tests/outcomes.rs), when
    scripts/test.sh had the unit tests write them (FHIRGATE_OUTCOME_SAMPLES)."""
    folder = os.environ.get("FHIRGATE_OUTCOME_SAMPLES")
    if not folder or not Path(folder).is_dir():
        pytest.skip("FHIRGATE_OUTCOME_SAMPLES names no folder: the unit tests did not run in this session")
    result = subprocess.run([str(VALIDATOR_PYTHON), str(OUTCOME_VALIDATOR), folder],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"validation failed:\n{result.stdout}\n{result.stderr}"
    assert "0 invalid" in result.stdout.splitlines()[-1]
