"""The code tasks (DESIGN §7, round 3): prompts, code extraction, programs, loaders, and every
HumanEval / MBPP reference passing in the sandbox while a broken variant of each fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tabom.sandbox import bwrap_works
from tabom.tasks import DataFileError, make_task
from tabom.tasks.code import HUMANEVAL_PROMPT, build_program, defines, extract_code

VENDORED = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="no working bubblewrap")


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1"),
        ("```py\nx = 1\n```", "x = 1"),
        ("```\nx = 2\n```", "x = 2"),
        ("```text\nnot code\n```\n```python\nx = 3\n```", "x = 3"),
        ("```python\ndef f():\n    return 1", "def f():\n    return 1"),  # cut by the length
        ("\n\n    return a + b\n\n", "    return a + b"),  # a body keeps its indentation
        ("def g(): pass", "def g(): pass"),
    ],
)
def test_extract_code(response, code):
    assert extract_code(response) == code


def test_a_completion_is_appended_and_a_whole_function_follows_the_prompt():
    prompt = 'def helper():\n    return 1\n\ndef f(x):\n    """Add one."""\n'
    body = build_program(
        "    return x + helper()", tests="assert f(1) == 2", prompt=prompt, entry_point="f"
    )
    assert body == prompt + "    return x + helper()\nassert f(1) == 2\n"
    whole = build_program("def f(x):\n    return x + 1", tests="T", prompt=prompt, entry_point="f")
    assert whole.startswith(prompt + "\ndef f(x):") and whole.endswith("\nT\n")
    assert defines("async def f(x): pass", "f") and not defines("def ff(x): pass", "f")
    mbpp = build_program("def f(): pass", tests="assert f() is None", setup="import math")
    assert mbpp == "def f(): pass\nimport math\nassert f() is None\n"


# ----------------------------------------------------------------------------- loaders


def test_loaders_read_the_shared_formats():
    he = make_task("humaneval").load(VENDORED / "humaneval" / "HumanEval_sample.jsonl")
    assert [e.id for e in he] == ["humaneval-0", "humaneval-2", "humaneval-10", "humaneval-53"]
    rec = json.loads(
        (VENDORED / "humaneval" / "HumanEval_sample.jsonl").read_text().splitlines()[0]
    )
    assert he[0].prompt == HUMANEVAL_PROMPT.format(prompt=rec["prompt"].strip())
    assert he[0].data["tests"].endswith("check(has_close_elements)")
    mb = make_task("mbpp").load(VENDORED / "mbpp" / "mbpp_sample.jsonl")
    assert [e.id for e in mb] == ["mbpp-2", "mbpp-3", "mbpp-4", "mbpp-11", "mbpp-367"]
    assert mb[0].prompt.startswith("You are an expert Python programmer, and here is your task:\n")
    assert mb[0].prompt.count("\nassert ") == 3  # the task's asserts, as lm-eval shows them
    assert mb[4].data["setup"].startswith("root = Node(1)")
    test_split = make_task("mbpp:split=test").load(VENDORED / "mbpp" / "mbpp_sample.jsonl")
    assert [e.id for e in test_split] == ["mbpp-11", "mbpp-367"]
    drawn = make_task(f"humaneval:path={VENDORED / 'humaneval' / 'HumanEval_sample.jsonl'}")
    a = drawn.generate(3, torch.Generator().manual_seed(0))
    assert a == drawn.generate(3, torch.Generator().manual_seed(0)) and len({e.id for e in a}) == 3


def test_a_malformed_code_file_names_the_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "tests": "assert 1"}\n{"prompt": "p"}\n')
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: field 'tests': missing"):
        make_task("code").load(bad)
    bad.write_text('{"task_id": 1, "text": "t", "code": "c", "test_list": "assert 1"}\n')
    with pytest.raises(DataFileError, match=r":1: field 'test_list'"):
        make_task("mbpp").load(bad)
    with pytest.raises(ValueError, match="split must be one of"):
        make_task("mbpp:split=dev")
    with pytest.raises(ValueError, match="timeout"):
        make_task("mbpp:timeout=0")


# ----------------------------------------------------------------------------- verdicts

WRAP = """
_tabom_original = {name}
def {name}(*args, **kwargs):
    return _tabom_break(_tabom_original(*args, **kwargs))
def _tabom_break(r):
    if {none}:
        return None
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, (list, tuple)):
        return type(r)(list(r) + [None])
    return None
"""


def broken(reference: str, names: list[str], none: bool) -> str:
    """The reference with each named function wrapped: it returns None, or off by one."""
    return reference + "".join(WRAP.format(name=n, none=none) for n in names)


def mbpp_names(ex) -> list[str]:
    code = ex.answer
    return [n for n in re.findall(r"(?m)^def\s+(\w+)", code) if n in ex.data["tests"]]


def check_set(task, examples, names_of) -> None:
    """Every reference passes; the broken variant (None / off by one, alternating) fails."""
    pairs = [(ex, ex.answer) for ex in examples]
    pairs += [(ex, broken(ex.answer, names_of(ex), i % 2 == 0)) for i, ex in enumerate(examples)]
    verdicts = task.verdicts(pairs)
    n = len(examples)
    refs = [(ex.id, v) for ex, v in zip(examples, verdicts[:n], strict=True) if not v.passed]
    assert not refs, refs[:5]
    broke = [(ex.id, v) for ex, v in zip(examples, verdicts[n:], strict=True) if v.passed]
    assert not broke, broke[:5]


@needs_bwrap
def test_vendored_references_pass_and_broken_variants_fail():
    he = make_task("humaneval:timeout=20,workers=2")
    check_set(
        he,
        he.load(VENDORED / "humaneval" / "HumanEval_sample.jsonl"),
        lambda ex: [ex.data["entry_point"]],
    )
    mb = make_task("mbpp:timeout=20,workers=2")
    check_set(mb, mb.load(VENDORED / "mbpp" / "mbpp_sample.jsonl"), mbpp_names)


@needs_bwrap
def test_a_generic_code_task_runs_prompt_tests_and_setup(tmp_path):
    data = tmp_path / "mine.jsonl"
    rows = [
        {"prompt": "def inc(x):\n", "tests": "assert inc(1) == 2", "entry_point": "inc"},
        {"prompt": "Write sq.", "tests": "assert sq(3) == K", "setup": "K = 9", "answer": "x"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task("code:timeout=5")
    a, b = task.load(data)
    assert a.id == "code-mine-1" and b.answer == "x"
    assert task.verify_many(
        [
            (a, "    return x + 1"),
            (a, "    return x"),
            (b, "```python\ndef sq(v):\n    return v * v\n```"),
            (b, "def sq(v): return v"),
        ]
    ) == [True, False, True, False]


@pytest.mark.slow
@needs_bwrap
@pytest.mark.skipif(not (SHARED / "humaneval").is_dir(), reason=f"no HumanEval at {SHARED}")
def test_every_humaneval_solution_passes_and_its_broken_variant_fails():
    task = make_task("humaneval:timeout=60")
    examples = task.load(SHARED / "humaneval" / "HumanEval.jsonl")
    assert len(examples) == 164
    check_set(task, examples, lambda ex: [ex.data["entry_point"]])


@pytest.mark.slow
@needs_bwrap
@pytest.mark.skipif(not (SHARED / "mbpp").is_dir(), reason=f"no MBPP at {SHARED}")
def test_every_mbpp_reference_passes_and_its_broken_variant_fails():
    task = make_task("mbpp:timeout=60")
    examples = task.load(SHARED / "mbpp" / "mbpp.jsonl")
    assert len(examples) == 974
    check_set(task, examples, mbpp_names)
