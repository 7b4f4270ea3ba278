#!/usr/bin/env python3
"""A small SMART client that shows what fhirgate allows and refuses.

It fetches tokens from the test authorization server, talks to the gateway with the
Python `fhirclient` library, and prints one line per attempt. Run by scripts/demo.sh.

Environment: FHIRGATE_URL (http://127.0.0.1:8080/fhir), IDP_URL (http://127.0.0.1:9000),
FHIRGATE_AUDIT (audit file to show at the end).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import requests
from fhirclient import client, server
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = os.environ.get("FHIRGATE_URL", "http://127.0.0.1:8080/fhir").rstrip("/")
IDP_URL = os.environ.get("IDP_URL", "http://127.0.0.1:9000").rstrip("/")
AUDIT = os.environ.get("FHIRGATE_AUDIT", "fhirgate-audit.jsonl")

GREEN, RED, DIM, BOLD, RESET = ("\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m") \
    if sys.stdout.isatty() else ("", "", "", "", "")


def token_for(scope: str, patient: str | None) -> str:
    form = {"grant_type": "client_credentials", "scope": scope}
    if patient:
        form["patient"] = patient
    resp = requests.post(f"{IDP_URL}/token", data=form, auth=("patient-app", "patient-secret"), timeout=10)
    resp.raise_for_status()
    return resp.json()["access_token"]


def smart_client(token: str | None) -> client.FHIRClient:
    state = {
        "app_id": "fhirgate-demo",
        "server": {
            "base_uri": GATEWAY + "/",
            "auth_type": "oauth2",
            "auth": {"app_id": "fhirgate-demo", "access_token": token},
        },
    }
    return client.FHIRClient(state=state)


def outcome_text(response) -> str:
    try:
        doc = response.json()
        issue = doc["issue"][0]
        detail = issue.get("diagnostics") or issue.get("details", {}).get("text", "")
        return f"{issue.get('code')}: {detail}"
    except (ValueError, KeyError, IndexError):
        return response.text[:120]


def line(allowed: bool, what: str, request: str, result: str) -> None:
    tag = f"{GREEN}ALLOWED{RESET}" if allowed else f"{RED}REFUSED{RESET}"
    print(f"  {tag}  {what:<38} {DIM}{request}{RESET}")
    print(f"           {result}")


def attempt(what: str, request: str, action) -> None:
    try:
        result = action()
        line(True, what, request, result)
    except (server.FHIRUnauthorizedException, server.FHIRPermissionDeniedException,
            server.FHIRNotFoundException, requests.HTTPError) as err:
        response = err.response
        challenge = response.headers.get("WWW-Authenticate", "")
        extra = f"  [{challenge}]" if challenge else ""
        line(False, what, request, f"HTTP {response.status_code} {outcome_text(response)}{extra}")


def main() -> int:
    index = json.loads((ROOT / "e2e" / "data" / "index.json").read_text())
    a, b = index["patients"][0], index["patients"][1]
    a_name = f"{' '.join(a['given'])} {a['family']}"
    print(f"{BOLD}fhirgate demo{RESET}: the app is launched for patient {a_name} (Patient/{a['id']})")
    print(f"  gateway {GATEWAY}   authorization server {IDP_URL}")
    print("  token scopes: 'patient/*.rs launch/patient' (read and search only)\n")

    token = token_for("patient/*.rs launch/patient", a["id"])
    app = smart_client(token)

    def read_own():
        p = Patient.read(a["id"], app.server)
        return f"HTTP 200 {' '.join(p.name[0].given)} {p.name[0].family}, {p.gender}, born {p.birthDate.isostring}"

    def search_own():
        bundle = Observation.where(struct={"patient": a["id"], "_count": "100"}).perform(app.server)
        entries = bundle.entry or []
        subjects = {e.resource.subject.reference for e in entries}
        return f"HTTP 200 {len(entries)} Observations, subjects: {', '.join(sorted(subjects))}"

    def read_other():
        p = Patient.read(b["id"], app.server)
        return f"HTTP 200 {p.name[0].family} (this should never happen)"

    def search_other():
        bundle = Observation.where(struct={"patient": b["id"]}).perform(app.server)
        entries = bundle.entry or []
        return f"HTTP 200 {len(entries)} Observations returned (none of the other patient's)"

    def write_read_only():
        obs = Observation({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": f"Patient/{a['id']}"},
            "valueQuantity": {"value": 72, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        })
        created = obs.create(app.server)
        return f"HTTP 201 created {created} (this should never happen)"

    def no_token():
        Patient.read(a["id"], smart_client(None).server)
        return "HTTP 200 (this should never happen)"

    attempt("read own Patient record", f"GET Patient/{a['id']}", read_own)
    attempt("search own Observations", f"GET Observation?patient={a['id']}", search_own)
    attempt("read another patient's record", f"GET Patient/{b['id']}", read_other)
    attempt("search another patient's Observations", f"GET Observation?patient={b['id']}", search_other)
    attempt("write with read-only scopes", "POST Observation", write_read_only)
    attempt("no token at all", f"GET Patient/{a['id']}", no_token)

    print(f"\n{BOLD}audit trail{RESET}: {AUDIT}")
    try:
        lines = Path(AUDIT).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        print(f"  cannot read it: {err}")
        return 1
    for raw in lines[-8:]:
        try:
            rec = json.loads(raw)
        except ValueError:
            print(f"  {raw[:160]}")
            continue
        print(f"  {rec.get('time', '')[:23]}  {rec.get('decision', ''):<5} {rec.get('status', '')}  "
              f"{rec.get('method', '')} {rec.get('path', '')}  client={rec.get('client_id')} "
              f"patient={(rec.get('patient') or '-')[:8]}  {rec.get('reason') or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
