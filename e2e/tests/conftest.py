"""Fixtures for fhirgate's end-to-end tests (configuration and helpers: helpers.py)."""
from __future__ import annotations

import json

import pytest
import requests

from helpers import (
    ADMIN, DATA_INDEX, FHIR_DIRECT, MODULE_ORDER, Direct, Gateway, PatientData, TokenRegistry,
    capture_responses,
)

capture_responses()


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER) - 1

    items.sort(key=rank)  # stable: keeps the order inside each module

@pytest.fixture(scope="session")
def index() -> dict:
    return json.loads(DATA_INDEX.read_text())


def _patient(index: dict, n: int) -> PatientData:
    p = index["patients"][n]
    return PatientData(id=p["id"], family=p["family"], given=p["given"], ids=p["ids"])


@pytest.fixture(scope="session")
def patient_a(index) -> PatientData:
    return _patient(index, 0)


@pytest.fixture(scope="session")
def patient_b(index) -> PatientData:
    return _patient(index, 1)

@pytest.fixture(scope="session")
def tokens() -> TokenRegistry:
    return TokenRegistry()


@pytest.fixture(scope="session")
def gw(tokens) -> Gateway:
    gateway = Gateway(tokens)
    try:
        requests.get(f"{ADMIN}/healthz", timeout=5)
    except requests.RequestException as err:
        pytest.exit(f"the gateway admin listener {ADMIN} does not answer ({err}); start the stack and the gateway "
                    f"(scripts/test.sh does both)", returncode=3)
    return gateway


@pytest.fixture(scope="session")
def direct() -> Direct:
    d = Direct()
    try:
        resp = d.get("metadata")
    except requests.RequestException as err:
        pytest.exit(f"the upstream FHIR server {FHIR_DIRECT} does not answer ({err}); run scripts/stack.sh up", returncode=3)
    assert resp.status_code == 200
    return d
