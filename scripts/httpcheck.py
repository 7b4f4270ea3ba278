#!/usr/bin/env python3
"""Small HTTP helper for the fhirgate scripts (standard library only).

  httpcheck.py wait URL [--timeout S] [--pid PID] [--status CODE]
      poll URL until it answers with CODE (default 200); fail early if PID dies
  httpcheck.py load FHIR_BASE FILE...
      POST each transaction Bundle to FHIR_BASE; every answer must be 200 and every
      entry response 2xx
  httpcheck.py exists FHIR_BASE Type/id...
      exit 0 when every resource reads 200, 1 otherwise
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 10.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_wait(args) -> int:
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if args.pid and not alive(args.pid):
            print(f"process {args.pid} exited while waiting for {args.url}", file=sys.stderr)
            return 3
        try:
            status, _ = request("GET", args.url, timeout=3.0)
            if status == args.status:
                return 0
            last = f"HTTP {status}"
        except (urllib.error.URLError, OSError) as err:
            last = str(getattr(err, "reason", err))
        time.sleep(0.3)
    print(f"timed out after {args.timeout:.0f}s waiting for {args.url} ({last})", file=sys.stderr)
    return 2


def cmd_load(args) -> int:
    base = args.base.rstrip("/")
    for path in args.files:
        with open(path, "rb") as fh:
            body = fh.read()
        started = time.monotonic()
        status, answer = request("POST", base, body, {"Content-Type": "application/fhir+json",
                                                     "Accept": "application/fhir+json"}, timeout=args.timeout)
        elapsed = time.monotonic() - started
        if status != 200:
            print(f"loading {path}: HTTP {status}: {answer[:2000].decode('utf-8', 'replace')}", file=sys.stderr)
            return 1
        doc = json.loads(answer)
        bad = [e.get("response", {}).get("status", "?") for e in doc.get("entry", [])
               if not str(e.get("response", {}).get("status", "")).startswith("2")]
        if bad:
            print(f"loading {path}: entries failed: {bad[:10]}", file=sys.stderr)
            return 1
        print(f"  loaded {os.path.basename(path)}: {len(doc.get('entry', []))} entries in {elapsed:.1f}s", file=sys.stderr)
    return 0


def cmd_exists(args) -> int:
    base = args.base.rstrip("/")
    for ref in args.refs:
        try:
            status, _ = request("GET", f"{base}/{ref}", headers={"Accept": "application/fhir+json"})
        except (urllib.error.URLError, OSError):
            return 1
        if status != 200:
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="HTTP helper for fhirgate scripts")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=60.0)
    w.add_argument("--pid", type=int, default=0)
    w.add_argument("--status", type=int, default=200)
    w.set_defaults(func=cmd_wait)
    ld = sub.add_parser("load")
    ld.add_argument("base")
    ld.add_argument("files", nargs="+")
    ld.add_argument("--timeout", type=float, default=300.0)
    ld.set_defaults(func=cmd_load)
    ex = sub.add_parser("exists")
    ex.add_argument("base")
    ex.add_argument("refs", nargs="+")
    ex.set_defaults(func=cmd_exists)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
