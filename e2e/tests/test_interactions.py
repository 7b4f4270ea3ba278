"""The harder FHIR interactions on the real server: includes, batches, transactions,
compartment searches, conditional writes and $everything, under patient/ scopes."""
from __future__ import annotations

import json

import pytest

from helpers import assert_refused, bundle_resources, parse_exact


@pytest.fixture(scope="module")
def reader(tokens, patient_a):
    return tokens.mint("patient/*.rs launch/patient", patient=patient_a.id)


@pytest.fixture(scope="module")
def writer(tokens, patient_a):
    return tokens.mint("patient/*.cruds launch/patient", patient=patient_a.id)


def keys_of(resources: list[dict]) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in resources if "id" in r}


def own_keys(patient) -> set[str]:
    return {f"{t}/{i}" for t, ids in patient.ids.items() if t != "Practitioner" for i in ids}


def assert_nothing_of(body: bytes, patient, what: str) -> None:
    text = body.decode("utf-8", "replace")
    leaked = sorted(rid for rid in patient.compartment_ids() if rid in text)
    assert not leaked, f"{what}: another patient's resource ids in the response: {leaked[:5]}"
    assert patient.family not in text, f"{what}: another patient's name in the response"


# ------------------------------------------------------------------ _include / _revinclude


def test_include_brings_the_own_patient_and_nothing_else(gw, direct, reader, patient_a, patient_b):
    params = {"patient": patient_a.id, "_include": "Observation:subject", "_count": "100"}
    resp = gw.get("Observation", reader, params=params, decision="allow", interaction="search-type",
                  resource_type="Observation")
    assert resp.status_code == 200, resp.text[:500]
    got = keys_of(bundle_resources(resp))
    assert f"Patient/{patient_a.id}" in got, "the included Patient is missing"
    assert got <= own_keys(patient_a), sorted(got - own_keys(patient_a))[:5]
    truth = keys_of(bundle_resources(direct.get("Observation", params=params)))
    assert got == truth, "the gateway dropped resources the grant covers"
    assert_nothing_of(resp.content, patient_b, "_include")


def test_include_of_a_type_outside_the_grant_is_refused(gw, tokens, patient_a):
    token = tokens.mint("patient/Observation.rs launch/patient", patient=patient_a.id)
    resp = gw.get("Observation", token, params={"patient": patient_a.id, "_include": "Observation:subject"},
                  decision="deny", interaction="search-type", resource_type="Observation")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")


def test_revinclude_brings_own_records_only(gw, direct, reader, patient_a, patient_b):
    params = {"_id": patient_a.id, "_revinclude": "Observation:subject", "_count": "100"}
    resp = gw.get("Patient", reader, params=params, decision="allow", interaction="search-type",
                  resource_type="Patient")
    assert resp.status_code == 200, resp.text[:500]
    got = keys_of(bundle_resources(resp))
    expected = {f"Patient/{patient_a.id}"} | {f"Observation/{i}" for i in patient_a.ids["Observation"]}
    truth = keys_of(bundle_resources(direct.get("Patient", params=params)))
    assert truth == expected, "upstream answer differs from e2e/data/index.json"
    assert got == expected, f"missing {sorted(expected - got)[:3]}, extra {sorted(got - expected)[:3]}"
    assert_nothing_of(resp.content, patient_b, "_revinclude")


def test_revinclude_on_another_patient_returns_nothing_of_theirs(gw, reader, patient_b):
    resp = gw.get("Patient", reader, params={"_id": patient_b.id, "_revinclude": "Observation:subject"},
                  interaction="search-type", resource_type="Patient")
    assert resp.status_code in (200, 403), resp.text[:500]
    if resp.status_code == 403:
        assert_refused(resp, 403, "insufficient_scope", "forbidden")
    else:
        assert not keys_of(bundle_resources(resp)) - {"OperationOutcome/"}
    assert_nothing_of(resp.content, patient_b, "_revinclude on another patient")


# ------------------------------------------------------------------ compartment searches


def test_own_compartment_search(gw, reader, patient_a):
    resp = gw.get(f"Patient/{patient_a.id}/Observation", reader, params={"_count": "100"}, decision="allow",
                  interaction="search-compartment", resource_type="Observation")
    assert resp.status_code == 200, resp.text[:500]
    got = keys_of(bundle_resources(resp))
    assert got == {f"Observation/{i}" for i in patient_a.ids["Observation"]}


def test_compartment_search_of_another_patient_is_refused(gw, reader, patient_b):
    resp = gw.get(f"Patient/{patient_b.id}/Observation", reader, decision="deny",
                  interaction="search-compartment", resource_type="Observation")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    assert_nothing_of(resp.content, patient_b, "compartment search")


# ------------------------------------------------------------------ batch and transaction


def test_batch_mixing_allowed_and_refused_entries(gw, direct, reader, patient_a, patient_b):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient_a.id}"}},
            {"request": {"method": "GET", "url": f"Patient/{patient_b.id}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={patient_a.id}&_count=100"}},
            {"request": {"method": "GET", "url": f"Observation/{patient_b.ids['Observation'][0]}"}},
        ],
    }
    resp = gw.request("POST", "", reader, json_body=bundle, decision="allow", interaction="batch")
    assert resp.status_code == 200, resp.text[:800]
    doc = parse_exact(resp.content)
    assert doc["resourceType"] == "Bundle" and doc["type"] == "batch-response"
    entries = doc["entry"]
    assert len(entries) == 4, "one response entry per request entry, in order"

    assert entries[0]["response"]["status"].startswith("200")
    truth = direct.get(f"Patient/{patient_a.id}")
    assert entries[0]["resource"] == parse_exact(truth.content)

    for n in (1, 3):
        assert entries[n]["response"]["status"].startswith("403"), entries[n]["response"]
        outcome = entries[n]["response"].get("outcome") or entries[n].get("resource")
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "forbidden"

    assert entries[2]["response"]["status"].startswith("200")
    found = keys_of([e["resource"] for e in entries[2]["resource"].get("entry", [])])
    assert found == {f"Observation/{i}" for i in patient_a.ids["Observation"]}
    assert_nothing_of(resp.content, patient_b, "batch")


def _observation(patient_id: str, code: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": 1, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"},
    }


def test_transaction_with_one_refused_entry_changes_nothing(gw, direct, writer, patient_a, patient_b):
    before_a = direct.count("Observation", patient=patient_a.id)
    before_b = direct.count("Observation", patient=patient_b.id)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:5b6f1a51-0000-4000-8000-000000000001",
             "resource": _observation(patient_a.id, "8867-4"), "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": "urn:uuid:5b6f1a51-0000-4000-8000-000000000002",
             "resource": _observation(patient_b.id, "8867-4"), "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    resp = gw.request("POST", "", writer, json_body=bundle, decision="deny", interaction="transaction")
    outcome = assert_refused(resp, 403, "insufficient_scope", "forbidden")
    where = json.dumps(outcome)
    assert "Bundle.entry[1]" in where, f"the refusal does not name the entry: {where}"
    assert direct.count("Observation", patient=patient_a.id) == before_a, "part of the transaction was applied"
    assert direct.count("Observation", patient=patient_b.id) == before_b


# ------------------------------------------------------------------ conditional update


def test_conditional_update_moving_a_record_to_another_patient_is_refused(gw, direct, writer, patient_a,
                                                                          patient_b):
    target = patient_a.ids["Observation"][1]
    before = direct.get(f"Observation/{target}")
    assert before.status_code == 200
    moved = json.loads(before.content)
    moved["subject"] = {"reference": f"Patient/{patient_b.id}"}
    resp = gw.request("PUT", f"Observation?_id={target}", writer, json_body=moved, decision="deny",
                      interaction="update", resource_type="Observation")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    after = direct.get(f"Observation/{target}")
    assert after.content == before.content, "the record was changed upstream"


def test_update_moving_a_record_to_another_patient_is_refused(gw, direct, writer, patient_a, patient_b):
    target = patient_a.ids["Observation"][2]
    before = direct.get(f"Observation/{target}")
    moved = json.loads(before.content)
    moved["subject"] = {"reference": f"Patient/{patient_b.id}"}
    resp = gw.request("PUT", f"Observation/{target}", writer, json_body=moved, decision="deny",
                      interaction="update", resource_type="Observation")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    assert direct.get(f"Observation/{target}").content == before.content


# ------------------------------------------------------------------ $everything


def test_everything_for_the_context_patient(gw, direct, reader, patient_a, patient_b):
    resp = gw.get(f"Patient/{patient_a.id}/$everything", reader, params={"_count": "500"}, decision="allow",
                  interaction="operation", resource_type="Patient")
    assert resp.status_code == 200, resp.text[:500]
    got = keys_of(bundle_resources(resp))
    assert f"Patient/{patient_a.id}" in got
    assert {f"Observation/{i}" for i in patient_a.ids["Observation"]} <= got
    assert_nothing_of(resp.content, patient_b, "$everything")


def test_everything_for_another_patient_is_refused(gw, reader, patient_b):
    resp = gw.get(f"Patient/{patient_b.id}/$everything", reader, decision="deny", interaction="operation",
                  resource_type="Patient")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    assert_nothing_of(resp.content, patient_b, "$everything of another patient")


def test_everything_needs_read_on_every_type(gw, tokens, patient_a):
    token = tokens.mint("patient/Observation.rs patient/Patient.rs launch/patient", patient=patient_a.id)
    resp = gw.get(f"Patient/{patient_a.id}/$everything", token, decision="deny", interaction="operation",
                  resource_type="Patient")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
