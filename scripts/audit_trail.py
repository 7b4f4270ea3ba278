#!/usr/bin/env python3
"""A synthetic fhirgate audit trail, and an independent answer to a query over it.

    audit_trail.py generate --out DIR [--records N] [--patients N] [--hours H] [--seed S]
    audit_trail.py check --patient ID --since EPOCH_MS [--slack-ms MS] --answer FILE TRAIL_FILE...

`generate` writes DIR/audit.jsonl and two rotated files next to it, named by their rotation
time as a jsonl sink names them, with records spread evenly over the last H hours: synthetic
patients pat-00000 ..., practitioners, apps and scopes, some records delivered twice, and a
few lines cut short. The same seed and the same --now give the same bytes.

`check` reads every trail file whole (no file skipped), keeps the records of the patient (in
context or named by the request) made at or after --since, one per record id, in time order,
and compares them with the answer (JSON lines from `fhirgate audit query --format json`):
the same record ids in the same order, each line exactly as stored. Records within
--slack-ms after --since may be missing from the answer (a relative --since moves with the
clock); none before --since may be in it.
"""

import argparse
import calendar
import heapq
import json
import os
import random
import sys
import time
import uuid

HOUR_MS = 3600 * 1000
SCOPES_PATIENT = "launch/patient openid fhirUser patient/*.rs"
SCOPES_USER = "launch openid fhirUser user/Patient.rs user/Observation.rs"
TYPES = ["Observation", "Condition", "MedicationRequest", "AllergyIntolerance", "Encounter", "DiagnosticReport"]


def rfc3339_ms(ms):
    """RFC 3339 UTC with milliseconds, as the gateway writes times."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


def rotation_suffix(ms):
    """A rotated file's suffix: the rotation time as YYYYMMDDTHHMMSSZ."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ms // 1000))


def uuid7(ms, rng):
    """A UUID v7 for the given millisecond, its random bits from rng."""
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rng.getrandbits(12) << 64
    value |= 0b10 << 62
    value |= rng.getrandbits(62)
    return str(uuid.UUID(int=value))


def record(ms, rng, patients):
    """One synthetic record made at ms, fields in the order the gateway writes them."""
    pat = "pat-%05d" % rng.randrange(patients)
    kind = rng.random()
    if kind < 0.65:
        # A patient-facing app reading its own patient's record.
        client, subject, fhir_user, context, scopes = (
            "patient-app-%d" % rng.randrange(8), "sub-" + pat, "Patient/" + pat, pat, SCOPES_PATIENT)
        target = pat
    else:
        # A clinician's app: no patient in context unless launched with one.
        prac = "prac-%04d" % rng.randrange(300)
        client, subject, fhir_user, scopes = "clinic-app-%d" % rng.randrange(4), "sub-" + prac, "Practitioner/" + prac, SCOPES_USER
        context = pat if rng.random() < 0.3 else None
        target = pat
    denied = rng.random() < 0.04
    if denied and context is not None:
        target = "pat-%05d" % rng.randrange(patients)
    rtype = rng.choice(TYPES)
    if rng.random() < 0.5:
        interaction, rid = "read", "%s-%08x" % (rtype[:3].lower(), rng.getrandbits(32))
        path, query = "/fhir/%s/%s" % (rtype, rid), None
        if rng.random() < 0.3:
            rtype, rid, path = "Patient", target, "/fhir/Patient/" + target
    else:
        interaction, rid = "search-type", None
        path, query = "/fhir/" + rtype, "patient=%s&_count=50" % target
    started = ms - rng.randrange(5, 120)
    status = 403 if denied else 200
    return {
        "record_id": uuid7(ms, rng),
        "instance": "gw-%d" % rng.randrange(3),
        "time": rfc3339_ms(ms),
        "started": rfc3339_ms(started),
        "request_id": "%032x" % rng.getrandbits(128),
        "client_id": client,
        "issuer": "https://idp.synthetic.test",
        "subject": subject,
        "fhir_user": fhir_user,
        "patient": context,
        "token_id": "%024x" % rng.getrandbits(96),
        "scopes": scopes,
        "source": "10.%d.%d.%d" % (rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)),
        "method": "GET",
        "path": path,
        "query": query,
        "interaction": interaction,
        "resource_type": rtype,
        "resource_id": rid,
        "target_patient": target,
        "decision": "deny" if denied else "allow",
        "reason": "other_patient" if denied and context is not None else ("insufficient_scope" if denied else "allowed"),
        "rule": None if denied else "grant-%s" % interaction,
        "status": status,
        "upstream_status": None if denied else 200,
        "latency_ms": round((ms - started) + rng.random(), 3),
    }


def generate(args):
    rng = random.Random(args.seed)
    now = args.now if args.now is not None else int(time.time() * 1000)
    start = now - args.hours * HOUR_MS
    span = now - start
    # Two rotations, at a third and two thirds of the span, on whole seconds.
    rotations = [(start + span * k // 3) // 1000 * 1000 for k in (1, 2)]
    base = os.path.join(args.out, "audit.jsonl")
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):
        if name.startswith("audit.jsonl"):
            os.remove(os.path.join(args.out, name))
    paths = [base + "." + rotation_suffix(r) for r in rotations] + [base]
    files = [open(p, "w", encoding="utf-8") for p in paths]
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    pending = []  # (file index at which to write, line): duplicates delivered again later
    current = 0
    cut = {args.records // 3 + 7, args.records // 2 + 11, args.records - 5}
    for i in range(args.records):
        ms = start + span * i // args.records + rng.randrange(0, 40)
        while current < len(rotations) and ms >= rotations[current]:
            current += 1
        out = files[current]
        line = dumps(record(ms, rng, args.patients))
        if i in cut:
            out.write(line[: len(line) // 2] + "\n")
            continue
        out.write(line + "\n")
        if rng.random() < 0.002:
            heapq.heappush(pending, (i + rng.randrange(1, 500), line))
        while pending and pending[0][0] <= i:
            out.write(heapq.heappop(pending)[1] + "\n")
    for _, line in sorted(pending):
        files[-1].write(line + "\n")
    for f in files:
        f.close()
    for p in paths:
        print(p)


def expected(patient, since_ms, trail_files):
    """(time ms, record id) -> stored lines, for the patient's records at or after since."""
    found = {}
    for path in trail_files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                try:
                    rec = json.loads(line)
                    t = time.strptime(rec["time"][:19], "%Y-%m-%dT%H:%M:%S")
                    ms = calendar.timegm(t) * 1000 + int(rec["time"][20:23])
                except (ValueError, KeyError, TypeError):
                    continue
                if patient not in (rec.get("patient"), rec.get("target_patient")) or ms < since_ms:
                    continue
                found.setdefault((ms, rec["record_id"]), set()).add(line)
    return found


def check(args):
    found = expected(args.patient, args.since, args.files)
    want = sorted(found)
    with open(args.answer, encoding="utf-8") as f:
        got_lines = [line.rstrip("\n") for line in f]
    got_ids = [json.loads(line)["record_id"] for line in got_lines]
    present = set(got_ids)
    slack_end = args.since + args.slack_ms
    want = [key for key in want if key[0] >= slack_end or key[1] in present]
    problems = []
    if [rid for _, rid in want] != got_ids:
        problems.append("record ids differ: %d expected, %d in the answer" % (len(want), len(got_ids)))
    stored = {rid: found[(ms, rid)] for ms, rid in want}
    if any(line not in stored.get(rid, ()) for rid, line in zip(got_ids, got_lines)):
        problems.append("a line of the answer is not a stored line of its record")
    if problems:
        print("MISMATCH: " + "; ".join(problems))
        return 1
    print("ok: %d records, same ids in the same order, lines as stored" % len(got_ids))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--out", required=True)
    gen.add_argument("--records", type=int, default=1_000_000)
    gen.add_argument("--patients", type=int, default=2000)
    gen.add_argument("--hours", type=int, default=48)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--now", type=int, default=None, help="the trail's end, epoch ms (default: now)")
    chk = sub.add_parser("check")
    chk.add_argument("--patient", required=True)
    chk.add_argument("--since", type=int, required=True, help="epoch ms")
    chk.add_argument("--slack-ms", type=int, default=0)
    chk.add_argument("--answer", required=True)
    chk.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
