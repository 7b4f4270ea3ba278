"""Sends one request per distinct, validly signed ES256 token through the gateway, so its
verified-token cache ends up holding that many tokens (scripts/bench-token-memory.sh).

    token_flood.py URL COUNT KEY_PEM KID ISSUER AUDIENCE [THREADS]

Every token has the same claims but its own `jti`; each request must answer 200. Prints the
number sent, the statuses seen and the time taken.
"""
from __future__ import annotations

import collections
import http.client
import sys
import threading
import time
import urllib.parse

import jwt


def tokens(count: int, key: bytes, kid: str, issuer: str, audience: str) -> list[str]:
    now = int(time.time())
    out = []
    for n in range(count):
        claims = {
            "iss": issuer, "aud": audience, "sub": "user-flood", "client_id": "flood-app",
            "iat": now, "exp": now + 3600, "jti": f"flood-{n:08d}",
            "scope": "launch/patient patient/*.rs", "patient": "pat-A",
        }
        out.append(jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid}))
    return out


def send(url: str, batch: list[str], statuses: collections.Counter, lock: threading.Lock) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    seen: collections.Counter = collections.Counter()
    for token in batch:
        conn.request("GET", parts.path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        seen[resp.status] += 1
    conn.close()
    with lock:
        statuses.update(seen)


def main() -> int:
    url, count, pem, kid, issuer, audience = sys.argv[1:7]
    threads = int(sys.argv[7]) if len(sys.argv) > 7 else 8
    started = time.monotonic()
    all_tokens = tokens(int(count), open(pem, "rb").read(), kid, issuer, audience)
    made = time.monotonic() - started
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    workers = [threading.Thread(target=send, args=(url, all_tokens[i::threads], statuses, lock))
               for i in range(threads)]
    sending = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - sending
    print(f"tokens {count} made in {made:.1f}s, sent in {took:.1f}s, statuses {dict(statuses)}")
    return 0 if statuses.get(200, 0) == int(count) else 1


if __name__ == "__main__":
    sys.exit(main())
