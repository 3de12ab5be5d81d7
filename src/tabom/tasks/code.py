"""Code tasks checked by running their tests in a sandbox: HumanEval, MBPP, generic (DESIGN §7, round 3).

A response's code is its first fenced block (tagged ``python``/``py`` or untagged; an unclosed
block runs to the end), else the whole text. The program that decides is candidate + tests,
run by :class:`tabom.sandbox.Sandbox` (bubblewrap; never in the tabom process); the answer is
right when that program runs to its end.

- ``humaneval`` (``task_id``, ``prompt``, ``canonical_solution``, ``test``, ``entry_point``):
  lm-eval's ``humaneval_instruct`` prompt; a response that defines the entry point is run after
  the prompt (whose helpers it may use), anything else is taken as the function's body and
  appended to the prompt; then ``test`` and ``check(entry_point)``.
- ``mbpp`` (``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``): lm-eval's
  ``mbpp_instruct`` prompt (the task and its asserts); the program is the code, then
  ``test_setup_code``, then the asserts (``challenge_test_list`` too with ``challenge=true``).
- ``code`` (``prompt``, ``tests`` a Python program, optional ``entry_point``, ``setup``,
  ``answer``): the program is the code (appended to the prompt when ``entry_point`` is given and
  the code does not define it), then ``setup``, then ``tests``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabom.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, check_ranges
from tabom.sandbox import Sandbox, SandboxLimits, Verdict
from tabom.tasks.base import DataFileError, Example, FileTask, read_jsonl, require_str

HUMANEVAL_PROMPT = (
    "Write a solution to the following problem and make sure that it passes the tests:\n"
    "```python\n{prompt}\n```\n"
)
"""lm-eval's ``humaneval_instruct`` question."""
MBPP_PROMPT = (
    "You are an expert Python programmer, and here is your task:\n{text}\n"
    "Your code should pass these tests:\n{tests}"
)
"""lm-eval's ``mbpp_instruct`` question."""
MBPP_SPLITS = {
    "all": (1, 974),
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
"""MBPP's upstream split by ``task_id`` (inclusive ranges)."""
MAX_CODE_CHARS = 1 << 16
"""Longer responses fail without being run."""

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def extract_code(response: str) -> str:
    """The code of a response: its first fenced block in Python (or untagged), else the text.

    A block cut by the response length (no closing fence) runs to the end. Raw text is kept
    as it is but for trailing whitespace and leading blank lines (its indentation matters:
    a HumanEval completion is an indented function body).
    """
    for lang, body in _FENCE.findall(response):
        if lang.lower() in ("", "python", "py", "python3") and body.strip():
            return body.rstrip()
    return re.sub(r"\A(?:[ \t]*\n)+", "", response).rstrip()


def defines(code: str, name: str) -> bool:
    """Whether ``code`` defines a top-level function ``name``."""
    return re.search(rf"(?m)^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code) is not None


def build_program(
    code: str,
    *,
    tests: str,
    prompt: str | None = None,
    entry_point: str | None = None,
    setup: str = "",
) -> str:
    """Candidate + tests as one program (see the module docstring for the order)."""
    if prompt is not None and entry_point:
        code = f"{prompt}\n{code}" if defines(code, entry_point) else prompt + code
    return "\n".join(part for part in (code, setup, tests) if part) + "\n"


@dataclass
class _SandboxedTask(FileTask):
    """Fields and verification shared by the code tasks.

    Attributes:
        path: the JSONL file :meth:`generate` samples from.
        gen_length: response length in tokens of the real model's tokenizer.
        timeout: wall seconds one program may run (CPU seconds: the same, rounded up).
        memory_mb: address space of one program, MiB.
        workers: programs run at once (0: one per CPU).
        allow_weak_isolation: run code without bubblewrap when it is missing: rlimits, an
            empty folder and a cleared environment only (docs/models.md: what it does not
            protect against). Default: refuse.
    """

    path: str | None = None
    gen_length: int = field(default=512, metadata=AT_LEAST_1)
    timeout: float = field(default=10.0, metadata=POSITIVE)
    memory_mb: int = field(default=1024, metadata=AT_LEAST_1)
    workers: int = field(default=0, metadata=NON_NEGATIVE)
    allow_weak_isolation: bool = False
    name: str = field(default="code", init=False)
    _examples: list[Example] | None = field(default=None, init=False, repr=False)
    _sandbox: Sandbox | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_ranges(self)
        limits = SandboxLimits(
            timeout=self.timeout,
            cpu_seconds=max(1, int(-(-self.timeout // 1))),
            memory_mb=self.memory_mb,
        )
        self._sandbox = Sandbox(
            limits, workers=self.workers, weak_isolation=self.allow_weak_isolation
        )

    @property
    def sandbox(self) -> Sandbox:
        """Where candidates run (built, and bubblewrap checked, with the task)."""
        assert self._sandbox is not None
        return self._sandbox

    def program(self, example: Example, response: str) -> str:
        """The program that decides ``response``: candidate + the example's tests."""
        d = example.data
        return build_program(
            extract_code(response[:MAX_CODE_CHARS]),
            tests=d["tests"],
            prompt=d.get("prompt"),
            entry_point=d.get("entry_point"),
            setup=d.get("setup", ""),
        )

    def verdicts(self, pairs: Sequence[tuple[Example, str]]) -> list[Verdict]:
        """The sandbox's verdict (status and reason) on each ``(example, response)``."""
        too_long = [len(text) > MAX_CODE_CHARS for _, text in pairs]
        found = self.sandbox.run_many(
            [
                self.program(ex, text)
                for (ex, text), long in zip(pairs, too_long, strict=True)
                if not long
            ]
        )
        it = iter(found)
        return [
            Verdict("failed", f"response over {MAX_CODE_CHARS} characters") if long else next(it)
            for long in too_long
        ]

    def verify(self, example: Example, response: str) -> bool:
        """Whether candidate + tests run to their end in the sandbox."""
        return self.verdicts([(example, response)])[0].passed

    def verify_many(self, pairs: Sequence[tuple[Example, str]]) -> list[bool]:
        """:meth:`verify` of many pairs, ``workers`` programs at a time."""
        return [v.passed for v in self.verdicts(pairs)]


def _str_list(path: Path, line: int, rec: dict[str, Any], key: str) -> list[str]:
    value = rec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise DataFileError(path, line, key, "expected a list of strings")
    return value


@dataclass
class HumanEvalTask(_SandboxedTask):
    """HumanEval (``HumanEval.jsonl``): complete the function; ``check`` decides."""

    name: str = field(default="humaneval", init=False)

    def load(self, path: str | Path) -> list[Example]:
        """Examples ``humaneval-{n}`` (from ``task_id`` ``HumanEval/n``); the reference
        response is the canonical body.

        Raises:
            DataFileError: a missing or non-string field.
        """
        path = Path(path)
        out = []
        for line, rec in read_jsonl(path):
            f = {
                k: require_str(path, line, rec, k)
                for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")
            }
            tests = f"{f['test']}\n\ncheck({f['entry_point']})"
            out.append(
                Example(
                    id="humaneval-" + f["task_id"].rpartition("/")[2],
                    prompt=HUMANEVAL_PROMPT.format(prompt=f["prompt"].strip()),
                    answer=f["canonical_solution"],
                    data={"prompt": f["prompt"], "entry_point": f["entry_point"], "tests": tests},
                )
            )
        return out


@dataclass
class MBPPTask(_SandboxedTask):
    """MBPP (``mbpp.jsonl``): write the function; the asserts decide.

    Attributes:
        split: ``all``, or the upstream split by task id: ``test`` (11-510), ``validation``
            (511-600), ``train`` (601-974), ``prompt`` (1-10).
        challenge: also run ``challenge_test_list``.
    """

    split: str = "all"
    challenge: bool = False
    name: str = field(default="mbpp", init=False)

    def __post_init__(self) -> None:
        if self.split not in MBPP_SPLITS:
            raise ValueError(
                f"mbpp: split must be one of {', '.join(MBPP_SPLITS)}, got {self.split!r}"
            )
        super().__post_init__()

    def load(self, path: str | Path) -> list[Example]:
        """Examples ``mbpp-{task_id}`` of the split; the reference response is ``code``.

        Raises:
            DataFileError: a missing or mistyped field.
        """
        path = Path(path)
        low, high = MBPP_SPLITS[self.split]
        out = []
        for line, rec in read_jsonl(path):
            task_id = rec.get("task_id")
            if not isinstance(task_id, int):
                raise DataFileError(path, line, "task_id", "expected an integer")
            text, code = require_str(path, line, rec, "text"), require_str(path, line, rec, "code")
            tests = _str_list(path, line, rec, "test_list")
            if not tests:
                raise DataFileError(path, line, "test_list", "empty")
            setup = rec.get("test_setup_code") or ""
            if not isinstance(setup, str):
                raise DataFileError(path, line, "test_setup_code", "expected a string")
            if not low <= task_id <= high:
                continue
            run = tests + (
                _str_list(path, line, rec, "challenge_test_list") if self.challenge else []
            )
            out.append(
                Example(
                    id=f"mbpp-{task_id}",
                    prompt=MBPP_PROMPT.format(text=text, tests="\n".join(tests)),
                    answer=code,
                    data={"tests": "\n".join(run), "setup": setup},
                )
            )
        return out


@dataclass
class CodeTask(_SandboxedTask):
    """Your own code problems: ``prompt``, ``tests`` (a Python program), optional
    ``entry_point``, ``setup`` and ``answer`` (a reference response)."""

    name: str = field(default="code", init=False)

    def load(self, path: str | Path) -> list[Example]:
        """Examples ``code-{file stem}-{line}``.

        Raises:
            DataFileError: no ``prompt`` or ``tests``, or a non-string optional field.
        """
        path = Path(path)
        out = []
        for line, rec in read_jsonl(path):
            prompt, tests = (
                require_str(path, line, rec, "prompt"),
                require_str(path, line, rec, "tests"),
            )
            opt = {
                k: require_str(path, line, rec, k)
                for k in ("entry_point", "setup", "answer")
                if rec.get(k) is not None
            }
            data: dict[str, Any] = {"tests": tests, "setup": opt.get("setup", "")}
            if opt.get("entry_point"):
                data |= {"prompt": prompt, "entry_point": opt["entry_point"]}
            out.append(
                Example(
                    id=f"code-{path.stem}-{line}",
                    prompt=prompt,
                    answer=opt.get("answer", ""),
                    data=data,
                )
            )
        return out


__all__ = [
    "CodeTask",
    "HumanEvalTask",
    "MBPPTask",
    "build_program",
    "defines",
    "extract_code",
]
