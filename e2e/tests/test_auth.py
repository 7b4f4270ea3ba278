"""Authentication failures: no token, expired, wrong audience, forged and unsigned tokens."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import IDP_URL, LEEWAY_SECONDS, assert_refused, jwt_parts, operation_outcome


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@pytest.fixture(scope="module")
def good_token(tokens, patient_a):
    return tokens.mint("patient/*.rs", patient=patient_a.id)


@pytest.fixture(scope="module")
def own_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def idp_active_kid() -> str:
    return requests.get(f"{IDP_URL}/admin/state", timeout=5).json()["active_kid"]


def test_no_token_is_a_bare_challenge(gw, patient_a):
    resp = gw.get(f"Patient/{patient_a.id}", decision="deny", resource_type="Patient")
    assert_refused(resp, 401, None, "login")
    assert resp.headers["WWW-Authenticate"].strip() == 'Bearer realm="fhirgate"'


def test_good_token_is_accepted(gw, good_token, patient_a):
    resp = gw.get(f"Patient/{patient_a.id}", good_token, decision="allow", interaction="read", resource_type="Patient")
    assert resp.status_code == 200, resp.text[:500]


def test_expired_token_is_refused(gw, tokens, patient_a):
    token = tokens.mint("patient/*.rs", patient=patient_a.id, client="short-app")
    claims = jwt_parts(token)[1]
    assert claims["exp"] - claims["iat"] <= 5, "short-app tokens should live a few seconds"
    fresh = gw.get(f"Patient/{patient_a.id}", token, decision="allow", interaction="read", resource_type="Patient")
    assert fresh.status_code == 200, f"a fresh short-lived token was refused: {fresh.text[:300]}"
    wait = claims["exp"] + LEEWAY_SECONDS + 1.5 - time.time()
    if wait > 0:
        time.sleep(wait)
    resp = gw.get(f"Patient/{patient_a.id}", token, decision="deny", resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "expired")


def test_token_for_another_audience_is_refused(gw, tokens, patient_a):
    token = tokens.mint("patient/*.rs", patient=patient_a.id, resource="urn:test:other-api")
    assert jwt_parts(token)[1]["aud"] == "urn:test:other-api"
    resp = gw.get(f"Patient/{patient_a.id}", token, decision="deny", resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "unknown")


@pytest.mark.parametrize("kid_choice", ["idp-current-kid", "unknown-kid"])
def test_token_signed_with_a_foreign_key_is_refused(gw, tokens, good_token, own_rsa_key, patient_a, kid_choice):
    header, claims = jwt_parts(good_token)
    kid = idp_active_kid() if kid_choice == "idp-current-kid" else "forged-kid-0000"
    forged = tokens.remember(jwt.encode(claims, own_rsa_key, algorithm="RS256",
                                        headers={"kid": kid, "typ": header.get("typ", "at+jwt")}))
    resp = gw.get(f"Patient/{patient_a.id}", forged, decision="deny", resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "unknown")


def test_tampered_claims_are_refused(gw, tokens, good_token, patient_a, patient_b):
    header, payload, signature = good_token.split(".")
    claims = jwt_parts(good_token)[1]
    claims["patient"] = patient_b.id
    tampered = tokens.remember(f"{header}.{b64json(claims)}.{signature}")
    resp = gw.get(f"Patient/{patient_b.id}", tampered, decision="deny", resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "unknown")
    assert patient_b.family not in resp.text


@pytest.mark.parametrize("signature", ["", "e30"], ids=["empty-signature", "junk-signature"])
def test_alg_none_is_refused(gw, tokens, good_token, patient_a, signature):
    header, claims = jwt_parts(good_token)
    unsigned = tokens.remember(f"{b64json({'alg': 'none', 'typ': 'at+jwt', 'kid': header['kid']})}."
                               f"{b64json(claims)}.{signature}")
    resp = gw.get(f"Patient/{patient_a.id}", unsigned, decision="deny", resource_type="Patient")
    assert resp.status_code == 401, f"alg none accepted: {resp.status_code} {resp.text[:300]}"
    assert_refused(resp, 401, "invalid_token", "unknown")


def test_hmac_with_the_public_key_is_refused(gw, tokens, good_token, patient_a):
    """Algorithm confusion: HS256 keyed with the published RSA public key."""
    header, claims = jwt_parts(good_token)
    jwks = requests.get(requests.get(f"{IDP_URL}/.well-known/openid-configuration", timeout=5).json()["jwks_uri"],
                        timeout=5).json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'at+jwt', 'kid': header['kid']})}.{b64json(claims)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    forged = tokens.remember(f"{signing_input}.{b64url(mac)}")
    resp = gw.get(f"Patient/{patient_a.id}", forged, decision="deny", resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "unknown")


@pytest.mark.parametrize("value", ["not-a-jwt", "a.b.c"], ids=["garbage", "three-junk-parts"])
def test_malformed_bearer_is_refused(gw, patient_a, value):
    resp = gw.get(f"Patient/{patient_a.id}", headers={"Authorization": f"Bearer {value}"}, decision="deny",
                  resource_type="Patient")
    assert_refused(resp, 401, "invalid_token", "unknown")


def test_empty_bearer_is_refused(gw, patient_a):
    resp = gw.get(f"Patient/{patient_a.id}", headers={"Authorization": "Bearer "}, decision="deny",
                  resource_type="Patient")
    # RFC 6750 allows 400 invalid_request for a malformed Authorization header, or a 401
    assert resp.status_code in (400, 401), f"{resp.status_code} {resp.text[:300]}"
    operation_outcome(resp)
    assert patient_a.family not in resp.text


def test_other_auth_scheme_is_a_bare_challenge(gw, patient_a):
    resp = gw.get(f"Patient/{patient_a.id}", headers={"Authorization": "Basic cGF0aWVudC1hcHA6cGF0aWVudC1zZWNyZXQ="},
                  decision="deny", resource_type="Patient")
    assert_refused(resp, 401, None, "login")


def test_system_token_without_patient_context(gw, tokens, patient_a):
    token = tokens.mint("system/Patient.rs", client="system-app")
    resp = gw.get(f"Patient/{patient_a.id}", token, decision="allow", interaction="read", resource_type="Patient")
    assert resp.status_code == 200, resp.text[:500]
    obs = gw.get("Observation", token, params={"patient": patient_a.id}, decision="deny",
                 interaction="search-type", resource_type="Observation")
    assert_refused(obs, 403, "insufficient_scope", "forbidden")
