"""Upstream failures, with a second gateway process pointed at a broken upstream.

* nothing listens on the upstream port            -> 502, issue code `transient`
* the upstream accepts but never answers          -> 504, issue code `timeout`
Both refusals must be R4 OperationOutcomes, audited once, and /readyz must say 503 while
the upstream is unreachable.
"""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests

from helpers import (FHIRGATE_BIN, IDP_URL, ROOT, capture_raw, free_port, issue_codes, operation_outcome, run_validator,
                     start_gateway_process)

GATEWAY_AUDIENCE = "http://127.0.0.1:18080/fhir"  # tokens from the IdP carry this audience


class BlackHole:
    """Accepts connections and reads requests but never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.stopped = True
        for conn in self.conns:
            conn.close()
        self.sock.close()


def start_gateway(tmp_path, upstream_port: int, response_timeout: str, http: requests.Session):
    listen, admin = free_port(), free_port()
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "fhirgate.yaml"
    config.write_text(f"""listen: "127.0.0.1:{listen}"
admin_listen: "127.0.0.1:{admin}"
upstream:
  url: "http://127.0.0.1:{upstream_port}/fhir"
  public_base_path: "/fhir"
  connect_timeout: "1s"
  response_timeout: "{response_timeout}"
issuers:
  - issuer: "{IDP_URL}"
    audience: "{GATEWAY_AUDIENCE}"
    algorithms: ["RS256", "ES256"]
    leeway: "5s"
audit:
  spool: {{ path: "{audit}.spool" }}
  sinks: {{ trail: {{ jsonl: {{ path: "{audit}" }} }} }}
""")
    proc = start_gateway_process(config, admin, tmp_path / "fhirgate.log")
    return proc, f"http://127.0.0.1:{listen}/fhir", f"http://127.0.0.1:{admin}", audit


def stop(proc, http: requests.Session | None = None) -> float:
    """SIGTERM, then SIGKILL after 15 s; returns the seconds the gateway took to exit."""
    if http is not None:
        http.close()
    started = time.monotonic()
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - started


@pytest.fixture
def patient_token(tokens, patient_a):
    return tokens.mint("patient/*.rs", patient=patient_a.id)


def call(http: requests.Session, base: str, path: str, token: str) -> tuple[str, requests.Response]:
    request_id = str(uuid.uuid4())
    resp = http.get(f"{base}/{path}", headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id,
                                                   "Accept": "application/fhir+json"}, timeout=60)
    assert resp.headers.get("X-Request-Id") == request_id
    return request_id, resp


def audit_line(audit, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if audit.exists():
            found = [json.loads(line) for line in audit.read_text().splitlines()
                     if line.strip() and json.loads(line).get("request_id") == request_id]
            if found:
                assert len(found) == 1, f"{len(found)} audit lines for one request"
                return found[0]
        time.sleep(0.2)
    pytest.fail(f"no audit line for {request_id}")


@pytest.fixture(scope="module")
def fhirgate_bin():
    if not FHIRGATE_BIN.exists():
        pytest.fail(f"gateway binary not found at {FHIRGATE_BIN}")


def test_upstream_down_is_502_transient(fhirgate_bin, tmp_path, patient_token, patient_a):
    http = requests.Session()
    proc, base, admin, audit = start_gateway(tmp_path, free_port(), "5s", http)
    try:
        ready = http.get(f"{admin}/readyz", timeout=10)
        assert ready.status_code == 503, f"/readyz with the upstream down: {ready.status_code} {ready.text[:200]}"
        request_id, resp = call(http, base, f"Patient/{patient_a.id}", patient_token)
        assert resp.status_code == 502, f"{resp.status_code} {resp.text[:300]}"
        assert "transient" in issue_codes(resp)
        assert patient_token not in resp.text
        line = audit_line(audit, request_id)
        assert line["status"] == 502
        result = run_validator([resp.content])
        assert result.returncode == 0, result.stdout + result.stderr
        assert patient_token not in audit.read_text()
    finally:
        stop(proc, http)


def test_upstream_silent_is_504_timeout(fhirgate_bin, tmp_path, patient_token, patient_a):
    hole = BlackHole()
    http = requests.Session()
    proc, base, admin, audit = start_gateway(tmp_path, hole.port, "1s", http)
    try:
        started = time.monotonic()
        request_id, resp = call(http, base, f"Patient/{patient_a.id}", patient_token)
        elapsed = time.monotonic() - started
        assert resp.status_code == 504, f"{resp.status_code} {resp.text[:300]}"
        assert "timeout" in issue_codes(resp)
        operation_outcome(resp)
        assert elapsed < 15, f"504 took {elapsed:.1f}s with response_timeout 1s"
        line = audit_line(audit, request_id)
        assert line["status"] == 504
        result = run_validator([resp.content])
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop(proc, http)
        hole.close()


@pytest.mark.parametrize("listener", ["fhir", "admin"])
def test_sigterm_stops_promptly_with_an_idle_keep_alive_connection(fhirgate_bin, tmp_path, listener):
    http = requests.Session()
    proc, base, admin, _ = start_gateway(tmp_path, free_port(), "5s", http)
    http.close()
    url = f"{base}/metadata" if listener == "fhir" else f"{admin}/healthz"
    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]
    conn = socket.create_connection((host, int(port)), timeout=5)
    try:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        answer = conn.recv(65536)
        capture_raw(url, answer)
        assert answer.startswith(b"HTTP/1.1 "), "no answer on the keep-alive connection"
        took = stop(proc)  # the connection stays open and idle meanwhile
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
    assert took < 5, f"SIGTERM took {took:.1f}s to stop the gateway with an idle {listener} connection open"
