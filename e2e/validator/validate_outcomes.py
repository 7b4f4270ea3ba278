#!/usr/bin/env python3
"""Check the FHIR R4 (4.0.1) OperationOutcomes fhirgate answers itself, in JSON and in XML.

  validate_outcomes.py PATH...   files NAME.json and NAME.xml, or folders of them

Each NAME.json is validated with fhir.resources 6.4.0 (validate.py's checks: the typed model,
the IssueSeverity and IssueType code sets). Each NAME.xml is parsed with the standard library
and checked against the R4 XML rules the gateway's outcomes use: the FHIR namespace, the R4
element order of OperationOutcome, Narrative, issue and CodeableConcept, primitive values in
non-empty `value` attributes and nowhere else, no text content between FHIR elements, and
characters a FHIR string may hold. In both formats the narrative must be a generated XHTML
`div` (in the XHTML namespace, no active content) that says each issue's severity, code and
details. When both NAME.json and NAME.xml are given, they must say the same thing.

Prints one line per document (and per pair); exits 1 when any has problems, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

import fhir.resources

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from validate import ISSUE_TYPES, SEVERITIES, check as check_json_model  # noqa: E402

FHIR = "http://hl7.org/fhir"
XHTML = "http://www.w3.org/1999/xhtml"

# R4 element order (http://hl7.org/fhir/R4/operationoutcome.html and the datatypes page)
OUTCOME_ORDER = ["id", "meta", "implicitRules", "language", "text", "contained", "extension",
                 "modifierExtension", "issue"]
NARRATIVE_ORDER = ["extension", "status", "div"]
ISSUE_ORDER = ["extension", "modifierExtension", "severity", "code", "details", "diagnostics",
               "location", "expression"]
CONCEPT_ORDER = ["extension", "coding", "text"]
CODING_ORDER = ["extension", "system", "version", "code", "display", "userSelected"]
# elements that may appear at most once
SINGLE = {"id", "meta", "implicitRules", "language", "text", "status", "div", "severity", "code",
          "details", "diagnostics", "system", "version", "display", "userSelected"}
NARRATIVE_STATUS = {"generated", "extensions", "additional", "empty"}
# what the narrative may never hold (FHIR narrative rule txt-1)
ACTIVE = {"script", "object", "applet", "embed", "form", "iframe", "frame", "frameset", "base",
          "link", "meta", "style", "input", "button", "textarea", "select"}


def allowed_char(c: str) -> bool:
    """May `c` stand in a FHIR string? (R4 string: no code point below U+0020 but tab, CR, LF.)"""
    return c in "\t\n\r" or (ord(c) >= 0x20 and c not in "\ufffe\uffff")


def local(tag: str, namespace: str = FHIR) -> str | None:
    """The local name of a tag in `namespace`, or None for a tag in another namespace."""
    prefix = "{" + namespace + "}"
    return tag[len(prefix):] if tag.startswith(prefix) else None


# --------------------------------------------------------------------------- narrative


def check_div(div: ET.Element, where: str) -> list[str]:
    """The narrative div: XHTML namespace, no active content, no event handlers, some text."""
    errors = []
    if div.tag != f"{{{XHTML}}}div":
        errors.append(f"{where}: the narrative root is {div.tag!r}, not an XHTML div")
    for element in div.iter():
        name = local(element.tag, XHTML)
        if name is None:
            errors.append(f"{where}: {element.tag!r} is not in the XHTML namespace")
        elif name in ACTIVE:
            errors.append(f"{where}: <{name}> is not allowed in a narrative")
        for attribute in element.attrib:
            if attribute.lower().startswith("on"):
                errors.append(f"{where}: event handler attribute {attribute!r}")
    if not "".join(div.itertext()).strip():
        errors.append(f"{where}: the narrative has no text")
    return errors


def expected_paragraphs(issues: list[dict]) -> list[str]:
    """What fhirgate's narrative says: one paragraph per issue, `severity (code): details`."""
    said = []
    for issue in issues:
        line = f"{issue.get('severity')} ({issue.get('code')})"
        text = (issue.get("details") or {}).get("text")
        if text:
            line += f": {text}"
        said.append(line)
    return said


def check_narrative(div: ET.Element, issues: list[dict], where: str) -> list[str]:
    errors = check_div(div, where)
    paragraphs = ["".join(p.itertext()) for p in div.findall(f"{{{XHTML}}}p")]
    if paragraphs != expected_paragraphs(issues):
        errors.append(f"{where}: the narrative says {paragraphs!r}, the issues {expected_paragraphs(issues)!r}")
    return errors


def tree(element: ET.Element):
    """A comparable form of an XHTML element: tag, attributes, text, children, tails."""
    return (element.tag, sorted(element.attrib.items()), element.text or "",
            [tree(child) for child in element], element.tail or "")


# --------------------------------------------------------------------------- JSON


def read_json(text: str, label: str) -> tuple[dict | None, list[str]]:
    errors = check_json_model(text, "OperationOutcome")
    try:
        doc = json.loads(text)
    except ValueError:
        return None, errors
    if not isinstance(doc, dict):
        return None, errors
    narrative = doc.get("text")
    if not isinstance(narrative, dict):
        errors.append("text: fhirgate's OperationOutcomes carry a narrative")
        return doc, errors
    if narrative.get("status") != "generated":
        errors.append(f"text.status is {narrative.get('status')!r}, expected 'generated'")
    try:
        div = ET.fromstring(narrative.get("div", ""))
    except ET.ParseError as err:
        errors.append(f"text.div is not well-formed XHTML: {err}")
    else:
        errors.extend(check_narrative(div, doc.get("issue") or [], "text.div"))
    for path, value in strings(doc):
        if not all(allowed_char(c) for c in value):
            errors.append(f"{path}: holds a character a FHIR string may not")
    return doc, errors


def strings(value, path: str = ""):
    """Every string of a JSON document with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from strings(item, f"{path}[{n}]")


# --------------------------------------------------------------------------- XML


class XmlReader:
    """Reads fhirgate's XML OperationOutcome into the JSON shape, noting every rule broken."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, message: str) -> None:
        self.errors.append(message)

    def children(self, element: ET.Element, order: list[str], where: str) -> list[tuple[str, ET.Element]]:
        """The FHIR children of `element`, checked against the R4 order and cardinality."""
        if (element.text or "").strip():
            self.fail(f"{where}: text content {element.text.strip()[:40]!r} between FHIR elements")
        found: list[tuple[str, ET.Element]] = []
        last = -1
        for child in element:
            if (child.tail or "").strip():
                self.fail(f"{where}: text content {child.tail.strip()[:40]!r} between FHIR elements")
            name = local(child.tag)
            if name is None:
                self.fail(f"{where}: {child.tag!r} is not in the FHIR namespace")
                continue
            if name not in order:
                self.fail(f"{where}: <{name}> is not an element here")
                continue
            rank = order.index(name)
            if rank < last:
                self.fail(f"{where}: <{name}> comes after <{order[last]}>; R4 order is {', '.join(order)}")
            if rank == last and name in SINGLE:
                self.fail(f"{where}: <{name}> appears more than once")
            last = max(last, rank)
            found.append((name, child))
        return found

    def primitive(self, element: ET.Element, where: str) -> str | None:
        """A primitive's value: a non-empty `value` attribute, no content but extensions."""
        for attribute in element.attrib:
            if attribute not in ("value", "id"):
                self.fail(f"{where}: attribute {attribute!r} on a primitive")
        if (element.text or "").strip() or any(local(c.tag) != "extension" for c in element):
            self.fail(f"{where}: a primitive holds its value in the value attribute only")
        value = element.get("value")
        if value is None:
            self.fail(f"{where}: no value attribute")
        elif not value.strip():
            self.fail(f"{where}: empty value attribute")
        elif not all(allowed_char(c) for c in value):
            self.fail(f"{where}: holds a character a FHIR string may not")
        return value

    def outcome(self, root: ET.Element) -> dict:
        if root.tag != f"{{{FHIR}}}OperationOutcome":
            self.fail(f"root element is {root.tag!r}, expected {{{FHIR}}}OperationOutcome")
        doc: dict = {"resourceType": "OperationOutcome"}
        issues = []
        for name, child in self.children(root, OUTCOME_ORDER, "OperationOutcome"):
            if name == "text":
                doc["text"] = self.narrative(child)
            elif name == "issue":
                issues.append(self.issue(child, f"issue[{len(issues)}]"))
            else:
                self.fail(f"OperationOutcome: <{name}> is not expected from fhirgate")
        if not issues:
            self.fail("OperationOutcome: at least one issue is required")
        doc["issue"] = issues
        if "text" not in doc:
            self.fail("text: fhirgate's OperationOutcomes carry a narrative")
        else:
            div = doc["text"].get("div")
            if div is not None:
                self.errors.extend(check_narrative(div, issues, "text/div"))
        return doc

    def narrative(self, element: ET.Element) -> dict:
        out: dict = {}
        if (element.text or "").strip():
            self.fail("text: text content between FHIR elements")
        last = -1
        for child in element:
            name = local(child.tag) or ("div" if child.tag == f"{{{XHTML}}}div" else None)
            if name not in NARRATIVE_ORDER:
                self.fail(f"text: {child.tag!r} is not an element of Narrative")
                continue
            rank = NARRATIVE_ORDER.index(name)
            if rank <= last:
                self.fail(f"text: <{name}> out of the R4 order {', '.join(NARRATIVE_ORDER)}")
            last = rank
            if name == "status":
                out["status"] = self.primitive(child, "text/status")
                if out["status"] not in NARRATIVE_STATUS:
                    self.fail(f"text/status: {out['status']!r} is not a narrative status")
                elif out["status"] != "generated":
                    self.fail(f"text/status is {out['status']!r}, expected 'generated'")
            elif name == "div":
                out["div"] = child
        if "status" not in out or "div" not in out:
            self.fail("text: Narrative needs status and div")
        return out

    def issue(self, element: ET.Element, where: str) -> dict:
        out: dict = {}
        for name, child in self.children(element, ISSUE_ORDER, where):
            if name in ("severity", "code", "diagnostics"):
                out[name] = self.primitive(child, f"{where}/{name}")
            elif name in ("location", "expression"):
                out.setdefault(name, []).append(self.primitive(child, f"{where}/{name}"))
            elif name == "details":
                out["details"] = self.concept(child, f"{where}/details")
            else:
                self.fail(f"{where}: <{name}> is not expected from fhirgate")
        if out.get("severity") not in SEVERITIES:
            self.fail(f"{where}/severity: {out.get('severity')!r} is not in the R4 IssueSeverity code set")
        if out.get("code") not in ISSUE_TYPES:
            self.fail(f"{where}/code: {out.get('code')!r} is not in the R4 IssueType code set")
        return out

    def concept(self, element: ET.Element, where: str) -> dict:
        out: dict = {}
        for name, child in self.children(element, CONCEPT_ORDER, where):
            if name == "text":
                out["text"] = self.primitive(child, f"{where}/text")
            elif name == "coding":
                coding = {}
                for part, value in self.children(child, CODING_ORDER, f"{where}/coding"):
                    if part != "extension":
                        coding[part] = self.primitive(value, f"{where}/coding/{part}")
                out.setdefault("coding", []).append(coding)
        if not out:
            self.fail(f"{where}: an empty CodeableConcept")
        return out


def read_xml(data: bytes, label: str) -> tuple[dict | None, list[str]]:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, [f"not UTF-8: {err}"]
    declared = re.match(rb"<\?xml[^>]*encoding=[\"']([A-Za-z0-9._-]+)[\"']", data)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        return None, [f"the XML declaration names {declared.group(1).decode()!r}, not UTF-8"]
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        return None, [f"not well-formed XML: {err}"]
    reader = XmlReader()
    doc = reader.outcome(root)
    return doc, reader.errors


# --------------------------------------------------------------------------- pairs


def comparable(doc: dict) -> dict:
    """A document with its narrative div as a comparable tree."""
    out = json.loads(json.dumps({k: v for k, v in doc.items() if k != "text"}))
    narrative = doc.get("text")
    if isinstance(narrative, dict):
        div = narrative.get("div")
        if isinstance(div, str):
            try:
                div = ET.fromstring(div)
            except ET.ParseError:
                div = None
        out["text"] = {"status": narrative.get("status"), "div": tree(div) if div is not None else None}
    return out


def compare(json_doc: dict, xml_doc: dict) -> list[str]:
    a, b = comparable(json_doc), comparable(xml_doc)
    if a == b:
        return []
    problems = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            problems.append(f"{key}: JSON says {a.get(key)!r}, XML says {b.get(key)!r}")
    return problems


def collect(paths: list[str]) -> dict[str, dict[str, pathlib.Path]]:
    """NAME -> {"json": path, "xml": path} over the files and folders given."""
    found: dict[str, dict[str, pathlib.Path]] = {}
    for name in paths:
        path = pathlib.Path(name)
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            if file.suffix in (".json", ".xml"):
                found.setdefault(str(file.with_suffix("")), {})[file.suffix[1:]] = file
            elif not path.is_dir():
                raise SystemExit(f"{file}: neither .json nor .xml")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description="Validate fhirgate's OperationOutcomes in JSON and XML")
    parser.add_argument("--quiet", action="store_true", help="print only problems and the summary")
    parser.add_argument("paths", nargs="+", help="NAME.json / NAME.xml files, or folders of them")
    args = parser.parse_args()
    if fhir.resources.__fhir_version__ != "4.0.1":
        print(f"fhir.resources models FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1", file=sys.stderr)
        return 2
    try:
        found = collect(args.paths)
    except (OSError, SystemExit) as err:
        print(f"cannot read the inputs: {err}", file=sys.stderr)
        return 2
    if not found:
        print("no .json or .xml files given", file=sys.stderr)
        return 2

    checked = invalid = 0
    for name, files in sorted(found.items()):
        docs = {}
        for kind, reader in (("json", read_json), ("xml", read_xml)):
            if kind not in files:
                continue
            data = files[kind].read_bytes()
            doc, errors = reader(data.decode("utf-8", "replace") if kind == "json" else data, str(files[kind]))
            checked += 1
            docs[kind] = doc
            invalid += report(str(files[kind]), errors, args.quiet)
        if docs.get("json") is not None and docs.get("xml") is not None:
            checked += 1
            invalid += report(f"{name}.{{json,xml}} say the same", compare(docs["json"], docs["xml"]), args.quiet)
    print(f"{checked - invalid} valid, {invalid} invalid (OperationOutcome JSON and XML, FHIR {fhir.resources.__fhir_version__})")
    return 1 if invalid else 0


def report(label: str, errors: list[str], quiet: bool) -> int:
    if errors:
        print(f"INVALID {label}")
        for err in errors:
            print(f"    {err}")
        return 1
    if not quiet:
        print(f"ok      {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
