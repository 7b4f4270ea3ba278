#!/usr/bin/env python3
"""Check the FHIR R4 (4.0.1) AuditEvents fhirgate makes: R4 validity with fhir.resources 6.4.0
and the IHE BALP shapes the gateway promises.

  validate_audit_events.py PATH...   files holding one AuditEvent (or a batch Bundle of them),
                                     or folders of such *.json files
  validate_audit_events.py -         one JSON document per line on stdin (blank lines ignored)

As a library (for tests reading AuditEvents back from a FHIR server):

  check_audit_event(resource: dict) -> list[str]    problems with one AuditEvent
  check_batch_bundle(bundle: dict) -> list[str]     problems with a batch Bundle of them

Besides the typed model this checks what the model does not: the audit-event type, the
action matching the restful interaction, exactly one requestor, the client / server / user
agents and their roles, the observer, the patient / data / query / request-id entities
(R4 sev-1: name or query, not both), the outcome matching the gateway's decision and status,
and that no access token appears anywhere. Prints one line per document; exits 1 when any
document has problems, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import json
import pathlib
import re
import sys
from typing import Iterable

import fhir.resources
from fhir.resources.auditevent import AuditEvent
from fhir.resources.bundle import Bundle

EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PROVENANCE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
JTI_URN = "urn:ietf:params:oauth:jti:"

# R4 restful-interaction -> the AuditEvent.action fhirgate uses for it
ACTIONS = {
    "read": "R", "vread": "R", "history-instance": "R", "capabilities": "R",
    "create": "C", "update": "U", "patch": "U", "delete": "D",
    "search": "E", "search-type": "E", "search-system": "E", "history": "E",
    "history-type": "E", "history-system": "E", "operation": "E", "batch": "E",
    "transaction": "E",
}
# which DICOM role the client agent takes, by subtype (BALP Read, Create/Update/Query, Delete)
CLIENT_ROLE = {
    "read": "110152", "vread": "110152",
    "create": "110153", "update": "110153", "patch": "110153",
    "search": "110153", "search-type": "110153", "search-system": "110153",
    "delete": "110150",
}
# (client type, server type) pairs allowed
ROLE_PAIRS = {
    ((DICOM, "110152"), (DICOM, "110153")),
    ((DICOM, "110153"), (DICOM, "110152")),
    ((DICOM, "110150"), (PROVENANCE, "custodian")),
}
QUERY_SUBTYPES = {"search", "search-type", "search-system"}
INSTANCE_SUBTYPES = {"read", "vread", "update", "patch", "delete", "create"}
DATA_ROLES = {"3", "4", "20"}
OUTCOMES = {"0", "4", "8", "12"}
NETWORK_TYPES = {"1", "2", "3", "4", "5"}  # R4 network-type, a required binding
# R4 AuditEvent.agent.who targets
WHO_TYPES = {"Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Organization", "Device"}
# a JWT (header.payload.) or a bearer credential in any string
TOKEN_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.|\bBearer\s+\S")


def codings(concept: dict | None) -> list[tuple[str | None, str | None]]:
    """(system, code) pairs of a CodeableConcept."""
    if not isinstance(concept, dict):
        return []
    return [(c.get("system"), c.get("code")) for c in concept.get("coding") or [] if isinstance(c, dict)]


def coding(value: dict | None) -> tuple[str | None, str | None]:
    """(system, code) of a Coding."""
    if not isinstance(value, dict):
        return (None, None)
    return (value.get("system"), value.get("code"))


def r4_problems(model, resource: dict) -> list[str]:
    """What the fhir.resources R4 model refuses."""
    try:
        model.parse_obj(resource)
    except Exception as err:  # pydantic.ValidationError and friends
        return [line for line in str(err).splitlines() if line.strip()]
    return []


def strings(value) -> Iterable[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def parse_instant(text) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def check_event_kind(event: dict) -> list[str]:
    """type, subtype, action, times and outcome."""
    problems = []
    if coding(event.get("type")) != (EVENT_TYPE, "rest"):
        problems.append(f"type: {event.get('type')!r} is not {EVENT_TYPE}#rest")
    subtypes = event.get("subtype") or []
    for n, sub in enumerate(subtypes):
        system, code = coding(sub)
        if system != RESTFUL or code not in ACTIONS:
            problems.append(f"subtype/{n}: {system}#{code} is not an R4 restful-interaction code")
        elif event.get("action") != ACTIONS[code]:
            problems.append(f"action: {event.get('action')!r}, expected {ACTIONS[code]!r} for {code}")
    if event.get("action") not in {"C", "R", "U", "D", "E"}:
        problems.append(f"action: {event.get('action')!r} is not one of C R U D E")
    recorded = parse_instant(event.get("recorded"))
    if recorded is None:
        problems.append("recorded: missing or not an instant")
    period = event.get("period") or {}
    start, end = parse_instant(period.get("start")), parse_instant(period.get("end"))
    if start and end and start > end:
        problems.append("period: start is after end")
    if event.get("outcome") not in OUTCOMES:
        problems.append(f"outcome: {event.get('outcome')!r} is not one of 0 4 8 12")
    if not (event.get("outcomeDesc") or "").strip():
        problems.append("outcomeDesc: missing")
    return problems


def agent_kind(agent: dict) -> str:
    """client, server, user or other, by type and network."""
    types = codings(agent.get("type"))
    network = (agent.get("network") or {}).get("type")
    if (PARTICIPATION, "IRCP") in types:
        return "user"
    if network == "5":
        return "server"
    if any(system == DICOM for system, _ in types):
        return "client"
    return "other"


def check_agents(event: dict) -> list[str]:
    """Client, server and user agents, their roles, and one requestor."""
    agents = [a for a in event.get("agent") or [] if isinstance(a, dict)]
    problems = []
    for n, agent in enumerate(agents):
        problems += [f"agent/{n}: {p}" for p in check_agent_elements(agent)]
    by_kind: dict[str, list[dict]] = {}
    for agent in agents:
        by_kind.setdefault(agent_kind(agent), []).append(agent)
    requestors = [a for a in agents if a.get("requestor") is True]
    if len(requestors) != 1:
        problems.append(f"agent: {len(requestors)} requestors, expected exactly one")
    for kind in ("client", "server"):
        if len(by_kind.get(kind, [])) != 1:
            problems.append(f"agent: {len(by_kind.get(kind, []))} {kind} agents, expected one")
    if len(by_kind.get("user", [])) > 1:
        problems.append("agent: more than one user agent")
    if problems:
        return problems
    client, server = by_kind["client"][0], by_kind["server"][0]
    users = by_kind.get("user", [])
    problems += check_roles(event, client, server)
    problems += check_client(client, requestor=not users)
    problems += check_server(server)
    for user in users:
        problems += check_user(user)
    return problems


def check_agent_elements(agent: dict) -> list[str]:
    """What R4 binds or restricts and the model leaves unchecked (network.type, who
    targets), and the token id only on the requestor, as a jti URN."""
    problems = []
    policies = agent.get("policy") or []
    if policies and agent.get("requestor") is not True:
        problems.append("only the requestor carries the token id")
    for policy in policies:
        if not policy.startswith(JTI_URN):
            problems.append(f"policy {policy!r} is not a {JTI_URN} URN")
    network = agent.get("network")
    if network is not None and network.get("type") not in NETWORK_TYPES:
        problems.append(f"network.type {network.get('type')!r} is not an R4 network-type code")
    reference = (agent.get("who") or {}).get("reference")
    if reference is not None:
        parts = reference.rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] not in WHO_TYPES:
            problems.append(f"who.reference {reference!r} is not one of {sorted(WHO_TYPES)}")
    return problems


def check_roles(event: dict, client: dict, server: dict) -> list[str]:
    client_type = next(iter(codings(client.get("type"))), None)
    server_type = next(iter(codings(server.get("type"))), None)
    if (client_type, server_type) not in ROLE_PAIRS:
        return [f"agent: client {client_type} and server {server_type} are not a BALP role pair"]
    for sub in event.get("subtype") or []:
        want = CLIENT_ROLE.get(coding(sub)[1])
        if want and client_type != (DICOM, want):
            return [f"agent: client is {client_type[1]}, BALP wants {want} for {coding(sub)[1]}"]
    return []


def check_client(client: dict, requestor: bool) -> list[str]:
    problems = []
    network = client.get("network") or {}
    if network.get("type") != "2" or not network.get("address"):
        problems.append("client agent: network must be an IP address (type 2)")
    if client.get("requestor") is not requestor:
        problems.append(f"client agent: requestor should be {str(requestor).lower()}")
    who = client.get("who")
    if who is not None and not (who.get("identifier") or {}).get("value"):
        problems.append("client agent: who without identifier.value")
    return problems


def check_server(server: dict) -> list[str]:
    problems = []
    if server.get("requestor") is not False:
        problems.append("server agent: requestor should be false")
    who = server.get("who") or {}
    if not ((who.get("identifier") or {}).get("value") or who.get("display")):
        problems.append("server agent: who names no gateway")
    address = (server.get("network") or {}).get("address") or ""
    if not re.match(r"^https?://", address):
        problems.append(f"server agent: network address {address!r} is not the public base URL")
    return problems


def check_user(user: dict) -> list[str]:
    problems = []
    if user.get("requestor") is not True:
        problems.append("user agent: requestor should be true")
    identifier = (user.get("who") or {}).get("identifier") or {}
    if not identifier.get("value"):
        problems.append("user agent: who.identifier.value (the token's sub) missing")
    if "network" in user:
        problems.append("user agent: users are not network devices (no network)")
    return problems


def check_source(event: dict) -> list[str]:
    problems = []
    source = event.get("source") or {}
    observer = source.get("observer") or {}
    if not ((observer.get("identifier") or {}).get("value") or observer.get("display")):
        problems.append("source.observer: names no gateway instance")
    if not any(coding(t)[0] == SOURCE_TYPE for t in source.get("type") or []):
        problems.append(f"source.type: no {SOURCE_TYPE} coding")
    return problems


def entity_kind(entity: dict) -> str:
    """patient, data, query, transaction or other, by type and role."""
    kind, role = coding(entity.get("type")), coding(entity.get("role"))
    if kind == (BALP_ENTITY, "XrequestId"):
        return "transaction"
    if role == (OBJECT_ROLE, "1"):
        return "patient"
    if role == (OBJECT_ROLE, "24"):
        return "query"
    if role[0] == OBJECT_ROLE and role[1] in DATA_ROLES:
        return "data"
    return "other"


def check_entities(event: dict) -> list[str]:
    """Entities per kind, sev-1, and what each kind must hold."""
    problems = []
    entities = [e for e in event.get("entity") or [] if isinstance(e, dict)]
    by_kind: dict[str, list[dict]] = {}
    for n, entity in enumerate(entities):
        if "name" in entity and "query" in entity:
            problems.append(f"entity/{n}: sev-1, an entity has name or query, not both")
        by_kind.setdefault(entity_kind(entity), []).append(entity)
    for entity in by_kind.get("patient", []):
        problems += check_patient(entity)
    for entity in by_kind.get("data", []):
        problems += check_data(entity)
    for entity in by_kind.get("query", []):
        problems += check_query(entity)
    patients = [e.get("what", {}).get("reference") for e in by_kind.get("patient", [])]
    if len(patients) != len(set(patients)):
        problems.append("entity: the same patient named twice")
    transactions = by_kind.get("transaction", [])
    if len(transactions) != 1:
        problems.append(f"entity: {len(transactions)} X-Request-Id entities, expected one")
    elif not ((transactions[0].get("what") or {}).get("identifier") or {}).get("value"):
        problems.append("transaction entity: what.identifier.value (X-Request-Id) missing")
    problems += check_entity_per_subtype(event, by_kind)
    return problems


def check_patient(entity: dict) -> list[str]:
    problems = []
    if coding(entity.get("type")) != (ENTITY_TYPE, "1"):
        problems.append("patient entity: type must be audit-entity-type#1")
    reference = (entity.get("what") or {}).get("reference") or ""
    if not re.match(r"^Patient/[^/]+$", reference):
        problems.append(f"patient entity: what {reference!r} is not Reference(Patient)")
    return problems


def check_data(entity: dict) -> list[str]:
    problems = []
    if coding(entity.get("type")) != (ENTITY_TYPE, "2"):
        problems.append("data entity: type must be audit-entity-type#2")
    what = entity.get("what") or {}
    if not (what.get("reference") or what.get("type")):
        problems.append("data entity: what names no resource")
    return problems


def check_query(entity: dict) -> list[str]:
    problems = []
    if coding(entity.get("type")) != (ENTITY_TYPE, "2"):
        problems.append("query entity: type must be audit-entity-type#2")
    for absent in ("what", "detail", "name"):
        if absent in entity:
            problems.append(f"query entity: BALP allows no {absent}")
    try:
        raw = base64.b64decode(entity.get("query") or "", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return problems + ["query entity: query is not base64 of UTF-8 text"]
    if not re.match(r"^[A-Z]+ /\S*$", raw):
        problems.append(f"query entity: query {raw!r} is not a request line 'METHOD path?query'")
    return problems


def check_entity_per_subtype(event: dict, by_kind: dict[str, list[dict]]) -> list[str]:
    problems = []
    subtypes = {coding(s)[1] for s in event.get("subtype") or []}
    queries, data = len(by_kind.get("query", [])), len(by_kind.get("data", []))
    if subtypes & QUERY_SUBTYPES and (queries != 1 or data):
        problems.append(f"entity: a search needs one query entity and no data entity ({queries}, {data})")
    if subtypes & INSTANCE_SUBTYPES and (data != 1 or queries):
        problems.append(
            f"entity: {sorted(subtypes)} needs one data entity and no query entity ({data}, {queries})"
        )
    return problems


def gateway_details(event: dict) -> dict[str, str]:
    """The X-Request-Id entity's details, by type."""
    for entity in event.get("entity") or []:
        if isinstance(entity, dict) and entity_kind(entity) == "transaction":
            details = entity.get("detail") or []
            return {d.get("type"): d.get("valueString") for d in details if isinstance(d, dict)}
    return {}


def check_outcome(event: dict) -> list[str]:
    """The outcome follows the gateway's decision and the status it answered."""
    details = gateway_details(event)
    outcome, decision = event.get("outcome"), details.get("decision")
    problems = []
    status = details.get("status")
    if status and status.isdigit():
        code = int(status)
        want = "8" if code >= 500 else "4" if code >= 400 or decision == "deny" else "0"
        if outcome != want:
            problems.append(f"outcome: {outcome!r} for status {code} ({decision}), expected {want!r}")
    if decision == "deny" and outcome == "0":
        problems.append("outcome: a refusal recorded as a success")
    if decision == "filter":
        if not details.get("withheld"):
            problems.append("entity: a filtered answer without a withheld detail")
        if "withheld" not in (event.get("outcomeDesc") or ""):
            problems.append("outcomeDesc: a filtered answer does not say what was withheld")
    return problems


def check_no_token(resource: dict) -> list[str]:
    hits = [s for s in strings(resource) if TOKEN_PATTERN.search(s)]
    return [f"a string looks like an access token: {s[:40]!r}..." for s in hits]


def check_audit_event(resource: dict) -> list[str]:
    """Every problem with one AuditEvent, R4 and BALP; an empty list when there is none."""
    if not isinstance(resource, dict):
        return ["not a JSON object"]
    if resource.get("resourceType") != "AuditEvent":
        return [f"resourceType is {resource.get('resourceType')!r}, expected 'AuditEvent'"]
    problems = r4_problems(AuditEvent, resource)
    checks = (check_event_kind, check_agents, check_source, check_entities, check_outcome, check_no_token)
    for check in checks:
        problems += check(resource)
    return problems


def check_batch_bundle(bundle: dict) -> list[str]:
    """Every problem with a batch Bundle of AuditEvents stored with PUT at their ids."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return ["not a Bundle"]
    problems = r4_problems(Bundle, bundle)
    if bundle.get("type") != "batch":
        problems.append(f"type: {bundle.get('type')!r}, expected 'batch'")
    ids = []
    for n, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") or {}
        ids.append(resource.get("id"))
        request = entry.get("request") or {}
        want = {"method": "PUT", "url": f"AuditEvent/{resource.get('id')}"}
        if request != want:
            problems.append(f"entry/{n}/request: {request!r}, expected {want!r}")
        problems += [f"entry/{n}: {p}" for p in check_audit_event(resource)]
    if len(ids) != len(set(ids)):
        problems.append("entry: the same AuditEvent id twice")
    return problems


def check_document(doc) -> list[str]:
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return check_batch_bundle(doc)
    return check_audit_event(doc)


def read_documents(inputs: list[str]) -> list[tuple[str, str]]:
    """(label, text) of each document named on the command line."""
    documents = []
    for name in inputs:
        if name == "-":
            documents += [(f"stdin:{n}", line) for n, line in enumerate(sys.stdin, 1) if line.strip()]
            continue
        path = pathlib.Path(name)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            documents.append((str(file), file.read_text(encoding="utf-8")))
    return documents


def main() -> int:
    parser = argparse.ArgumentParser(description="Check fhirgate's AuditEvents (R4 and IHE BALP shapes)")
    parser.add_argument("--quiet", action="store_true", help="print only documents with problems")
    parser.add_argument("inputs", nargs="+", help="files, folders of *.json, or - for JSON lines")
    args = parser.parse_args()
    if fhir.resources.__fhir_version__ != "4.0.1":
        print(f"fhir.resources models FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1", file=sys.stderr)
        return 2
    try:
        documents = read_documents(args.inputs)
    except OSError as err:
        print(f"cannot read: {err}", file=sys.stderr)
        return 2
    if not documents:
        print("no documents", file=sys.stderr)
        return 2

    invalid = 0
    for label, text in documents:
        try:
            problems = check_document(json.loads(text))
        except ValueError as err:
            problems = [f"not JSON: {err}"]
        if problems:
            invalid += 1
            print(f"INVALID {label}")
            for problem in problems:
                print(f"    {problem}")
        elif not args.quiet:
            print(f"ok      {label}")
    version = fhir.resources.__fhir_version__
    print(f"{len(documents) - invalid} valid, {invalid} invalid (AuditEvent, FHIR {version})")
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
