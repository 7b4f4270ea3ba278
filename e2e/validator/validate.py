#!/usr/bin/env python3
"""Validate FHIR R4 (4.0.1) OperationOutcome documents with fhir.resources 6.4.0.

  validate.py FILE...        each FILE holds one JSON document
  validate.py -              one JSON document per line on stdin (blank lines ignored)
  validate.py --type Bundle FILE   validate another R4 resource type

Besides the typed model it checks what the model does not: resourceType, the required
code bindings of OperationOutcome.issue.severity and .code, and a non-empty issue list.
Prints one line per document; exits 1 when any document is invalid, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import fhir.resources

SEVERITIES = {"fatal", "error", "warning", "information"}
# http://hl7.org/fhir/R4/valueset-issue-type.html
ISSUE_TYPES = {
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
}


def model_for(resource_type: str):
    module = importlib.import_module(f"fhir.resources.{resource_type.lower()}")
    return getattr(module, resource_type)


def check(text: str, resource_type: str) -> list[str]:
    try:
        doc = json.loads(text)
    except ValueError as err:
        return [f"not JSON: {err}"]
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    errors: list[str] = []
    if doc.get("resourceType") != resource_type:
        errors.append(f"resourceType is {doc.get('resourceType')!r}, expected {resource_type!r}")
        return errors
    try:
        model_for(resource_type).parse_obj(doc)
    except Exception as err:  # pydantic.ValidationError and friends
        errors.extend(line for line in str(err).splitlines() if line.strip())
    if resource_type == "OperationOutcome":
        issues = doc.get("issue")
        if not isinstance(issues, list) or not issues:
            errors.append("issue: at least one issue is required")
        else:
            for n, issue in enumerate(issues):
                if not isinstance(issue, dict):
                    errors.append(f"issue/{n}: not an object")
                    continue
                if issue.get("severity") not in SEVERITIES:
                    errors.append(f"issue/{n}/severity: {issue.get('severity')!r} is not in the R4 IssueSeverity code set")
                if issue.get("code") not in ISSUE_TYPES:
                    errors.append(f"issue/{n}/code: {issue.get('code')!r} is not in the R4 IssueType code set")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description="Validate R4 OperationOutcome JSON documents")
    parser.add_argument("--type", default="OperationOutcome", help="resource type (default OperationOutcome)")
    parser.add_argument("--quiet", action="store_true", help="print only invalid documents and the summary")
    parser.add_argument("inputs", nargs="+", help="files, or - for one document per stdin line")
    args = parser.parse_args()
    if fhir.resources.__fhir_version__ != "4.0.1":
        print(f"fhir.resources models FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1", file=sys.stderr)
        return 2

    documents: list[tuple[str, str]] = []
    for name in args.inputs:
        if name == "-":
            for n, line in enumerate(sys.stdin, 1):
                if line.strip():
                    documents.append((f"stdin:{n}", line))
        else:
            try:
                with open(name, encoding="utf-8") as fh:
                    documents.append((name, fh.read()))
            except OSError as err:
                print(f"cannot read {name}: {err}", file=sys.stderr)
                return 2

    invalid = 0
    for label, text in documents:
        errors = check(text, args.type)
        if errors:
            invalid += 1
            print(f"INVALID {label}")
            for err in errors:
                print(f"    {err}")
        elif not args.quiet:
            print(f"ok      {label}")
    print(f"{len(documents) - invalid} valid, {invalid} invalid ({args.type}, FHIR {fhir.resources.__fhir_version__})")
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
