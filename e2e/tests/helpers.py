"""Configuration and helpers for fhirgate's end-to-end tests.

The tests run against a running gateway, authorization server and upstream FHIR server
(scripts/test.sh starts them all). Locations come from the environment:

  FHIRGATE_URL     gateway FHIR base        (http://127.0.0.1:18080/fhir)
  FHIRGATE_ADMIN   gateway admin listener   (http://127.0.0.1:18081)
  FHIRGATE_AUDIT   gateway audit file       (.work/e2e-audit.jsonl)
  FHIRGATE_BIN     gateway binary           (target/debug/fhirgate)
  FHIR_DIRECT      upstream FHIR base       (http://127.0.0.1:18091/fhir)
  IDP_URL          authorization server issuing JWTs            (http://127.0.0.1:19000)
  IDP2_URL         authorization server issuing opaque tokens   (http://127.0.0.1:19002)
  FHIRGATE_VALIDATOR_PYTHON  python of the R4 validator venv (.work/venv-validator/bin/python)

Every request a test sends to the gateway goes through `gw` (the Gateway helper), which
sends a fresh X-Request-Id, checks it comes back, and records the exchange so that the
last tests can check the audit trail and validate every error body as R4.
"""
from __future__ import annotations

import base64
import decimal
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def _env_path(name: str, default: str) -> Path:
    value = Path(os.environ.get(name, default))
    return value if value.is_absolute() else ROOT / value


GATEWAY = os.environ.get("FHIRGATE_URL", "http://127.0.0.1:18080/fhir").rstrip("/")
ADMIN = os.environ.get("FHIRGATE_ADMIN", "http://127.0.0.1:18081").rstrip("/")
AUDIT_FILE = _env_path("FHIRGATE_AUDIT", ".work/e2e-audit.jsonl")
# the main gateway's log (stdout and stderr), as scripts/test.sh starts it
LOG_FILE = _env_path("FHIRGATE_LOG_FILE", ".work/fhirgate-e2e.log")
FHIRGATE_BIN = _env_path("FHIRGATE_BIN", "target/debug/fhirgate")
FHIR_DIRECT = os.environ.get("FHIR_DIRECT", "http://127.0.0.1:18091/fhir").rstrip("/")
IDP_URL = os.environ.get("IDP_URL", "http://127.0.0.1:19000").rstrip("/")
IDP2_URL = os.environ.get("IDP2_URL", "http://127.0.0.1:19002").rstrip("/")
# the gateway's client at the second issuer, as in e2e/fhirgate-e2e.yaml (introspection:)
INTROSPECTION_CLIENT = "fhirgate"
INTROSPECTION_SECRET_FILE = ROOT / "e2e" / "idp" / "introspection-client.secret"
# the second issuer's introspection cache lifetime in the gateway (introspection.max_ttl)
INTROSPECTION_MAX_TTL = 2.0
VALIDATOR_PYTHON = _env_path("FHIRGATE_VALIDATOR_PYTHON", ".work/venv-validator/bin/python")
VALIDATOR_SCRIPT = ROOT / "e2e" / "validator" / "validate.py"
DATA_INDEX = ROOT / "e2e" / "data" / "index.json"
# the gateway configuration's leeway for exp/nbf checks (e2e/fhirgate-e2e.yaml)
LEEWAY_SECONDS = 5

FHIR_JSON = "application/fhir+json"

# order in which test modules run; the audit and R4 checks of everything sent come last
MODULE_ORDER = [
    "test_smoke",
    "test_rotation",
    "test_access",
    "test_auth",
    "test_fhirclient",
    "test_cli",
    "test_interactions",
    "test_upstream_failures",
    "test_issuers",
    "test_audit_delivery",
    "test_discovery",
    "test_formats",
    "test_break_glass",
    "test_zz_audit",
    "test_zz_leaks",
    "test_zz_secrets",
]


# --------------------------------------------------------------------------- data


@dataclass
class PatientData:
    id: str
    family: str
    given: list[str]
    ids: dict[str, list[str]]

    def all_ids(self) -> set[str]:
        return {rid for values in self.ids.values() for rid in values}

    def compartment_ids(self) -> set[str]:
        """Ids of this patient's own resources (Practitioners are shared, not theirs)."""
        return {rid for rtype, values in self.ids.items() if rtype != "Practitioner" for rid in values}


# --------------------------------------------------------------------------- tokens


CLIENT_SECRETS = {"patient-app": "patient-secret", "system-app": "system-secret", "short-app": "short-secret",
                  "clinician-app": "clinician-secret"}


class TokenRegistry:
    """Mints tokens from the test authorization servers and remembers every token used.

    JWTs carry their claims; for opaque tokens (second issuer) the claims the gateway should
    learn by introspection are remembered here, so that the audit checks know what to expect.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.opaque_claims: dict[str, dict] = {}

    def remember(self, token: str) -> str:
        self.seen.add(token)
        return token

    def claims_of(self, token: str | None) -> dict:
        """The claims the gateway maps for `token`: a JWT's payload, an opaque token's
        expected introspection answer, or nothing for a token the registry did not mint."""
        if not token:
            return {}
        if token in self.opaque_claims:
            return self.opaque_claims[token]
        if token.count(".") == 2:
            try:
                return jwt_parts(token)[1]
            except ValueError:
                return {}
        return {}

    @staticmethod
    def request_token(idp: str, scope: str, patient: str | None, client: str, secret: str | None,
                      resource: str | None, extra: dict | None = None) -> dict:
        form = {"grant_type": "client_credentials", "scope": scope, **(extra or {})}
        if patient:
            form["patient"] = patient
        if resource:
            form["resource"] = resource
        resp = requests.post(f"{idp}/token", data=form, auth=(client, secret or CLIENT_SECRETS[client]), timeout=10)
        assert resp.status_code == 200, f"token request to {idp} failed: {resp.status_code} {resp.text}"
        return resp.json()

    def mint(self, scope: str, patient: str | None = None, client: str = "patient-app",
             secret: str | None = None, resource: str | None = None, extra: dict | None = None) -> str:
        """A JWT access token from the first issuer (IDP_URL); `extra` adds token request
        parameters (clinician-app: fhirUser, purpose_of_use)."""
        answer = self.request_token(IDP_URL, scope, patient, client, secret, resource, extra)
        return self.remember(answer["access_token"])

    def mint_opaque(self, scope: str, patient: str | None = None, client: str = "patient-app",
                    secret: str | None = None, resource: str | None = None) -> str:
        """An opaque access token from the second issuer (IDP2_URL)."""
        answer = self.request_token(IDP2_URL, scope, patient, client, secret, resource)
        token = answer["access_token"]
        assert token.count(".") != 2, "the second issuer should issue opaque tokens, got a JWT-shaped one"
        self.opaque_claims[token] = {
            "client_id": client, "sub": client, "patient": answer.get("patient"), "scope": answer.get("scope"),
        }
        return self.remember(token)


def jwt_parts(token: str) -> tuple[dict, dict]:
    def dec(part: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    header, payload, _ = token.split(".")
    return dec(header), dec(payload)


# --------------------------------------------------------------------------- gateway


@dataclass
class Exchange:
    request_id: str
    method: str
    path: str
    query: str
    status: int
    expect_decision: str | None
    interaction: str | None
    resource_type: str | None
    client_id: str | None
    subject: str | None
    patient: str | None
    scopes: str | None
    authenticated: bool
    body: bytes = field(repr=False, default=b"")
    content_type: str = ""


class Gateway:
    """Sends requests to the gateway with a unique X-Request-Id and records them."""

    def __init__(self, tokens: TokenRegistry) -> None:
        self.base = GATEWAY
        self.tokens = tokens
        self.exchanges: list[Exchange] = []
        self.session = requests.Session()

    def record(self, request_id: str, method: str, path: str, query: str, resp: requests.Response,
               token: str | None, decision: str | None, interaction: str | None,
               resource_type: str | None) -> None:
        claims = self.tokens.claims_of(token)
        self.exchanges.append(Exchange(
            request_id=request_id, method=method, path=path, query=query, status=resp.status_code,
            expect_decision=decision, interaction=interaction, resource_type=resource_type,
            client_id=claims.get("client_id"), subject=claims.get("sub"), patient=claims.get("patient"),
            scopes=claims.get("scope"),
            authenticated=resp.status_code != 401 and token is not None,
            body=resp.content, content_type=resp.headers.get("Content-Type", ""),
        ))

    def request(self, method: str, path: str, token: str | None = None, *, params: dict | None = None,
                json_body: dict | None = None, data: bytes | None = None, headers: dict | None = None,
                decision: str | None = None, interaction: str | None = None,
                resource_type: str | None = None) -> requests.Response:
        """path is relative to the FHIR base, e.g. 'Patient/123' (query may follow '?')."""
        if token:
            self.tokens.remember(token)
        request_id = str(uuid.uuid4())
        hdrs = {"Accept": FHIR_JSON, "X-Request-Id": request_id}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs["Content-Type"] = FHIR_JSON
        hdrs.update(headers or {})
        url = f"{self.base}/{path.lstrip('/')}"
        resp = self.session.request(method, url, params=params, data=data, headers=hdrs, timeout=60)
        assert resp.headers.get("X-Request-Id") == request_id, (
            f"{method} {path}: X-Request-Id not echoed (sent {request_id}, got {resp.headers.get('X-Request-Id')!r})")
        query = requests.PreparedRequest()
        query.prepare_url(url, params)
        qs = query.url.split("?", 1)[1] if "?" in query.url else ""
        self.record(request_id, method, path.split("?", 1)[0], qs, resp, token, decision, interaction, resource_type)
        return resp

    def get(self, path: str, token: str | None = None, **kw) -> requests.Response:
        return self.request("GET", path, token, **kw)


# --------------------------------------------------------------------------- upstream


class Direct:
    """The upstream FHIR server, bypassing the gateway (ground truth)."""

    def __init__(self) -> None:
        self.base = FHIR_DIRECT
        self.session = requests.Session()

    def get(self, path: str, params: dict | None = None) -> requests.Response:
        return self.session.get(f"{self.base}/{path.lstrip('/')}", params=params,
                                headers={"Accept": FHIR_JSON}, timeout=60)

    def count(self, rtype: str, **params) -> int:
        resp = self.get(rtype, params={**params, "_summary": "count"})
        assert resp.status_code == 200, resp.text
        return resp.json()["total"]


# --------------------------------------------------------------------------- helpers


def parse_exact(body: bytes | str):
    """JSON with decimals kept exact, for comparing FHIR content."""
    return json.loads(body, parse_float=decimal.Decimal)


def operation_outcome(resp: requests.Response) -> dict:
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.split(";")[0].strip() == FHIR_JSON, f"refusal Content-Type is {ctype!r}, expected {FHIR_JSON}"
    doc = resp.json()
    assert doc.get("resourceType") == "OperationOutcome", f"refusal body is not an OperationOutcome: {resp.text[:500]}"
    assert doc.get("issue"), "OperationOutcome without issue"
    return doc


def issue_codes(resp: requests.Response) -> list[str]:
    return [issue.get("code") for issue in operation_outcome(resp)["issue"]]


def auth_params(resp: requests.Response) -> tuple[str, dict[str, str]]:
    """Parse a WWW-Authenticate header: (scheme, {param: value})."""
    header = resp.headers.get("WWW-Authenticate")
    assert header, f"no WWW-Authenticate header on {resp.status_code}"
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            j = i + 1
            value = []
            while j < len(rest) and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < len(rest):
                    j += 1
                value.append(rest[j])
                j += 1
            params[key] = "".join(value)
            i = j + 1
        else:
            j = rest.find(",", i)
            j = len(rest) if j < 0 else j
            params[key] = rest[i:j].strip()
            i = j
    return scheme, params


def assert_refused(resp: requests.Response, status: int, error: str | None, code: str | tuple[str, ...]) -> dict:
    """Check a gateway refusal: status, OperationOutcome issue code, Bearer challenge."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    codes = issue_codes(resp)
    wanted = (code,) if isinstance(code, str) else code
    assert any(c in wanted for c in codes), f"issue codes {codes}, expected one of {wanted}"
    scheme, params = auth_params(resp)
    assert scheme == "Bearer", f"challenge scheme {scheme!r}"
    assert params.get("realm") == "fhirgate", f"challenge realm {params.get('realm')!r}"
    if error is None:
        assert "error" not in params, f"bare challenge expected, got {resp.headers['WWW-Authenticate']!r}"
    else:
        assert params.get("error") == error, f"challenge {resp.headers['WWW-Authenticate']!r}, expected error={error}"
    return resp.json()


def bundle_resources(resp_or_bytes) -> list[dict]:
    body = resp_or_bytes.content if hasattr(resp_or_bytes, "content") else resp_or_bytes
    doc = parse_exact(body)
    assert doc.get("resourceType") == "Bundle", f"not a Bundle: {str(doc)[:300]}"
    return [e["resource"] for e in doc.get("entry", []) if "resource" in e]


def run_validator(documents: list[bytes]) -> subprocess.CompletedProcess:
    if not VALIDATOR_PYTHON.exists():
        pytest.fail(f"the R4 validator venv is missing ({VALIDATOR_PYTHON}); scripts/test.sh installs it")
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as fh:
        for doc in documents:
            fh.write(json.dumps(json.loads(doc), separators=(",", ":")).encode() + b"\n")
        name = fh.name
    try:
        with open(name, "rb") as stdin:
            return subprocess.run([str(VALIDATOR_PYTHON), str(VALIDATOR_SCRIPT), "--quiet", "-"],
                                  stdin=stdin, capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(name)


def read_audit_lines(want_ids: set[str], timeout: float = 10.0) -> list[dict]:
    """Read the audit file, waiting until every id in want_ids has a line (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        lines: list[dict] = []
        raw: list[str] = []
        if AUDIT_FILE.exists():
            raw = AUDIT_FILE.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(raw, 1):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{AUDIT_FILE}:{n} is not JSON: {line[:300]}")
        present = {line.get("request_id") for line in lines}
        if want_ids <= present or time.monotonic() > deadline:
            return lines
        time.sleep(0.25)


# --------------------------------------------------------------------------- own gateways


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# host:port of every upstream a gateway of the suite was given: no client may see one.
UPSTREAM_AUTHORITIES: set[str] = set()


def authority(url: str) -> str:
    """`host:port` of an absolute http(s) URL."""
    return url.split("/")[2]


def upstream_authorities(config_text: str) -> set[str]:
    """The authorities of the `url:` keys in the `upstream:` section of a gateway configuration."""
    found, inside = set(), False
    for line in config_text.splitlines():
        if line and not line[0].isspace():
            inside = line.startswith("upstream:")
            continue
        match = re.match(r'\s+url:\s*"?(https?://[^"\s]+)', line)
        if inside and match:
            found.add(authority(match.group(1)))
    return found


def start_gateway_process(config: Path, admin_port: int, log_path: Path) -> subprocess.Popen:
    """Starts `fhirgate serve --config CONFIG` (output appended to LOG_PATH) and waits until
    its admin listener answers /healthz; fails the test when it exits or does not answer."""
    UPSTREAM_AUTHORITIES.update(upstream_authorities(config.read_text()))
    log = open(log_path, "ab")
    proc = subprocess.Popen([str(FHIRGATE_BIN), "serve", "--config", str(config)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gateway exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("gateway did not answer /healthz")


# Every HTTP response any test received, for the search for internal addresses
# (test_zz_leaks.py). Filled by `capture_responses`, installed by conftest.py.
@dataclass
class CapturedResponse:
    url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes


CAPTURED: list[CapturedResponse] = []


def capture_responses() -> None:
    """Wraps requests' transport so every response a test gets (through `requests`, which
    fhirclient uses too) is kept in CAPTURED. Streamed responses keep their headers only, so
    that reading the body here cannot change what the test sees."""
    import requests.adapters

    original = requests.adapters.HTTPAdapter.send
    if getattr(original, "captures", False):
        return

    def send(self, request, stream=False, **kw):
        resp = original(self, request, stream=stream, **kw)
        CAPTURED.append(CapturedResponse(
            url=request.url,
            status=resp.status_code,
            headers=[(k, v) for k, v in resp.raw.headers.items()] if resp.raw is not None
            else list(resp.headers.items()),
            body=b"" if stream else resp.content,
        ))
        return resp

    send.captures = True
    requests.adapters.HTTPAdapter.send = send


def capture_raw(url: str, answer: bytes) -> None:
    """Keeps a response a test read from a raw socket (status line, headers and body)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if len(lines[0].split()) > 1 else 0
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    CAPTURED.append(CapturedResponse(url=url, status=status, headers=headers, body=body))
