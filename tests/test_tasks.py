"""Tests for the verifiable tasks (DESIGN §7): generators, parsers, verifiers, loaders, registry.

Real data is read from ``../shared/data`` (relative to the repository root); tests that need it
are skipped when it is missing.
"""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Literal

import pytest
import torch

from realdata import VENDORED, needs
from tabom.tasks import (
    TASKS,
    AdditionTask,
    CountdownTask,
    DataFileError,
    Example,
    GSM8KTask,
    SudokuTask,
    Task,
    TaskSpecError,
    addition,
    countdown,
    gsm8k,
    load_examples,
    make_task,
    sudoku,
)

DATA = VENDORED  # countdown, sudoku4x4 and the GSM8K test set are vendored under tests/data
needs_data = needs("gsm8k/test.jsonl")

NASTY = [
    "",
    " ",
    "\n",
    "\x00",
    "<eos>",
    "-",
    "=",
    ",",
    "/",
    "####",
    "#### ",
    "1e9999",
    "9" * 5000,
    "9" * 100 + "*" + "9" * 100 + "=1",
    "1/0=0",
    "NaN",
    "inf",
    "-0",
    "٣٤",  # Arabic-Indic digits: str.isdigit() is True, int() accepts them
    "１２",  # fullwidth digits
    "½",
    "²",
    "1234/3412/4123/2341/",
    "((1+2))",
    "__import__('os').system('echo hacked')",
    "1+1=2," * 2000,
    "\ud800",  # lone surrogate
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fuzz_strings(answer: str, n: int = 100) -> list[str]:
    """Seeded mutations of a correct answer plus random ASCII / unicode strings."""
    rng = random.Random(1234)
    alphabet = "0123456789+-*/=,.#$ \n/?:>abcxyz" + "½٣１é中"
    out = []
    for _ in range(n):
        s = list(answer)
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(s) + 1)
            if op == 0:
                s.insert(pos, rng.choice(alphabet))
            elif op == 1 and s:
                del s[min(pos, len(s) - 1)]
            elif s:
                s[min(pos, len(s) - 1)] = rng.choice(alphabet)
        out.append("".join(s))
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    return out


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def assert_data_error(exc: pytest.ExceptionInfo, path: Path, line: int, field: str) -> None:
    err = exc.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert f"{path}:{line}:" in str(err) and repr(field) in str(err)


def check_generator(task: Task, n: int) -> list[Example]:
    """Determinism under a seed, difference under another, unique ids, answers verify and fit."""
    a = task.generate(n, gen(0))
    b = task.generate(n, gen(0))
    c = task.generate(n, gen(1))
    assert a == b
    assert [e.id for e in a] != [e.id for e in c]
    assert len({e.id for e in a}) == n
    assert all(e.id.startswith(f"{task.name}-") for e in a)
    for e in a:
        assert task.verify(e, e.answer), e
        assert len(e.answer) + 1 <= task.gen_length, e
        assert e.prompt.isascii() and e.answer.isascii()
    return a


# ----------------------------------------------------------------------------- protocol


def test_every_task_satisfies_the_protocol():
    for name, cls in TASKS.items():
        task = cls()
        assert isinstance(task, Task)
        assert task.name == name
        assert task.gen_length > 0


def test_prompts_tell_tasks_apart():
    prompts = {
        "addition": AdditionTask().generate(1, gen(0))[0].prompt,
        "countdown": CountdownTask().generate(1, gen(0))[0].prompt,
        "sudoku": SudokuTask().generate(1, gen(0))[0].prompt,
    }
    assert re.fullmatch(r"[0-9]+\+[0-9]+=", prompts["addition"])
    assert re.fullmatch(r"[0-9]+(,[0-9]+){2}>[0-9]+:", prompts["countdown"])
    assert re.fullmatch(r"[0-4]{4}(/[0-4]{4}){3}\?", prompts["sudoku"])


@pytest.mark.parametrize("spec", ["addition", "countdown", "countdown:n_operands=4", "sudoku"])
def test_verify_never_raises_on_garbage(spec: str):
    task = make_task(spec)
    example = task.generate(1, gen(0))[0]
    for s in NASTY + fuzz_strings(example.answer):
        assert isinstance(task.verify(example, s), bool)
    assert not any(task.verify(example, s) for s in NASTY)


# ----------------------------------------------------------------------------- addition


def test_addition_generator():
    examples = check_generator(AdditionTask(min_digits=1, max_digits=4), 200)
    for e in examples:
        a, b = e.data["a"], e.data["b"]
        assert e.id == f"addition-{a}+{b}" and e.prompt == f"{a}+{b}=" and e.answer == str(a + b)
        assert 0 <= a <= 9999 and 0 <= b <= 9999
    # digit counts are uniform per operand, not values: 1-digit operands are common
    assert sum(e.data["a"] < 10 for e in examples) > 20


def test_addition_digit_range_and_gen_length():
    task = AdditionTask(min_digits=5, max_digits=5)
    assert task.gen_length == 7
    for e in task.generate(50, gen(3)):
        assert len(str(e.data["a"])) == 5 and len(str(e.data["b"])) == 5
    # all 100 one-digit pairs exist, not 101
    assert len(AdditionTask(1, 1).generate(100, gen(0))) == 100
    with pytest.raises(ValueError, match="distinct"):
        AdditionTask(1, 1).generate(101, gen(0))


@pytest.mark.parametrize("kwargs", [{"min_digits": 0}, {"min_digits": 3, "max_digits": 2}])
def test_addition_rejects_bad_config(kwargs: dict):
    with pytest.raises(ValueError, match="min_digits"):
        AdditionTask(**kwargs)


def test_addition_verify():
    task = AdditionTask()
    e = Example(id="x", prompt="123+4567=", answer="4690", data={"a": 123, "b": 4567})
    assert task.verify(e, "4690") and task.verify(e, " 4690\n")
    for wrong in ["4691", "469", "4690.0", "+4690", "4 690", "4690,", "٤٦٩٠", "0x1252", "4690a"]:
        assert not task.verify(e, wrong), wrong
    assert addition.parse("٣") is None and addition.parse("12") == 12


# ----------------------------------------------------------------------------- countdown


@needs_data
@pytest.mark.parametrize("k", [3, 4, 5])
def test_countdown_every_reference_solution_verifies(k: int):
    task = CountdownTask(n_operands=k)
    path = DATA / "countdown" / f"cd{k}_test.jsonl"
    examples = task.load(path)
    assert len(examples) == 1000
    assert examples[16].id == f"countdown-cd{k}_test-17"
    assert len({e.id for e in examples}) == 1000
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    for e, rec in zip(examples, raw, strict=True):
        numbers = rec["input"].split(",")
        assert e.prompt == ",".join(numbers[:-1]) + ">" + numbers[-1] + ":"
        assert e.answer == rec["output"]
        assert task.verify(e, e.answer)
        assert len(e.answer) < task.gen_length


@needs_data
@pytest.mark.parametrize("k, every", [(3, 10), (4, 10), (5, 100)])
def test_countdown_solver_solves_real_instances(k: int, every: int):
    task = CountdownTask(n_operands=k)
    examples = task.load(DATA / "countdown" / f"cd{k}_test.jsonl")[::every]
    for e in examples:
        found = countdown.solve(e.data["operands"], e.data["target"], max_chars=task.gen_length - 1)
        assert found is not None, e
        assert task.verify(e, found), (e, found)


def test_countdown_solver():
    assert countdown.solve([2, 3], 6) == "2*3=6"
    assert countdown.solve([1, 1], 5) is None
    assert countdown.solve([7, 2], 3) is None  # 7/2 is not exact
    assert countdown.solve([3, 5], 2) == "5-3=2"
    found = countdown.solve([2, 3, 4], 14)
    assert found is not None and countdown.check([2, 3, 4], 14, countdown.parse(found))
    # the length cap excludes the only solution
    assert countdown.solve([2, 3], 6, max_chars=5) == "2*3=6"
    assert countdown.solve([2, 3], 6, max_chars=4) is None


def test_countdown_solver_agrees_with_brute_force():
    """On tiny instances, solvable iff some ordered expression tree over the operands hits it."""

    def reachable(values: tuple[int, ...]) -> set[int]:
        if len(values) == 1:
            return {values[0]}
        out = set()
        for i in range(len(values)):
            for j in range(len(values)):
                if i == j:
                    continue
                a, b = values[i], values[j]
                rest = tuple(v for t, v in enumerate(values) if t not in (i, j))
                for c in [a + b, a * b] + ([a - b] if a >= b else []):
                    out |= reachable((*rest, c))
                if b and a % b == 0:
                    out |= reachable((*rest, a // b))
        return out

    rng = random.Random(0)
    for _ in range(40):
        operands = [rng.randint(1, 12) for _ in range(3)]
        hits = reachable(tuple(operands))
        for target in range(0, 30):
            found = countdown.solve(operands, target)
            assert (found is not None) == (target in hits), (operands, target)
            if found is not None:
                assert countdown.check(operands, target, countdown.parse(found))


@pytest.mark.parametrize("k, n", [(3, 60), (4, 15)])
def test_countdown_generator(k: int, n: int):
    task = CountdownTask(n_operands=k)
    assert task.gen_length == 12 * (k - 1) + 4
    for e in check_generator(task, n):
        ops, target = e.data["operands"], e.data["target"]
        assert len(ops) == k and all(1 <= x <= 99 for x in ops) and 10 <= target <= 99
        assert e.id == "countdown-" + ",".join(map(str, [*ops, target]))
        assert e.prompt == ",".join(map(str, ops)) + f">{target}:"
        assert len(countdown.parse(e.answer)) == k - 1


def _cd(operands: list[int], target: int) -> Example:
    return Example(
        id="x",
        prompt=countdown.format_prompt(operands, target),
        answer="",
        data={"operands": operands, "target": target},
    )


@pytest.mark.parametrize(
    "operands, target, response, ok",
    [
        ([15, 44, 79], 50, "44-15=29,79-29=50", True),
        ([15, 44, 79], 50, " 44 - 15 = 29 , 79 - 29 = 50 ", True),
        ([15, 44, 79], 50, "44+15=29,79-29=50", False),  # wrong arithmetic
        ([15, 44, 79], 50, "44-15=29,79-29=50,", False),  # trailing comma
        ([15, 44, 79], 50, "44-15=29;79-29=50", False),
        ([15, 44, 79], 50, "(44-15)=29,79-29=50", False),
        ([2, 3, 4], 14, "3*4=12,12+2=14", True),
        ([2, 3, 4], 14, "4*4=16,16-2=14", False),  # operand reused, 3 unused
        ([2, 3, 4], 12, "3*4=12", False),  # operand 2 missing
        ([2, 3, 4], 14, "3*4=12,12-2=10", False),  # wrong target
        ([2, 3, 4], 7, "2*3=6,3+4=7", False),  # intermediate 6 unused (3 reused)
        ([2, 3, 4, 1], 7, "2*3=6,3+4=7,6*1=6", False),  # ends on an intermediate, not target
        ([3, 3, 24], 24, "3-3=0,24+0=24", True),  # repeated operands, zero intermediate
        ([12, 46, 34, 4], 4, "46-34=12,12-12=0,4+0=4", True),  # intermediate equals operand
        ([5, 0], 0, "5/0=0", False),  # division by zero
        ([5, 0], 0, "0/5=0", True),
        ([7, 2], 3, "7/2=3", False),  # inexact division
        ([7, 2], 3, "7/2=3.5", False),
        ([8, 2], 4, "8/2=4", True),
        ([3, 5], 2, "3-5=-2", False),  # negative numbers are not in the format
        ([3, 5], 2, "5-3=2", True),
        ([3, 5], 8, "", False),
        ([3, 5], 8, "3+5", False),
        ([3, 5], 8, "3+5=8=8", False),
        ([3, 5], 8, "3 + 5 = 8 hello", False),
        ([3, 5], 8, "3+5=08", True),  # same integer
        ([3, 5], 15, "3x5=15", False),
        ([3, 5], 15, "3×5=15", False),
        ([3, 5], 8, "٣+٥=٨", False),
    ],
)
def test_countdown_verify(operands: list[int], target: int, response: str, ok: bool):
    assert CountdownTask(n_operands=len(operands)).verify(_cd(operands, target), response) is ok


def test_countdown_load_rejects_malformed_files(tmp_path: Path):
    good = {"input": "15,44,79,50", "output": "44-15=29,79-29=50"}
    cases = [
        ({"output": good["output"]}, "input"),
        ({"input": 15, "output": good["output"]}, "input"),
        ({"input": "15,4x,79,50", "output": good["output"]}, "input"),
        ({"input": "15,,79,50", "output": good["output"]}, "input"),
        ({"input": "15,44,79,1,50", "output": good["output"]}, "input"),  # 4 operands, n=3
        ({"input": good["input"]}, "output"),
        ({"input": good["input"], "output": ["44-15=29"]}, "output"),
        ({"input": good["input"], "output": "44-15=29,79-29=51"}, "output"),
    ]
    for i, (bad, field) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", [good, good, bad])
        with pytest.raises(DataFileError) as exc:
            CountdownTask().load(path)
        assert_data_error(exc, path, 3, field)
    path = tmp_path / "notjson.jsonl"
    path.write_text(json.dumps(good) + "\n{nope\n")
    with pytest.raises(DataFileError) as exc:
        CountdownTask().load(path)
    assert_data_error(exc, path, 2, "<line>")


# ----------------------------------------------------------------------------- sudoku


def test_all_grids_are_the_288_sudokus():
    grids = sudoku.all_grids()
    assert len(grids) == 288 == len(set(grids))
    assert all(sudoku.is_solution((0,) * 16, g) for g in grids)


@needs_data
def test_sudoku_every_reference_solution_verifies():
    task = SudokuTask()
    for givens in range(4, 13):
        path = DATA / "sudoku4x4" / f"sudoku_4x4_{givens}.jsonl"
        examples = task.load(path)
        assert len(examples) == 108 and len({e.id for e in examples}) == 108
        assert examples[0].id == f"sudoku-sudoku_4x4_{givens}-1"
        raw = [json.loads(line) for line in path.read_text().splitlines()]
        for e, rec in zip(examples, raw, strict=True):
            assert e.prompt == rec["input"].replace("\n", "/") + "?"
            assert e.answer == rec["output"].replace("\n", "/")
            assert e.data["puzzle"].count("0") == 16 - givens
            assert task.verify(e, e.answer) and task.verify(e, rec["output"])
            assert len(e.answer) < task.gen_length


@needs_data
def test_sudoku_verify_accepts_every_solution_not_just_the_reference():
    task = SudokuTask(n_blanks=13)
    examples = task.load(DATA / "sudoku4x4" / "sudoku_4x4_4.jsonl") + task.generate(30, gen(0))
    several = 0
    for e in examples:
        givens = [int(ch) for ch in e.data["puzzle"]]
        accepted = [g for g in sudoku.all_grids() if task.verify(e, sudoku.format_grid(g))]
        # naive reference: a grid solves the puzzle iff it keeps every given
        expected = [
            g
            for g in sudoku.all_grids()
            if all(p in (0, v) for p, v in zip(givens, g, strict=True))
        ]
        assert accepted == expected and e.answer in map(sudoku.format_grid, accepted)
        several += len(accepted) > 1
    assert several > 0


def test_sudoku_verify():
    task = SudokuTask()
    e = Example(id="x", prompt="1000/0002/4003/0000?", answer="", data={"puzzle": "1" + "0" * 15})
    assert task.verify(e, "1234/3412/4123/2341")
    assert task.verify(e, "1234\n3412\n4123\n2341\n")
    for wrong in [
        "2134/3412/4123/1342",  # valid grid, breaks the given 1
        "1234/2341/3412/4123",  # rows and columns fine, 2x2 boxes not
        "1234/3412/4123/2340",  # incomplete
        "1234/3412/4123/234",
        "1234/3412/4123/2341/1234",
        "1234341241232341",
        "1234/3412/4123/2351",
    ]:
        assert not task.verify(e, wrong), wrong


def test_sudoku_generator():
    task = SudokuTask(n_blanks=10)
    for e in check_generator(task, 50):
        assert e.data["puzzle"].count("0") == 10
        assert e.id == "sudoku-" + e.data["puzzle"]
        assert e.prompt == sudoku.format_prompt(tuple(int(ch) for ch in e.data["puzzle"]))
    assert task.gen_length == 20
    with pytest.raises(ValueError, match="n_blanks"):
        SudokuTask(n_blanks=17)


def test_sudoku_load_rejects_malformed_files(tmp_path: Path):
    good = {"input": "1000\n0002\n4003\n0000", "output": "1234\n3412\n4123\n2341"}
    cases = [
        ({"output": good["output"]}, "input"),
        ({"input": "100\n0002\n4003\n0000", "output": good["output"]}, "input"),
        ({"input": "1000\n0002\n4003", "output": good["output"]}, "input"),
        ({"input": "1000\n0002\n4003\n0005", "output": good["output"]}, "input"),
        ({"input": good["input"], "output": 1234}, "output"),
        ({"input": good["input"], "output": "1234\n3412\n4123\n2340"}, "output"),
        ({"input": good["input"], "output": "2134\n3412\n4123\n1342"}, "output"),
    ]
    for i, (bad, field) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", [good, bad])
        with pytest.raises(DataFileError) as exc:
            SudokuTask().load(path)
        assert_data_error(exc, path, 2, field)


# ----------------------------------------------------------------------------- gsm8k


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 16 - 3 - 4 = 9 eggs\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("#### $1,234.50.", "1234.50"),
        ("####-7", "-7"),
        ("#### **42**", "42"),
        ("#### 5\nthen 6", "5"),
        ("#### 1 #### 2", "2"),
        ("The answer is $1,234.", "1234"),
        ("x = 5-3", "3"),
        ("she is down -7 dollars", "-7"),
        ("1, 2, 3.", "3"),
        ("it costs 2.50 dollars", "2.50"),
        ("####", None),
        ("#### many", None),
        ("no number here", None),
        ("", None),
        ("9" * 5000, None),
        ("٣", None),
    ],
)
def test_gsm8k_extract_answer(text: str, expected: str | None):
    assert gsm8k.extract_answer(text) == expected


def test_gsm8k_verify():
    task = GSM8KTask()
    e = Example(id="x", prompt="q", answer="... #### 18", data={"target": "18"})
    for ok in ["#### 18", "The answer is 18.", "18.0", "$18", "#### 18.00", "3*6 = 18"]:
        assert task.verify(e, ok), ok
    for wrong in ["#### 17", "18 apples, no wait, 19", "#### 1.8", "#### abc 18", *NASTY]:
        assert not task.verify(e, wrong), wrong
    assert gsm8k.parse("#### 0.5") == Fraction(1, 2)


@needs_data
def test_gsm8k_load_and_generate():
    path = DATA / "gsm8k" / "test.jsonl"
    task = GSM8KTask(path=str(path))
    examples = task.load(path)
    assert len(examples) == 1319 and examples[0].id == "gsm8k-test-1"
    assert examples[0].data["target"] == "18" and examples[0].prompt.startswith("Janet")
    assert all(task.verify(e, e.answer) for e in examples)
    assert all("," not in e.data["target"] for e in examples)
    a, b, c = (task.generate(20, gen(s)) for s in (0, 0, 1))
    assert a == b and a != c and len({e.id for e in a}) == 20
    with pytest.raises(ValueError, match="n must be"):
        task.generate(1320, gen(0))
    with pytest.raises(ValueError, match="path"):
        GSM8KTask().generate(1, gen(0))


def test_gsm8k_load_rejects_malformed_files(tmp_path: Path):
    good = {"question": "How many?", "answer": "2+2=4\n#### 4"}
    cases = [
        ({"answer": good["answer"]}, "question"),
        ({"question": None, "answer": good["answer"]}, "question"),
        ({"question": "q"}, "answer"),
        ({"question": "q", "answer": 4}, "answer"),
        ({"question": "q", "answer": "the answer is 4"}, "answer"),
        ({"question": "q", "answer": "#### four"}, "answer"),
    ]
    for i, (bad, field) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", [good, bad])
        with pytest.raises(DataFileError) as exc:
            GSM8KTask().load(path)
        assert_data_error(exc, path, 2, field)
    path = write_jsonl(tmp_path / "list.jsonl", [good, [1, 2]])
    with pytest.raises(DataFileError) as exc:
        GSM8KTask().load(path)
    assert_data_error(exc, path, 2, "<line>")


# ----------------------------------------------------------------------------- registry


def test_make_task():
    assert make_task("addition") == AdditionTask()
    assert make_task("addition:min_digits=5,max_digits=5") == AdditionTask(5, 5)
    assert make_task(" countdown : n_operands = 4 ") == CountdownTask(n_operands=4)
    assert make_task("sudoku:n_blanks=8") == SudokuTask(n_blanks=8)
    task = make_task("gsm8k:path=/x/test.jsonl,gen_length=512")
    assert task == GSM8KTask(path="/x/test.jsonl", gen_length=512)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("multiply", "unknown task 'multiply'"),
        ("addition:digits=3", "unknown field 'digits'"),
        ("addition:gen_length=3", "unknown field 'gen_length'"),
        ("addition:min_digits", "field=value"),
        ("addition:min_digits=three", "field 'min_digits': expected an integer, got 'three'"),
        ("addition:min_digits=1,min_digits=2", "given twice"),
        ("countdown:n_operands=1", "n_operands"),
    ],
)
def test_make_task_errors(spec: str, match: str):
    with pytest.raises(ValueError, match=match):
        make_task(spec)


@needs_data
def test_load_examples():
    examples = load_examples("countdown:n_operands=4", DATA / "countdown" / "cd4_test.jsonl")
    assert len(examples) == 1000 and examples[0].id == "countdown-cd4_test-1"
    with pytest.raises(DataFileError, match="n_operands=4") as exc:
        load_examples("countdown", DATA / "countdown" / "cd4_test.jsonl")
    assert (exc.value.line, exc.value.field) == (1, "input")
    with pytest.raises(ValueError, match="no data files"):
        load_examples("addition", DATA / "countdown" / "cd4_test.jsonl")


def test_spec_values_take_their_fields_resolved_type(monkeypatch):
    """Spec values go through the config layer's converter with the resolved annotation, so a
    float field becomes a float, and a choice or an optional field reads as a flag would."""
    import dataclasses

    import tabom.tasks as tasks_mod

    @dataclasses.dataclass
    class Fake:
        rate: float = 0.5
        n: int | None = None
        flag: bool = False
        label: str = "x"
        split: Literal["train", "test"] = "train"

    monkeypatch.setitem(tasks_mod.TASKS, "fake", Fake)
    t = tasks_mod.make_task("fake:rate=0.25,n=3,flag=true,label=7,split=test")
    assert (t.rate, t.n, t.flag, t.label, t.split) == (0.25, 3, True, "7", "test")
    assert isinstance(t.rate, float) and isinstance(t.label, str)
    assert tasks_mod.make_task("fake:n=none").n is None
    with pytest.raises(TaskSpecError, match="'fake:rate=abc': field 'rate': expected a number"):
        tasks_mod.make_task("fake:rate=abc")
    with pytest.raises(TaskSpecError, match="field 'rate': 'inf' is not a finite number"):
        tasks_mod.make_task("fake:rate=inf")
    with pytest.raises(TaskSpecError, match="field 'n': expected an integer"):
        tasks_mod.make_task("fake:n=1.5")
    with pytest.raises(TaskSpecError, match="field 'split': 'dev' is not one of 'train', 'test'"):
        tasks_mod.make_task("fake:split=dev")
