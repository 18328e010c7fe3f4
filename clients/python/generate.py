#!/usr/bin/env python3
"""Regenerates the gRPC stubs shipped in src/prism/ from ../../proto.

Run after changing a .proto file: python3 clients/python/generate.py
(needs grpcio-tools at the version pinned below, so the output is the same
on every machine; tests/test_stubs.py fails when the shipped stubs differ).
"""

import pathlib
import shutil
import sys
import tempfile

GRPCIO_TOOLS = "1.85.1"
HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
PACKAGES = ["config", "session", "keyvalue", "queue", "pubsub", "reader", "transact", "cache"]


def generate(out: pathlib.Path) -> None:
    """Writes the stubs of every package under `out/prism/`."""
    from grpc_tools import protoc

    include = pathlib.Path(protoc.__file__).parent / "_proto"
    protos = sorted(
        str(p.relative_to(PROTO))
        for package in PACKAGES
        for p in (PROTO / "prism" / package).rglob("*.proto")
    )
    code = protoc.main([
        "protoc", f"-I{PROTO}", f"-I{include}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
        *protos,
    ])
    if code != 0:
        sys.exit("protoc failed")
    for d in [out / "prism", *(p for p in (out / "prism").rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()


def main() -> None:
    from importlib.metadata import version

    if version("grpcio-tools") != GRPCIO_TOOLS:
        sys.exit(f"needs grpcio-tools=={GRPCIO_TOOLS} (found {version('grpcio-tools')})")
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        target = HERE / "src" / "prism"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(pathlib.Path(tmp) / "prism", target)
    print(f"stubs written to {target}")


if __name__ == "__main__":
    main()
