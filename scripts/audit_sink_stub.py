#!/usr/bin/env python3
"""Audit sink stand-ins for scripts/bench-audit-sink.sh, on 127.0.0.1:

  audit_sink_stub.py ack PORT     a FHIR endpoint that takes every batch Bundle at once and
                                  answers a batch-response with 201 for each entry
  audit_sink_stub.py silent PORT  accepts connections and reads requests but never answers

Only for measuring the gateway's own latency; correctness is tested against a real FHIR
server (e2e/tests/test_audit_delivery.py).
"""
from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Ack(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        entries = json.loads(body).get("entry", [])
        answer = json.dumps({"resourceType": "Bundle", "type": "batch-response",
                             "entry": [{"response": {"status": "201 Created"}} for _ in entries]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


def silent(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    held = []

    def drain(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    while True:
        conn, _ = sock.accept()
        held.append(conn)
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("ack", "silent"):
        print(__doc__, file=sys.stderr)
        return 2
    port = int(sys.argv[2])
    if sys.argv[1] == "ack":
        ThreadingHTTPServer(("127.0.0.1", port), Ack).serve_forever()
    else:
        silent(port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
