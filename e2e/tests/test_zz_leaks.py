"""No client of the suite ever saw an address of the gateway's upstreams.

Runs after every other module (MODULE_ORDER in helpers.py) and searches every response the
suite received (helpers.CAPTURED: status line, each header, the whole body) for the
authority of the FHIR server, the audit server and every upstream a test gateway was
configured with, in plain, JSON-escaped and percent-encoded forms. Responses the tests asked
of those servers directly are left out: they are the upstream talking about itself. So are
the admin listeners' `/metrics`, `/readyz` and `/healthz`: they answer operators, and
`fhirgate_upstream_up` names each server of a route by design (docs/OBSERVABILITY.md).
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import requests

from helpers import (CAPTURED, FHIR_DIRECT, GATEWAY, UPSTREAM_AUTHORITIES, authority,
                     upstream_authorities, ROOT)

AUDIT_FHIR = os.environ.get("AUDIT_FHIR", "http://127.0.0.1:18092/fhir").rstrip("/")
# What the admin listener serves; the FHIR listener has nothing at these paths.
ADMIN_PATHS = {"/metrics", "/readyz", "/healthz"}


def internal_authorities() -> set[str]:
    main = upstream_authorities((ROOT / "e2e" / "fhirgate-e2e.yaml").read_text())
    return main | UPSTREAM_AUTHORITIES | {authority(FHIR_DIRECT), authority(AUDIT_FHIR)}


def forms(host_port: str) -> list[bytes]:
    """How an authority can be written in a body or header: as is, with `localhost` for the
    loopback address, and percent-encoded."""
    host, port = host_port.rsplit(":", 1)
    hosts = {host, "localhost" if host == "127.0.0.1" else host}
    out = []
    for h in hosts:
        out += [f"{h}:{port}".encode(), f"{h}%3A{port}".encode(), f"{h}%3a{port}".encode()]
    return out


def test_no_response_names_an_upstream_address():
    internal = internal_authorities()
    needles = [n for a in sorted(internal) for n in forms(a)]
    seen = [r for r in CAPTURED
            if authority(r.url) not in internal and urlparse(r.url).path not in ADMIN_PATHS]
    assert len(seen) >= 300, f"only {len(seen)} responses captured; did the other tests run?"
    with_body = [r for r in seen if r.body]
    assert len(with_body) >= 200
    # The search means something only if the gateway's answers carried URLs at all: searchsets
    # with absolute fullUrls and links, rewritten to the public base.
    public = authority(GATEWAY).encode()
    assert sum(public in r.body for r in with_body) >= 20, "few responses name the public base"

    leaks = []
    for r in seen:
        texts = [f"{name}: {value}".encode() for name, value in r.headers] + [r.body]
        for text in texts:
            for needle in needles:
                if needle in text:
                    at = text.index(needle)
                    leaks.append(f"{r.status} {r.url}: ...{text[max(0, at - 80):at + 60]!r}...")
    assert not leaks, f"{len(leaks)} responses name an upstream address:\n" + "\n".join(leaks[:20])


def test_the_upstream_does_name_itself():
    """The needle is right: the FHIR server writes its own authority into its searchsets,
    which is what the gateway has to replace."""
    resp = requests.get(f"{FHIR_DIRECT}/Patient", params={"_count": "2"}, timeout=10)
    assert resp.status_code == 200
    assert any(n in resp.content for n in forms(authority(FHIR_DIRECT))), resp.text[:300]
