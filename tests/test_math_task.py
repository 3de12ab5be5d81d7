"""The math task (DESIGN §7, round 3): the last \\boxed{}, math-verify equivalence with a time
bound that needs no signal.alarm, pathological answers, and MATH-500 answers equivalent to
themselves, to their solutions' boxes and to formatting variants."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from tabom.tasks import DataFileError, make_task  # noqa: E402
from tabom.tasks import math_task as math_mod  # noqa: E402
from tabom.tasks.math_task import PROMPT_SUFFIX, MathVerifier, MathVerifyMissing, last_boxed  # noqa: E402

VENDORED = Path(__file__).parent / "data" / "math500" / "test_sample.jsonl"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500" / "test.jsonl"


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout=3.0, workers=2)
    yield v
    v.close()


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{x^{2}}", "x^{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
        ("\\boxed{ \\left( 3, \\frac{\\pi}{2} \\right) }", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5$", "5"),
        ("\\boxed{\\frac{1}{2}", None),  # never closes
        ("no box: 42", None),
        ("\\boxed{1}" + "x" * 70_000, None),  # too long to read
    ],
)
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


@pytest.mark.parametrize(
    ("gold", "pred", "same"),
    [
        ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt 3}{2}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{14}{3}", "4\\frac{2}{3}", True),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{3} \\right)", False),
        ("9", "-9", False),
    ],
)
def test_equivalence(verifier, gold, pred, same):
    assert verifier.equivalent(gold, pred) is same


def test_pathological_answers_are_wrong_in_bounded_time_off_the_main_thread(verifier):
    preds = ["10^{10^{10^{10}}}", "9" * 100_000, "\\frac{1}{2", "}{" * 500, "\\sqrt{" * 300]
    out: list[bool] = []

    def run() -> None:  # a worker thread: signal.alarm would raise here
        out.extend(verifier.equivalent("2", p) for p in preds)

    t0 = time.monotonic()
    th = threading.Thread(target=run)
    th.start()
    th.join(60)
    assert not th.is_alive() and out == [False] * len(preds)
    assert time.monotonic() - t0 < 5 * (3.0 + 10)  # each: at most the timeout and a restart
    assert verifier.equivalent("2", "2")  # the killed worker was replaced


def test_the_task_loads_answer_or_boxed_solution_and_verifies(tmp_path):
    task = make_task("math:timeout=5,workers=1")
    rows = [
        {"problem": "1+1?", "answer": "2"},
        {"problem": "Half?", "solution": "It is $\\boxed{\\frac12}$."},
    ]
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = task.load(f)
    assert a.id == "math-m-1" and a.prompt == "1+1?" + PROMPT_SUFFIX
    assert a.answer == "$\\boxed{2}$" and b.data["target"] == "\\frac12"
    got = task.verify_many(
        [(a, "so \\boxed{2}"), (a, "\\boxed{3}"), (b, "\\boxed{0.5}"), (b, "1/2")]
    )
    assert got == [True, False, True, False]  # no box, no answer
    f.write_text('{"problem": "p", "solution": "no box"}\n')
    with pytest.raises(DataFileError, match=r"m.jsonl:1: field 'solution'"):
        task.load(f)
    f.write_text('{"problem": "p"}\n')
    with pytest.raises(DataFileError, match=r"m.jsonl:1: field 'answer'"):
        task.load(f)


def test_without_math_verify_the_task_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        math_mod.importlib.util,
        "find_spec",
        lambda n, *a: None if n == "math_verify" else real(n, *a),
    )
    with pytest.raises(MathVerifyMissing, match=r"pip install 'tabom\[math\]'"):
        make_task("math")


def variants(answer: str) -> list[str]:
    """Formatting variants of an answer: spaces, \\dfrac for \\frac, \\left( \\right) dropped."""
    spaced = re.sub(r"([+=])", r" \1 ", answer).replace(", ", " ,  ")  # not "10,\\!080"
    out = [f"  {spaced}  ", answer.replace("\\frac", "\\dfrac")]
    if "\\left(" in answer:
        out.append(answer.replace("\\left(", "(").replace("\\right)", ")"))
    return out


def check_file(path: Path, verifier: MathVerifier) -> int:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    pairs = [(r["answer"], r["answer"]) for r in recs]
    pairs += [(r["answer"], last_boxed(r["solution"])) for r in recs]
    pairs += [(r["answer"], v) for r in recs for v in variants(r["answer"])]
    got = verifier.equivalent_many(pairs)
    bad = [p for p, ok in zip(pairs, got, strict=True) if not ok]
    assert not bad, bad[:10]
    return len(recs)


def test_vendored_math500_answers_are_equivalent_to_themselves_and_variants(verifier):
    assert check_file(VENDORED, verifier) == 5
    recs = [json.loads(line) for line in VENDORED.read_text().splitlines()]
    other = [(r["answer"], s["answer"]) for r, s in zip(recs, recs[1:] + recs[:1], strict=True)]
    assert verifier.equivalent_many(other) == [False] * len(other)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_file(), reason=f"no MATH-500 at {SHARED}")
def test_every_math500_answer_is_equivalent_to_itself_its_box_and_variants():
    v = MathVerifier(timeout=20.0, workers=2)
    try:
        assert check_file(SHARED, v) == 500
        recs = [json.loads(line) for line in SHARED.read_text().splitlines()]
        # a different answer is not equivalent: the answer plus one (when it is a number)
        nums = [r["answer"] for r in recs if r["answer"].lstrip("-").isdigit()]
        assert len(nums) > 200
        assert v.equivalent_many([(a, str(int(a) + 1)) for a in nums]) == [False] * len(nums)
    finally:
        v.close()


def test_a_worker_that_cannot_start_is_a_clear_error(monkeypatch):
    from tabom.errors import TabomError

    monkeypatch.setattr(math_mod, "WORKER", "import sys\nsys.stderr.write('boom')\nsys.exit(1)\n")
    v = MathVerifier(timeout=2.0)
    with pytest.raises(TabomError, match="did not start: boom"):
        v.equivalent("1", "1")


def test_answers_written_as_python_are_text_not_code(verifier, tmp_path):
    """A model's answer goes to math-verify, whose only ``eval`` path (sympy ``parse_expr`` in
    its expression fallback) accepts digits and arithmetic operators alone; an answer written as
    Python must be compared as text and never run: no marker file appears."""
    marker = tmp_path / "ran"
    cmd = f"touch {marker}"
    chars = "+".join(f"chr({ord(c)})" for c in cmd)  # no quotes, which normalisation strips
    preds = [
        f"__import__('os').system('{cmd}')",
        f"__import__(chr(111)+chr(115)).system({chars})",
        f"1+__import__(chr(111)+chr(115)).system({chars})",
        f"(lambda: __import__('os').system('{cmd}'))()",
        f"exec(\"import os; os.system('{cmd}')\")",
        f"$__import__(chr(111)+chr(115)).system({chars})$",
        f"\\text{{__import__('os').system('{cmd}')}}",
    ]
    assert verifier.equivalent_many([("0", p) for p in preds]) == [False] * len(preds)
    assert not marker.exists()
