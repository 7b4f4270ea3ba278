#!/usr/bin/env python3
"""Fetch an access token from the test authorization server (client_credentials).

  get_token.py [--idp URL] [--patient ID] [--resource URI] [--json|--claims] CLIENT SECRET SCOPE

Prints the access token (or the whole token response with --json, or the decoded JWT
header and claims with --claims). Standard library only.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def fetch_token(idp: str, client: str, secret: str, scope: str, patient: str | None = None,
                resource: str | None = None, timeout: float = 10.0) -> dict:
    form = {"grant_type": "client_credentials", "scope": scope}
    if patient:
        form["patient"] = patient
    if resource:
        form["resource"] = resource
    basic = base64.b64encode(f"{urllib.parse.quote(client)}:{urllib.parse.quote(secret)}".encode()).decode()
    req = urllib.request.Request(
        idp.rstrip("/") + "/token",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise SystemExit(f"token request failed: HTTP {err.code}: {err.read().decode('utf-8', 'replace')}")
    except urllib.error.URLError as err:
        raise SystemExit(f"cannot reach the authorization server at {idp}: {err.reason}")


def decode_part(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def main() -> int:
    default_idp = os.environ.get("IDP_URL") or f"http://127.0.0.1:{os.environ.get('IDP_PORT', '9000')}"
    parser = argparse.ArgumentParser(description="Fetch a SMART access token (client_credentials)")
    parser.add_argument("client")
    parser.add_argument("secret")
    parser.add_argument("scope", help="scope string, passed verbatim (quote it)")
    parser.add_argument("--idp", default=default_idp, help=f"authorization server (default {default_idp})")
    parser.add_argument("--patient", help="patient id for the token's patient context")
    parser.add_argument("--resource", help="audience (resource indicator), e.g. urn:test:other-api")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the whole token response")
    out.add_argument("--claims", action="store_true", help="print the decoded JWT header and claims")
    args = parser.parse_args()
    answer = fetch_token(args.idp, args.client, args.secret, args.scope, args.patient, args.resource)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.claims:
        header, payload, _ = answer["access_token"].split(".")
        print(json.dumps({"header": decode_part(header), "claims": decode_part(payload)}, indent=2))
    else:
        print(answer["access_token"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
