#!/usr/bin/env python3
"""The two ends around the gateway for scripts/profile-request.sh.

    profile_peer.py origin PORT FIXTURES JWKS
        A small HTTP/1.1 keep-alive FHIR origin on 127.0.0.1:PORT serving the peers
        harness's fixtures the way its nginx origin does: /fhir/Patient/123,
        /fhir/Observation?patient=123 (the 20-entry searchset; any other patient an empty
        one), /fhir/metadata, and the issuer's keys at /.well-known/jwks.json. Prints
        "ready" once listening.

    profile_peer.py load URL TOKEN_FILE COUNT [CONNECTIONS]
        COUNT GET requests to URL with the token as bearer, over CONNECTIONS keep-alive
        connections (1 by default: one request after another, as a lightly loaded gateway
        sees them), each answer read whole and required to be 200. Prints the number sent.

Only the gateway process is measured, so neither end needs to be fast.
"""

import http.client
import http.server
import pathlib
import socketserver
import sys
import threading
import urllib.parse


def origin(port: int, fixtures: pathlib.Path, jwks: pathlib.Path) -> None:
    files = {
        "/fhir/Patient/123": fixtures / "Patient-123.json",
        "/fhir/metadata": fixtures / "metadata.json",
    }
    bodies = {path: file.read_bytes() for path, file in files.items()}
    search = (fixtures / "Observation-patient-123.json").read_bytes()
    empty = (fixtures / "Observation-empty.json").read_bytes()
    not_found = (fixtures / "OperationOutcome-404.json").read_bytes()
    keys = jwks.read_bytes()
    fhir_json = "application/fhir+json; charset=utf-8"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: without this, Nagle's algorithm holds the body
        # back until the gateway's delayed acknowledgement.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            url = urllib.parse.urlsplit(self.path)
            status, kind, body = 200, fhir_json, None
            if url.path == "/.well-known/jwks.json":
                kind, body = "application/json", keys
            elif url.path == "/fhir/Observation":
                patient = urllib.parse.parse_qs(url.query).get("patient", [""])[0]
                body = search if patient in ("123", "Patient/123") else empty
            else:
                body = bodies.get(url.path)
            if body is None:
                status, body = 404, not_found
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def load(url: str, token_file: pathlib.Path, count: int, connections: int) -> None:
    token = token_file.read_text().strip()
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    failures: list[str] = []

    def run(share: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        for _ in range(share):
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(f"{response.status} {response.reason}")
                return
        connection.close()

    shares = [count // connections + (1 if i < count % connections else 0) for i in range(connections)]
    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"load: {len(failures)} requests failed, first: {failures[0]}")
    print(count)


def main() -> None:
    match sys.argv[1:]:
        case ["origin", port, fixtures, jwks]:
            origin(int(port), pathlib.Path(fixtures), pathlib.Path(jwks))
        case ["load", url, token, count]:
            load(url, pathlib.Path(token), int(count), 1)
        case ["load", url, token, count, connections]:
            load(url, pathlib.Path(token), int(count), int(connections))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
