"""The audit trail survives a sink outage and a crash.

A gateway process of its own ships AuditEvents to the audit FHIR server (a second
sekmet-fhir) through a TCP relay the test can switch off. A client sends steady traffic and
logs every answer it gets with its own request id. During the run the relay goes down (the
sink is unreachable), the gateway is killed with SIGKILL and started again on the same spool,
then the relay comes back. Afterwards the audit server holds an AuditEvent for every request
the client got an answer to, none twice, and every one is a valid R4 AuditEvent in the BALP
shapes (checked by e2e/validator/validate_audit_events.py with fhir.resources).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest
import requests

from helpers import IDP_URL, ROOT, VALIDATOR_PYTHON, free_port, start_gateway_process

AUDIT_FHIR = os.environ.get("AUDIT_FHIR", "http://127.0.0.1:18092/fhir").rstrip("/")
GATEWAY_AUDIENCE = "http://127.0.0.1:18080/fhir"  # tokens from the IdP carry this audience
UPSTREAM = os.environ.get("FHIR_DIRECT", "http://127.0.0.1:18091/fhir").rstrip("/")
AUDIT_VALIDATOR = ROOT / "e2e" / "validator" / "validate_audit_events.py"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"


class Relay:
    """A TCP relay to the audit server that can be switched off: while down nothing listens
    on its port and open connections are cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.up()

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self.conns.clear()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def write_config(tmp_path, relay_port: int, listen: int, admin: int, instance: str):
    config = tmp_path / "fhirgate.yaml"
    config.write_text(f"""listen: "127.0.0.1:{listen}"
admin_listen: "127.0.0.1:{admin}"
instance_id: "{instance}"
upstream:
  url: "{UPSTREAM}"
  public_base_path: "/fhir"
issuers:
  - issuer: "{IDP_URL}"
    audience: "{GATEWAY_AUDIENCE}"
    algorithms: ["RS256", "ES256"]
    leeway: "5s"
audit:
  spool:
    path: "{tmp_path / 'spool'}"
  sinks:
    audit-fhir:
      fhir:
        url: "http://127.0.0.1:{relay_port}/fhir"
        batch: 25
        timeout: "2s"
        backoff_max: "500ms"
""")
    return config


class Client:
    """Steady traffic with the client's own log: request id -> status of each answer."""

    def __init__(self, base: str, token: str, patient: str, prefix: str) -> None:
        self.base, self.token, self.patient, self.prefix = base, token, patient, prefix
        self.answered: dict[str, int] = {}
        self.unanswered: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        http = requests.Session()
        n = 0
        while not self.stopped.is_set():
            n += 1
            request_id = f"{self.prefix}-{n:05d}"
            path = f"Patient/{self.patient}" if n % 3 else f"Observation?patient={self.patient}&_count=5"
            try:
                resp = http.get(f"{self.base}/{path}", timeout=5, headers={
                    "Authorization": f"Bearer {self.token}", "X-Request-Id": request_id,
                    "Accept": "application/fhir+json"})
                self.answered[request_id] = resp.status_code
            except requests.RequestException:
                self.unanswered.append(request_id)
                http = requests.Session()
                time.sleep(0.05)
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


def audit_events(prefix: str) -> list[dict]:
    """Every AuditEvent on the audit server whose request id starts with `prefix`."""
    found, url = [], f"{AUDIT_FHIR}/AuditEvent?_count=500"
    while url:
        bundle = requests.get(url, timeout=30, headers={"Accept": "application/fhir+json"}).json()
        for entry in bundle.get("entry", []):
            event = entry["resource"]
            if (request_id(event) or "").startswith(prefix):
                found.append(event)
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return found


def request_id(event: dict) -> str | None:
    for entity in event.get("entity", []):
        if entity.get("type", {}).get("system") == BALP_ENTITY and entity["type"].get("code") == "XrequestId":
            return entity.get("what", {}).get("identifier", {}).get("value")
    return None


def gateway_detail(event: dict, kind: str) -> str | None:
    for entity in event.get("entity", []):
        if entity.get("type", {}).get("code") == "XrequestId":
            return next((d["valueString"] for d in entity.get("detail", []) if d["type"] == kind), None)
    return None


def unshipped(admin: int) -> float:
    text = requests.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('fhirgate_audit_unshipped_records{sink="audit-fhir"}'):
            return float(line.split()[-1])
    return 0.0


def test_every_answered_request_reaches_the_audit_server_once_across_an_outage_and_a_crash(
        tmp_path, tokens, patient_a):
    audit_port = int(AUDIT_FHIR.split(":")[2].split("/")[0])
    relay = Relay(audit_port)
    listen, admin = free_port(), free_port()
    prefix = f"fault-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, relay.port, listen, admin, prefix)
    log_path = tmp_path / "fhirgate.log"
    token = tokens.mint("patient/*.rs", patient=patient_a.id)
    procs = [start_gateway_process(config, admin, log_path)]
    try:
        check_delivery(procs, relay, config, admin, log_path, listen, token, patient_a.id, prefix)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        relay.down()


def check_delivery(procs, relay, config, admin, log_path, listen, token, patient, prefix):
    client = Client(f"http://127.0.0.1:{listen}/fhir", token, patient, prefix)
    try:
        time.sleep(2)
        relay.down()
        time.sleep(2)
        # Records wait for the sink while it is down (the metric is refreshed every second).
        deadline = time.monotonic() + 15
        while (before_kill := unshipped(admin)) <= 0 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert before_kill > 0, (
            f"no records waiting for the sink while it is down: {len(client.answered)} answered, "
            f"{len(client.unanswered)} not")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs.append(start_gateway_process(config, admin, log_path))
        time.sleep(1.5)
        # The sink is still down: the restarted gateway holds the records of both lives.
        assert unshipped(admin) >= before_kill
        relay.up()
        time.sleep(2)
    finally:
        client.stop()

    answered = client.answered
    assert len(answered) > 100, f"only {len(answered)} answers"
    assert Counter(answered.values())[200] > 100, Counter(answered.values())
    print(f"{len(answered)} answered, {len(client.unanswered)} cut off by the kill")

    deadline = time.monotonic() + 60
    while True:
        events = audit_events(prefix)
        missing = set(answered) - {request_id(e) for e in events}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    procs[-1].terminate()
    assert procs[-1].wait(timeout=15) == 0
    assert not missing, f"{len(missing)} answered requests have no AuditEvent, e.g. {sorted(missing)[:5]}"
    counts = Counter(request_id(e) for e in events)
    twice = [rid for rid, n in counts.items() if n > 1]
    assert not twice, f"request ids recorded twice: {twice[:5]}"
    for event in events:
        rid = request_id(event)
        if rid in answered:
            status = gateway_detail(event, "status")
            assert int(status) == answered[rid], (rid, status, answered[rid])

    validated = subprocess.run([str(VALIDATOR_PYTHON), str(AUDIT_VALIDATOR), "-"],
                               input="\n".join(json.dumps(e) for e in events), text=True,
                               capture_output=True, timeout=300)
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-2000:]
