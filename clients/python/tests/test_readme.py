"""The README's Python example runs as written (against this gateway)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def test_the_readme_example_runs(endpoint, capsys):
    text = README.read_text()
    section = text[text.index("### Python: `prism-sdk`"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"127.0.0.1:8980"' in example
    exec(compile(example.replace('"127.0.0.1:8980"', repr(endpoint)), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("b'ada' ") and "user/42" in out, out
