#!/usr/bin/env python3
"""Drives a running fhirgate at a fixed rate with a mix of allowed and refused requests, for
scripts/soak.sh. Standard library only.

  soak_load.py --base URL --idp URL --index FILE --pid PID --seconds N --rate R
               [--warmup S] [--connections C] [--report FILE] [--label TEXT]

Every request's expected status is known: own Patient read, own Observation search and own
resource reads (200); another patient's Patient and Observation (403); a resource type the
token has no scope for (403); no token, a token with a broken signature, a made-up token
(401). Tokens come from the real authorization server (client_credentials) and are fetched
anew every --token-every seconds, so the gateway keeps meeting tokens it has not seen.

Requests are scheduled at the rate whatever the answers take (open loop): latency is counted
from the moment a request was due, so a stalled gateway shows in it. The gateway's resident
memory (VmRSS of --pid) is read when the warm-up ends and at the end.

Writes the report (Markdown, docs/SOAK.md) to --report and stdout; exits 1 when any answer
had an unexpected status or a request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from get_token import fetch_token  # noqa: E402


class Tokens:
    """Current tokens from the authorization server, replaced in the background."""

    def __init__(self, idp: str, own: str, every: float) -> None:
        self.idp, self.own, self.every = idp, own, every
        self.lock = threading.Lock()
        self.fetched = 0
        self.current = self.fetch()

    def fetch(self) -> dict[str, str]:
        wide = fetch_token(self.idp, "patient-app", "patient-secret",
                           "launch/patient patient/*.rs", patient=self.own)["access_token"]
        narrow = fetch_token(self.idp, "patient-app", "patient-secret",
                             "launch/patient patient/Patient.rs", patient=self.own)["access_token"]
        self.fetched += 2
        return {"wide": wide, "narrow": narrow}

    def refresh_forever(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            try:
                fresh = self.fetch()
            except SystemExit as err:  # fetch_token reports failures this way
                print(f"token refresh failed: {err}", file=sys.stderr)
                continue
            with self.lock:
                self.current = fresh

    def get(self, which: str) -> str:
        with self.lock:
            return self.current[which]


def broken(token: str) -> str:
    """The token with its signature changed: well formed, never valid."""
    head, claims, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{head}.{claims}.{flipped}"


def request_mix(index: dict) -> list[tuple[str, int, str, str | None, int]]:
    """(kind, weight, path, token kind or None, expected status)."""
    own, other = index["patients"][0], index["patients"][1]
    own_id, other_id = own["id"], other["id"]
    own_obs = own["ids"]["Observation"][0]
    other_obs = other["ids"]["Observation"][0]
    own_condition = own["ids"]["Condition"][0]
    return [
        ("own patient read", 20, f"Patient/{own_id}", "wide", 200),
        ("own observation search", 15, f"Observation?patient={own_id}&_count=10", "wide", 200),
        ("own observation read", 15, f"Observation/{own_obs}", "wide", 200),
        ("own condition read", 10, f"Condition/{own_condition}", "wide", 200),
        ("other patient read", 10, f"Patient/{other_id}", "wide", 403),
        ("other observation read", 5, f"Observation/{other_obs}", "wide", 403),
        ("missing scope", 10, f"Observation/{own_obs}", "narrow", 403),
        ("no token", 5, f"Patient/{own_id}", None, 401),
        ("broken signature", 5, f"Patient/{own_id}", "broken", 401),
        ("made-up token", 5, f"Patient/{own_id}", "made-up", 401),
    ]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one HTTP/1.1 response; returns its status and whether the server closes."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before the answer")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked, closes = 0, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and "close" in value:
            closes = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, closes


class Load:
    def __init__(self, args: argparse.Namespace, tokens: Tokens, mix: list) -> None:
        self.args, self.tokens, self.mix = args, tokens, mix
        parts = urllib.parse.urlsplit(args.base)
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path.rstrip("/")
        self.weights = [m[1] for m in mix]
        self.counts: collections.Counter = collections.Counter()
        self.unexpected: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()
        self.latencies: list[float] = []
        self.measuring = False

    def authorization(self, which: str | None) -> str:
        if which is None:
            return ""
        if which == "broken":
            token = broken(self.tokens.get("wide"))
        elif which == "made-up":
            token = f"made-up-{random.getrandbits(64):016x}"
        else:
            token = self.tokens.get(which)
        return f"Authorization: Bearer {token}\r\n"

    async def worker(self, queue: asyncio.Queue) -> None:
        reader = writer = None
        while True:
            due, (kind, _, path, which, expected) = await queue.get()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write((f"GET {self.prefix}/{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                              f"Accept: application/fhir+json\r\n{self.authorization(which)}\r\n").encode())
                await writer.drain()
                status, closes = await asyncio.wait_for(read_response(reader), 60)
                took = time.monotonic() - due
                self.counts[(kind, status)] += 1
                if status != expected:
                    self.unexpected[(kind, status)] += 1
                if self.measuring:
                    self.latencies.append(took)
                if closes:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
                self.failures[f"{kind}: {type(err).__name__}"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
            finally:
                queue.task_done()

    async def run(self, seconds: float, rate: float) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        workers = [asyncio.create_task(self.worker(queue)) for _ in range(self.args.connections)]
        started = time.monotonic()
        sent = 0
        while True:
            due = started + sent / rate
            if due - started >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((due, random.choices(self.mix, self.weights)[0]))
            sent += 1
        await queue.join()
        for w in workers:
            w.cancel()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(l.split(":", 1)[1].strip() for l in info if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def report(args, load: Load, tokens: Tokens, rss: tuple[int, int], wall: float) -> str:
    total = sum(load.counts.values())
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (kind, status), n in load.counts.items():
        by_kind[kind][status] += n
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC{' - ' + args.label if args.label else ''}",
        "",
        f"- machine: {machine()}",
        f"- gateway: {args.gateway_desc}",
        f"- rate: {args.rate:g} requests/s for {args.seconds:g} s ({wall:.0f} s wall), "
        f"{args.connections} connections, warm-up {args.warmup:g} s",
        f"- requests: {total} answered, {sum(load.failures.values())} failed without an answer, "
        f"tokens fetched: {tokens.fetched}",
        f"- unexpected statuses: {sum(load.unexpected.values())}",
        f"- latency after warm-up (from when each request was due): p50 "
        f"{percentile(load.latencies, 0.50) * 1000:.1f} ms, p99 {percentile(load.latencies, 0.99) * 1000:.1f} ms",
        f"- gateway RSS: {rss[0] / 1024:.1f} MiB after warm-up, {rss[1] / 1024:.1f} MiB at the end",
        "",
        "| request | expected | answered |",
        "|---|---|---|",
    ]
    for kind, _, _, _, expected in load.mix:
        seen = ", ".join(f"{status}: {n}" for status, n in sorted(by_kind[kind].items()))
        lines.append(f"| {kind} | {expected} | {seen or '-'} |")
    for (kind, status), n in sorted(load.unexpected.items()):
        lines.append(f"\nunexpected: {kind} answered {status} ({n} times)")
    for what, n in sorted(load.failures.items()):
        lines.append(f"\nfailed: {what} ({n} times)")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    index = json.load(open(args.index))
    tokens = Tokens(args.idp, index["patients"][0]["id"], args.token_every)
    stop = threading.Event()
    threading.Thread(target=tokens.refresh_forever, args=(stop,), daemon=True).start()
    load = Load(args, tokens, request_mix(index))
    started = time.monotonic()
    await load.run(min(args.warmup, args.seconds), args.rate)
    rss_warm = rss_kib(args.pid)
    load.measuring = True
    await load.run(max(args.seconds - args.warmup, 0), args.rate)
    rss_end = rss_kib(args.pid)
    stop.set()
    text = report(args, load, tokens, (rss_warm, rss_end), time.monotonic() - started)
    print(text)
    if args.report:
        with open(args.report, "w") as out:
            out.write(text)
    return 1 if load.unexpected or load.failures or not load.latencies else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the gateway's FHIR base URL")
    parser.add_argument("--idp", required=True, help="the authorization server (JWTs)")
    parser.add_argument("--index", required=True, help="e2e/data/index.json")
    parser.add_argument("--pid", type=int, required=True, help="the gateway's process id")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--token-every", type=float, default=60, help="seconds between token fetches")
    parser.add_argument("--report", help="write the report here too")
    parser.add_argument("--label", default="", help="a note for the report's heading")
    parser.add_argument("--gateway-desc", default="fhirgate", help="what ran, for the report")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
