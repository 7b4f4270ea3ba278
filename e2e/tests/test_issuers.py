"""Two issuers in one gateway: JWTs from the first, opaque tokens checked by introspection
from the second (e2e/idp with IDP_TOKEN_FORMAT=opaque, oidc-provider's RFC 7662
introspection and RFC 7009 revocation endpoints).

* the second issuer's introspection answer carries the SMART claims the gateway maps
* an opaque token for patient A reads A's Patient (body byte-identical to the upstream's)
  and is refused A's neighbour B
* a JWT of the first issuer keeps working in the same gateway process, interleaved
* an opaque token revoked at the provider is refused (401 invalid_token) within the
  gateway's introspection max_ttl, and was accepted right before
* a made-up opaque token is refused with 401 invalid_token
* an opaque token the provider issued for another resource server (its `aud`) is refused
* the audit trail names the right issuer for each, and an opaque token's id is a digest
"""
from __future__ import annotations

import re
import secrets
import time

import pytest
import requests

from helpers import (
    GATEWAY, IDP2_URL, IDP_URL, INTROSPECTION_CLIENT, INTROSPECTION_MAX_TTL, INTROSPECTION_SECRET_FILE, ROOT,
    assert_refused, jwt_parts, read_audit_lines,
)

SCOPE = "patient/Patient.rs launch/patient"
# time allowed past max_ttl for the cache's clock, one poll interval and a request
REVOCATION_MARGIN = 1.5
POLL_INTERVAL = 0.2

# request ids sent in this module, by the issuer the audit line must name
sent: dict[str, list[str]] = {"jwt": [], "opaque": []}


def introspect(token: str) -> dict:
    """Ask the second issuer directly, with the gateway's own credentials."""
    secret = INTROSPECTION_SECRET_FILE.read_text(encoding="utf-8").rstrip("\r\n")
    resp = requests.post(f"{IDP2_URL}/token/introspection", data={"token": token, "token_type_hint": "access_token"},
                         auth=(INTROSPECTION_CLIENT, secret), timeout=10)
    assert resp.status_code == 200, f"introspection failed: {resp.status_code} {resp.text}"
    return resp.json()


def revoke(token: str, client: str = "patient-app", secret: str = "patient-secret") -> None:
    resp = requests.post(f"{IDP2_URL}/token/revocation", data={"token": token, "token_type_hint": "access_token"},
                         auth=(client, secret), timeout=10)
    assert resp.status_code == 200, f"revocation failed: {resp.status_code} {resp.text}"


def read_patient(gw, token: str, patient_id: str, kind: str, **expect):
    resp = gw.get(f"Patient/{patient_id}", token, interaction="read", resource_type="Patient", **expect)
    sent[kind].append(gw.exchanges[-1].request_id)
    return resp


@pytest.fixture(scope="module")
def opaque_a(tokens, patient_a) -> str:
    return tokens.mint_opaque(SCOPE, patient=patient_a.id)


@pytest.fixture(scope="module")
def jwt_a(tokens, patient_a) -> str:
    return tokens.mint(SCOPE, patient=patient_a.id)


def test_second_issuer_introspection_carries_the_smart_claims(opaque_a, patient_a):
    answer = introspect(opaque_a)
    assert answer.get("active") is True, answer
    assert answer.get("iss") == IDP2_URL
    assert answer.get("aud") == GATEWAY, f"aud {answer.get('aud')!r}, expected the gateway's FHIR base"
    assert answer.get("client_id") == "patient-app"
    assert answer.get("sub") == "patient-app"
    assert set(answer.get("scope", "").split()) == set(SCOPE.split())
    assert answer.get("patient") == patient_a.id
    assert answer.get("fhirUser") == f"Patient/{patient_a.id}"
    assert isinstance(answer.get("exp"), int) and answer["exp"] > time.time()
    # oidc-provider uses an opaque token's value as its jti and leaves it out of the answer;
    # were it there, the gateway would take it as the token id in its audit trail
    assert opaque_a not in answer.values(), "the introspection answer repeats the token"


def test_opaque_token_reads_its_own_patient(gw, direct, opaque_a, patient_a):
    resp = read_patient(gw, opaque_a, patient_a.id, "opaque", decision="allow")
    assert resp.status_code == 200, resp.text[:500]
    truth = direct.get(f"Patient/{patient_a.id}")
    assert truth.status_code == 200
    assert resp.content == truth.content, "gateway body differs from the upstream's"


def test_opaque_token_is_refused_another_patient(gw, opaque_a, patient_b):
    resp = read_patient(gw, opaque_a, patient_b.id, "opaque", decision="deny")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")
    text = resp.content.decode("utf-8", "replace")
    assert patient_b.family not in text, "another patient's name in the refusal"


def test_jwt_of_the_first_issuer_works_alongside(gw, direct, jwt_a, opaque_a, patient_a, patient_b):
    assert jwt_parts(jwt_a)[1]["iss"] == IDP_URL
    truth = direct.get(f"Patient/{patient_a.id}").content
    # interleaved in one gateway process: JWT, opaque, JWT
    for token, kind in ((jwt_a, "jwt"), (opaque_a, "opaque"), (jwt_a, "jwt")):
        resp = read_patient(gw, token, patient_a.id, kind, decision="allow")
        assert resp.status_code == 200, f"{kind}: {resp.text[:500]}"
        assert resp.content == truth, f"{kind}: gateway body differs from the upstream's"
    resp = read_patient(gw, jwt_a, patient_b.id, "jwt", decision="deny")
    assert_refused(resp, 403, "insufficient_scope", "forbidden")


def test_revoked_opaque_token_is_refused_within_max_ttl(gw, tokens, patient_a):
    config = (ROOT / "e2e" / "fhirgate-e2e.yaml").read_text(encoding="utf-8")
    assert re.findall(r'^\s*max_ttl:\s*"([^"]+)"', config, re.M) == [f"{INTROSPECTION_MAX_TTL:g}s"], (
        "helpers.INTROSPECTION_MAX_TTL must match introspection.max_ttl in e2e/fhirgate-e2e.yaml")
    token = tokens.mint_opaque(SCOPE, patient=patient_a.id)
    before = read_patient(gw, token, patient_a.id, "opaque", decision="allow")
    assert before.status_code == 200, f"a fresh opaque token was refused: {before.text[:300]}"

    revoke(token)
    revoked_at = time.monotonic()
    assert introspect(token) == {"active": False}, "the provider still says the revoked token is active"

    deadline = revoked_at + INTROSPECTION_MAX_TTL + REVOCATION_MARGIN
    while True:
        resp = read_patient(gw, token, patient_a.id, "opaque")
        elapsed = time.monotonic() - revoked_at
        if resp.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    assert resp.status_code == 401, (
        f"revoked token still answered {resp.status_code} {elapsed:.1f}s after revocation "
        f"(max_ttl {INTROSPECTION_MAX_TTL}s)")
    assert_refused(resp, 401, "invalid_token", "unknown")
    assert elapsed <= INTROSPECTION_MAX_TTL + REVOCATION_MARGIN


def test_made_up_opaque_token_is_refused(gw, tokens, patient_a):
    token = tokens.remember(secrets.token_urlsafe(32))
    resp = gw.get(f"Patient/{patient_a.id}", token, decision="deny", resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "unknown")


def test_opaque_token_for_another_resource_server_is_refused(gw, tokens, patient_a):
    token = tokens.mint_opaque(SCOPE, patient=patient_a.id, resource="urn:test:other-api")
    assert introspect(token).get("active") is True, "the provider should call it active"
    resp = gw.get(f"Patient/{patient_a.id}", token, decision="deny", resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "unknown")


def test_audit_names_the_issuer_of_each_token(gw, tokens):
    assert sent["jwt"] and sent["opaque"], "the tests above sent nothing"
    lines = read_audit_lines(set(sent["jwt"]) | set(sent["opaque"]))
    by_id = {line.get("request_id"): line for line in lines}
    problems = []
    for kind, issuer in (("jwt", IDP_URL), ("opaque", IDP2_URL)):
        for request_id in sent[kind]:
            line = by_id.get(request_id)
            if line is None:
                problems.append(f"{kind} {request_id}: no audit line")
            elif line.get("status") == 401:
                continue  # the revoked token: no identity any more
            elif line.get("issuer") != issuer:
                problems.append(f"{kind} {request_id}: issuer {line.get('issuer')!r}, expected {issuer!r}")
            elif kind == "opaque" and not str(line.get("token_id", "")).startswith("sha256:"):
                problems.append(f"{kind} {request_id}: token_id {line.get('token_id')!r} is not a digest")
    assert not problems, "\n".join(problems)
