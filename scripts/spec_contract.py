#!/usr/bin/env python3
"""Extracts the wire contract from the interface spec (seed 002) as one line
per field or enum value:  package.Message.field = N label type
(nested types as Outer.Inner). The spec's protobuf lost its line breaks, so
comments can swallow declarations; fields are found by their `type name = N;`
shape, which survives that. Output: tests/fixtures/spec_wire_contract.txt.

Usage: scripts/spec_contract.py ../shared/seeds/002_824767a57664a405.txt
"""
import re
import sys

SERVICES = ["session", "queue", "pubsub", "reader", "transact"]

def sections(text):
    # Each service's protobuf starts at `package prism.X.v1;` and ends at the
    # next "### x.4 Usage Examples" heading.
    for pkg in SERVICES:
        start = text.index(f"package prism.{pkg}.v1;")
        end = text.index("Usage Examples", start)
        yield f"prism.{pkg}.v1", text[start:end]

TOKEN = re.compile(r"\b(message|enum|oneof)\s+(\w+)\s*\{|\{|\}|((?:optional|repeated)\s+)?(map<\s*\w+\s*,\s*[\w.]+\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;|(\w+)\s*=\s*(\d+)\s*;")

def extract(pkg, body):
    out = []
    stack = []  # (kind, name)
    for m in TOKEN.finditer(body):
        kind, name, label, ftype, fname, fnum, ename, enum_num = m.groups()
        tok = m.group(0)
        if kind:
            stack.append((kind, name))
        elif tok == "{":
            stack.append(("block", None))
        elif tok == "}":
            if stack:
                stack.pop()
        elif ftype and stack and stack[-1][0] == "enum":
            # A comment swallowed the line break before this enum value.
            scope = ".".join(n for k, n in stack if k in ("message", "enum"))
            out.append(f"{pkg}.{scope}.{fname} = {fnum} enum-value")
        elif ftype and stack:
            scope = ".".join(n for k, n in stack if k == "message")
            if stack[-1][0] in ("message", "oneof"):
                lab = (label or "").strip() or ("oneof" if stack[-1][0] == "oneof" else "singular")
                ftype = re.sub(r"\s+", "", ftype)
                out.append(f"{pkg}.{scope}.{fname} = {fnum} {lab} {ftype}")
        elif ename and stack and stack[-1][0] == "enum":
            scope = ".".join(n for k, n in stack if k in ("message", "enum"))
            out.append(f"{pkg}.{scope}.{ename} = {enum_num} enum-value")
    return out

def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    lines = []
    for pkg, body in sections(text):
        lines.extend(extract(pkg, body))
    print("\n".join(lines))

if __name__ == "__main__":
    main()
