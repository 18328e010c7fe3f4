"""The stubs shipped in src/prism are what generate.py makes from proto/."""

import filecmp
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402


def test_shipped_stubs_match_the_protos():
    with tempfile.TemporaryDirectory() as tmp:
        generate.generate(pathlib.Path(tmp))
        fresh = pathlib.Path(tmp) / "prism"
        shipped = HERE / "src" / "prism"
        made = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
        have = sorted(p.relative_to(shipped) for p in shipped.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts)
        assert made == have, "run: python3 clients/python/generate.py"
        for rel in made:
            assert filecmp.cmp(fresh / rel, shipped / rel, shallow=False), (
                f"{rel} is stale; run: python3 clients/python/generate.py")
