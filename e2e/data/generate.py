#!/usr/bin/env python3
"""Generate the synthetic end-to-end data set for fhirgate.

Runs the `carebundle` generator (deterministic by seed) once per patient, then rewrites
every transaction so ids are fixed and known to the tests:

* each entry becomes `PUT Type/id` with `resource.id` = the entry's urn:uuid,
* every `urn:uuid:` reference becomes `Type/id`,
* patients lacking one of Observation, Condition, Encounter or MedicationRequest get a
  synthetic entry of that type, so every patient has at least one of each.

A shared bundle adds resources outside any patient compartment (Organization, Medication).
`index.json` lists the patients with their ids and resource ids per type.

Run through scripts/gen-data.sh, which provides a throwaway venv with carebundle.
All data is synthetic; no real person is described.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# (file stem, carebundle profile, seed, sex)
PATIENTS = [
    ("01-type2-diabetes", "type2_diabetes", 101, "F"),
    ("02-hypertension", "hypertension", 202, "M"),
    ("03-ckd-stage3", "ckd_stage3", 303, "F"),
    ("04-anaemia", "anaemia", 404, "M"),
]
REFERENCE_DATE = "2026-01-01"
REQUIRED_TYPES = ("Observation", "Condition", "Encounter", "MedicationRequest")
SECURITY_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}
SHARED_ORGANIZATION_ID = "org-fhirgate-e2e-clinic"
SHARED_MEDICATION_ID = "med-fhirgate-e2e-metformin"


def carebundle_bin() -> str:
    candidate = Path(sys.executable).parent / "carebundle"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("carebundle")
    if not found:
        sys.exit("carebundle is not installed; run scripts/gen-data.sh")
    return found


def generate_one(profile: str, seed: int, sex: str, workdir: Path) -> dict:
    out = workdir / f"{profile}-{seed}"
    subprocess.run(
        [
            carebundle_bin(), "generate",
            "--profile", profile,
            "--count", "1",
            "--seed", str(seed),
            "--sex", sex,
            "--reference-date", REFERENCE_DATE,
            "--out", str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    files = sorted(out.glob("*.json"))
    if len(files) != 1:
        sys.exit(f"expected one bundle from carebundle in {out}, found {len(files)}")
    return json.loads(files[0].read_text())


def rewrite_references(node, urn_to_ref: dict[str, str]):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value.startswith("urn:uuid:"):
                if value not in urn_to_ref:
                    sys.exit(f"dangling reference {value}")
                node[key] = urn_to_ref[value]
            else:
                rewrite_references(value, urn_to_ref)
    elif isinstance(node, list):
        for item in node:
            rewrite_references(item, urn_to_ref)


def narrative(text: str) -> dict:
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p><b>SYNTHETIC TEST DATA \u2014 not a real person.</b></p><p>{text}</p></div>',
    }


def filler(rtype: str, patient_id: str, encounter_id: str | None, stem: str) -> dict:
    """A small synthetic resource of a required type the generator did not emit."""
    rid = f"{stem}-{rtype.lower()}-1"
    subject = {"reference": f"Patient/{patient_id}"}
    meta = {"security": [SECURITY_TAG]}
    if rtype == "Encounter":
        return {
            "resourceType": "Encounter", "id": rid, "meta": meta,
            "text": narrative("Ambulatory encounter (synthetic)."),
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "subject": subject,
            "period": {"start": f"{REFERENCE_DATE}T09:00:00Z", "end": f"{REFERENCE_DATE}T09:30:00Z"},
        }
    enc = {"encounter": {"reference": f"Encounter/{encounter_id}"}} if encounter_id else {}
    if rtype == "Condition":
        return {
            "resourceType": "Condition", "id": rid, "meta": meta,
            "text": narrative("Condition: Vitamin D deficiency (synthetic)."),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E55.9", "display": "Vitamin D deficiency, unspecified"}],
                     "text": "Vitamin D deficiency"},
            "subject": subject, **enc,
        }
    if rtype == "MedicationRequest":
        return {
            "resourceType": "MedicationRequest", "id": rid, "meta": meta,
            "text": narrative("Prescription: cholecalciferol (synthetic)."),
            "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "316965",
                                                      "display": "cholecalciferol 1000 UNT Oral Tablet"}]},
            "subject": subject, **enc, "authoredOn": REFERENCE_DATE,
        }
    if rtype == "Observation":
        return {
            "resourceType": "Observation", "id": rid, "meta": meta,
            "text": narrative("Body weight: 70 kg (synthetic)."),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "subject": subject, **enc, "effectiveDateTime": f"{REFERENCE_DATE}T09:00:00Z",
            "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        }
    raise ValueError(rtype)


def put_entry(resource: dict) -> dict:
    rtype, rid = resource["resourceType"], resource["id"]
    return {"fullUrl": f"urn:uuid:{rid}" if is_uuid(rid) else f"{rtype}/{rid}",
            "resource": resource,
            "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}


def is_uuid(value: str) -> bool:
    parts = value.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12]


def rewrite_bundle(bundle: dict, stem: str) -> tuple[dict, dict]:
    if bundle.get("type") != "transaction":
        sys.exit(f"{stem}: expected a transaction bundle")
    urn_to_ref: dict[str, str] = {}
    for entry in bundle["entry"]:
        urn = entry.get("fullUrl", "")
        if not urn.startswith("urn:uuid:"):
            sys.exit(f"{stem}: entry without urn:uuid fullUrl")
        urn_to_ref[urn] = f"{entry['resource']['resourceType']}/{urn[len('urn:uuid:'):]}"

    resources = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        resource["id"] = entry["fullUrl"][len("urn:uuid:"):]
        rewrite_references(resource, urn_to_ref)
        resources.append(resource)

    patients = [r for r in resources if r["resourceType"] == "Patient"]
    if len(patients) != 1:
        sys.exit(f"{stem}: expected one Patient, found {len(patients)}")
    patient = patients[0]
    encounters = [r for r in resources if r["resourceType"] == "Encounter"]
    counts = collections.Counter(r["resourceType"] for r in resources)
    for rtype in REQUIRED_TYPES:
        if counts[rtype] == 0:
            added = filler(rtype, patient["id"], encounters[0]["id"] if encounters else None, stem)
            resources.append(added)
            if rtype == "Encounter":
                encounters.append(added)

    out = {"resourceType": "Bundle", "type": "transaction", "entry": [put_entry(r) for r in resources]}
    ids: dict[str, list[str]] = collections.defaultdict(list)
    for r in resources:
        ids[r["resourceType"]].append(r["id"])
    name = patient.get("name", [{}])[0]
    info = {
        "id": patient["id"],
        "family": name.get("family"),
        "given": name.get("given", []),
        "gender": patient.get("gender"),
        "birthDate": patient.get("birthDate"),
        "counts": {t: len(v) for t, v in sorted(ids.items())},
        "ids": {t: sorted(v) for t, v in sorted(ids.items())},
    }
    return out, info


def shared_bundle() -> tuple[dict, dict]:
    meta = {"security": [SECURITY_TAG]}
    organization = {
        "resourceType": "Organization", "id": SHARED_ORGANIZATION_ID, "meta": meta,
        "text": narrative("fhirgate Test Clinic (synthetic)."),
        "active": True, "name": "fhirgate Test Clinic (synthetic)",
        "telecom": [{"system": "phone", "value": "+1-555-0100", "use": "work"}],
    }
    medication = {
        "resourceType": "Medication", "id": SHARED_MEDICATION_ID, "meta": meta,
        "text": narrative("metformin hydrochloride 500 MG Oral Tablet (synthetic)."),
        "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "861007",
                             "display": "metformin hydrochloride 500 MG Oral Tablet"}]},
        "manufacturer": {"reference": f"Organization/{SHARED_ORGANIZATION_ID}"},
    }
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [put_entry(organization), put_entry(medication)]}
    return bundle, {"Organization": [SHARED_ORGANIZATION_ID], "Medication": [SHARED_MEDICATION_ID]}


def dump(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output folder (default: e2e/data)")
    args = parser.parse_args()
    out = Path(args.out)
    bundles_dir = out / "bundles"
    bundles_dir.mkdir(parents=True, exist_ok=True)
    for old in bundles_dir.glob("*.json"):
        old.unlink()

    index = {
        "description": "Synthetic FHIR R4 test data for fhirgate (carebundle 0.5.0, rewritten to PUT Type/id). Not real people.",
        "generator": "carebundle==0.5.0",
        "reference_date": REFERENCE_DATE,
        "bundles": [],
        "patients": [],
        "shared": {},
    }
    bundle, shared_ids = shared_bundle()
    dump(bundles_dir / "00-shared.json", bundle)
    index["bundles"].append("bundles/00-shared.json")
    index["shared"] = shared_ids

    with tempfile.TemporaryDirectory(prefix="fhirgate-gen-") as tmp:
        for stem, profile, seed, sex in PATIENTS:
            raw = generate_one(profile, seed, sex, Path(tmp))
            rewritten, info = rewrite_bundle(raw, stem)
            dump(bundles_dir / f"{stem}.json", rewritten)
            index["bundles"].append(f"bundles/{stem}.json")
            index["patients"].append({"file": f"bundles/{stem}.json", "profile": profile, "seed": seed, **info})
            # practitioners are outside the patient compartment too
            for pid in info["ids"].get("Practitioner", []):
                index["shared"].setdefault("Practitioner", []).append(pid)

    for p in index["patients"]:
        missing = [t for t in REQUIRED_TYPES if p["counts"].get(t, 0) == 0]
        if missing:
            sys.exit(f"patient {p['id']} lacks {missing}")
    dump(out / "index.json", index)
    total = sum(f.stat().st_size for f in bundles_dir.glob("*.json"))
    print(json.dumps({"patients": [p["id"] for p in index["patients"]], "bundle_bytes": total}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
