"""Patient-context access through the gateway, compared with the upstream server itself."""
from __future__ import annotations

import copy
import json

import pytest

from helpers import GATEWAY, assert_refused, bundle_resources, parse_exact

READ_SCOPES = [
    "patient/*.rs",
    "patient/Patient.rs patient/Observation.rs launch/patient",
]


@pytest.fixture(scope="module", params=READ_SCOPES, ids=["wildcard", "per-type"])
def token_a(request, tokens, patient_a):
    return tokens.mint(request.param, patient=patient_a.id)


def by_id(resources: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in resources:
        key = f"{r['resourceType']}/{r['id']}"
        assert key not in out, f"{key} appears twice"
        out[key] = r
    return out


def assert_nothing_of(body: bytes, patient, what: str) -> None:
    text = body.decode("utf-8", "replace")
    leaked = sorted(rid for rid in patient.compartment_ids() if rid in text)
    assert not leaked, f"{what}: ids of another patient's resources in the response: {leaked[:5]}"
    assert patient.family not in text, f"{what}: another patient's name ({patient.family}) in the response"


# ------------------------------------------------------------------ own data


def test_read_own_patient_is_byte_identical(gw, direct, token_a, patient_a):
    resp = gw.get(f"Patient/{patient_a.id}", token_a, decision="allow", interaction="read", resource_type="Patient")
    assert resp.status_code == 200, resp.text[:500]
    truth = direct.get(f"Patient/{patient_a.id}")
    assert truth.status_code == 200
    assert resp.content == truth.content, "gateway body differs from the upstream's"
    assert resp.headers["Content-Type"].startswith("application/fhir+json")


@pytest.mark.parametrize("with_patient_param", [True, False], ids=["patient-param", "narrowed"])
def test_search_own_observations(gw, direct, token_a, patient_a, with_patient_param):
    params = {"_count": "100"}
    if with_patient_param:
        params["patient"] = patient_a.id
    resp = gw.get("Observation", token_a, params=params, decision="allow", interaction="search-type",
                  resource_type="Observation")
    assert resp.status_code == 200, resp.text[:500]
    got = by_id(bundle_resources(resp))
    assert got, "no Observations returned for the token's own patient"

    truth = direct.get("Observation", params={"patient": patient_a.id, "_count": "100"})
    assert truth.status_code == 200
    expected = by_id(bundle_resources(truth))
    own = {f"Observation/{rid}" for rid in patient_a.ids["Observation"]}
    assert set(expected) == own, "upstream data differs from e2e/data/index.json; reload the stack"

    matches = [k for k in got if k.startswith("Observation/")]
    assert set(matches) <= own, f"Observations of other patients returned: {sorted(set(matches) - own)[:5]}"
    doc = parse_exact(resp.content)
    if not any(link.get("relation") == "next" for link in doc.get("link", [])):
        assert set(matches) == own, f"missing own Observations: {sorted(own - set(matches))[:5]}"
    for key in matches:
        assert got[key] == expected[key], f"{key} differs from the upstream's copy"


def _next_link(resp) -> str | None:
    for link in parse_exact(resp.content).get("link", []):
        if link.get("relation") == "next":
            return link["url"]
    return None


def test_paging_through_the_gateway_stays_in_the_compartment(gw, token_a, patient_a, patient_b):
    """Follow next links through the gateway (re-based onto it when the upstream's leak)."""
    own = set(patient_a.ids["Observation"])
    seen: set[str] = set()
    resp = gw.get("Observation", token_a, params={"_count": "10"}, decision="allow", interaction="search-type",
                  resource_type="Observation")
    for _ in range(10):
        assert resp.status_code == 200, resp.text[:500]
        ids = {r["id"] for r in bundle_resources(resp) if r["resourceType"] == "Observation"}
        assert ids <= own, f"another patient's Observations on a page: {sorted(ids - own)[:5]}"
        assert_nothing_of(resp.content, patient_b, "search page")
        seen |= ids
        url = _next_link(resp)
        if not url:
            break
        if not url.startswith(GATEWAY + "/"):
            pytest.fail(f"next link does not point at the gateway: {url}")
        url = url[len(GATEWAY) + 1:]
        resp = gw.get(url, token_a, decision="allow", interaction="search-type", resource_type="Observation")
    assert seen == own, f"paging missed own Observations: {sorted(own - seen)[:5]}"


# ------------------------------------------------------------------ another patient's data


def test_read_other_patient_is_forbidden(gw, token_a, patient_b):
    resp = gw.get(f"Patient/{patient_b.id}", token_a, decision="deny", interaction="read", resource_type="Patient")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    assert_nothing_of(resp.content, patient_b, "read of another Patient")


def test_read_other_patients_observation_is_forbidden(gw, token_a, patient_b):
    obs_id = patient_b.ids["Observation"][0]
    resp = gw.get(f"Observation/{obs_id}", token_a, decision="deny", interaction="read",
                  resource_type="Observation")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    assert_nothing_of(resp.content, patient_b, "read of another patient's Observation")


def test_head_of_another_patients_observation_is_refused_like_its_get(gw, token_a, patient_b, patient_a):
    # HEAD carries ETag and Content-Length of the body: it is checked as the GET would be.
    obs_id = patient_b.ids["Observation"][0]
    resp = gw.request("HEAD", f"Observation/{obs_id}", token_a, decision="deny", interaction="read",
                      resource_type="Observation")
    assert resp.status_code == 403, resp.headers
    assert "ETag" not in resp.headers
    own = patient_a.ids["Observation"][0]
    resp = gw.request("HEAD", f"Observation/{own}", token_a, decision="allow", interaction="read",
                      resource_type="Observation")
    assert resp.status_code == 200 and resp.content == b""


def test_a_search_value_naming_the_public_base_comes_back_public(gw, token_a, patient_a):
    # The value reaches the upstream under its own base, and the upstream echoes it
    # percent-encoded in its links: those name the public base again (test_zz_leaks searches
    # this answer with the others).
    resp = gw.get("Observation", token_a, params={"patient": patient_a.id, "code": f"{GATEWAY}/x", "_count": "1"},
                  decision="allow", interaction="search-type", resource_type="Observation")
    assert resp.status_code == 200, resp.text[:500]
    links = " ".join(link["url"] for link in resp.json().get("link", []))
    assert "code=" in links, links


@pytest.mark.parametrize("param,value", [
    ("patient", "{b}"),
    ("patient", "Patient/{b}"),
    ("subject", "Patient/{b}"),
], ids=["patient=B", "patient=Patient/B", "subject=Patient/B"])
def test_search_other_patient_yields_nothing_of_theirs(gw, token_a, patient_b, param, value):
    resp = gw.get("Observation", token_a, params={param: value.format(b=patient_b.id), "_count": "100"},
                  interaction="search-type", resource_type="Observation")
    assert resp.status_code in (200, 403), f"unexpected {resp.status_code}: {resp.text[:500]}"
    if resp.status_code == 403:
        assert_refused(resp, 403, "insufficient_scope", "forbidden")
    else:
        ids = {r["id"] for r in bundle_resources(resp)}
        assert not ids & patient_b.compartment_ids(), "another patient's Observations returned"
    assert_nothing_of(resp.content, patient_b, f"Observation?{param}=B")


# ------------------------------------------------------------------ writes with read-only scopes


def _observation_for(patient_id: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-01-02T09:00:00Z",
        "valueQuantity": {"value": 71.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }


def test_writes_with_read_only_scopes_never_reach_the_upstream(gw, direct, token_a, patient_a):
    count_before = direct.count("Observation", patient=patient_a.id)
    target = patient_a.ids["Observation"][0]
    before = direct.get(f"Observation/{target}")
    assert before.status_code == 200

    created = gw.request("POST", "Observation", token_a, json_body=_observation_for(patient_a.id),
                         decision="deny", interaction="create", resource_type="Observation")
    assert_refused(created, 403, "insufficient_scope", "forbidden")

    changed = copy.deepcopy(json.loads(before.content))
    changed["status"] = "entered-in-error"
    updated = gw.request("PUT", f"Observation/{target}", token_a, json_body=changed,
                         decision="deny", interaction="update", resource_type="Observation")
    assert_refused(updated, 403, "insufficient_scope", "forbidden")

    deleted = gw.request("DELETE", f"Observation/{target}", token_a,
                         decision="deny", interaction="delete", resource_type="Observation")
    assert_refused(deleted, 403, "insufficient_scope", "forbidden")

    assert direct.count("Observation", patient=patient_a.id) == count_before, "the upstream gained or lost data"
    after = direct.get(f"Observation/{target}")
    assert after.status_code == 200, "the Observation was deleted upstream"
    assert after.content == before.content, "the Observation was changed upstream"


# ------------------------------------------------------------------ missing type scope


def test_search_without_type_scope_is_insufficient_scope(gw, tokens, patient_a):
    token = tokens.mint("patient/Patient.rs", patient=patient_a.id)
    resp = gw.get("Observation", token, params={"patient": patient_a.id}, decision="deny",
                  interaction="search-type", resource_type="Observation")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    own = gw.get(f"Patient/{patient_a.id}", token, decision="allow", interaction="read", resource_type="Patient")
    assert own.status_code == 200, "the Patient scope alone should still read the own Patient"


def test_read_without_type_scope_is_insufficient_scope(gw, tokens, patient_a):
    token = tokens.mint("patient/Patient.rs", patient=patient_a.id)
    resp = gw.get(f"Observation/{patient_a.ids['Observation'][0]}", token, decision="deny", interaction="read",
                  resource_type="Observation")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")


def test_token_without_any_scope_is_refused(gw, tokens, patient_a):
    token = tokens.mint("launch/patient", patient=patient_a.id)
    resp = gw.get(f"Patient/{patient_a.id}", token, decision="deny", interaction="read", resource_type="Patient")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
