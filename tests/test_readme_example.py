"""The README's Python example runs as written and prints the decoded text (issue 13)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_prints_the_answer_text():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "00168"  # 0123 + 0045, the shipped model's old domain
    assert sorted(eval(lines[1])) == list(range(6))  # one token per step, every step once
