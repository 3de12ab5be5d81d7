"""Verifiable tasks: seeded instances, a prompt format, an answer parser and a verifier (DESIGN §7).

A verifier parses model text and checks it with exact integer / fraction arithmetic; it never
evaluates model text. Malformed answers are simply wrong (``False``), never an exception;
malformed data files raise :class:`DataFileError` naming the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from tabom.errors import DataFileError
from tabom.jsonl import read_jsonl  # noqa: F401 (the tasks import it from here)


@dataclass(frozen=True)
class Example:
    """One task instance.

    Attributes:
        id: stable id, unique within the task (``{task}-{source}-{index}``); the key for
            resume and dedup downstream.
        prompt: the text the model is conditioned on (no chat template).
        answer: one reference answer (the ground-truth response used by ``sft``).
        data: task-specific fields the verifier needs (operands, target, puzzle, ...).
    """

    id: str
    prompt: str
    answer: str
    data: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What every task provides.

    Attributes:
        name: registry name (``addition``, ``countdown``, ``sudoku``, ``gsm8k``).
        gen_length: response length T (tokens of the tiny char tokenizer) that fits every
            reference answer plus at least one EOS.
    """

    name: str
    gen_length: int

    def generate(self, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` fresh instances drawn from ``generator`` (same generator state, same list)."""
        ...

    def verify(self, example: Example, response: str) -> bool:
        """Whether ``response`` (model text, already cut at EOS) solves ``example``."""
        ...


def verify_all(task: Task, pairs: Sequence[tuple[Example, str]]) -> list[bool]:
    """Verdicts of many ``(example, response)`` pairs, in order.

    A task with a batched ``verify_many`` (the code tasks run their sandboxes in parallel, math
    its math-verify workers) gets them all at once; any other is asked one pair at a time.
    """
    many = getattr(task, "verify_many", None)
    if many is not None:
        return [bool(v) for v in many(pairs)]
    return [bool(task.verify(ex, text)) for ex, text in pairs]


def require_str(path: str | Path, line: int, rec: dict[str, Any], key: str) -> str:
    """``rec[key]`` as a string, or a :class:`DataFileError` naming file, line and field."""
    if key not in rec:
        raise DataFileError(path, line, key, "missing")
    value = rec[key]
    if not isinstance(value, str):
        raise DataFileError(path, line, key, f"expected a string, got {type(value).__name__}")
    return value


MAX_RESPONSE_CHARS = 4096
"""Responses longer than this are wrong without being parsed (keeps verifiers cheap on garbage)."""


def draw_distinct(n: int, draw: Callable[[], Example | None], *, what: str) -> list[Example]:
    """Call ``draw`` until it has produced ``n`` examples with distinct ids.

    Args:
        n: how many examples to return (``>= 0``).
        draw: draws one candidate from the caller's ``torch.Generator``; ``None`` = rejected
            (e.g. an unsolvable instance). A repeated id is dropped, the first one kept.
        what: the task, for error messages.

    Returns:
        ``n`` examples, in the order drawn.

    Raises:
        ValueError: ``n < 0``, or ``100 n + 1000`` draws gave fewer than ``n`` distinct
            examples (the instance space is too small for ``n``).
    """
    if n < 0:
        raise ValueError(f"{what}: n must be >= 0, got {n}")
    max_tries = 100 * n + 1000
    out: dict[str, Example] = {}
    for _ in range(max_tries):
        if len(out) == n:
            break
        ex = draw()
        if ex is not None and ex.id not in out:
            out[ex.id] = ex
    if len(out) < n:
        raise ValueError(
            f"{what}: only {len(out)} distinct instances after {max_tries} draws, asked for {n} "
            "(the instance space is too small; widen the task's settings or ask for fewer)"
        )
    return list(out.values())


class FileTask:
    """A task sampled from its data file (``name:path=FILE``): gsm8k, math and the code tasks.

    The dataclass that mixes it in has the fields ``path``, ``name`` and ``_examples`` (the
    file, read once) and a ``load(path)`` method.
    """

    path: str | None
    name: str
    _examples: list[Example] | None

    def load(self, path: str | Path) -> list[Example]:  # pragma: no cover - each task's own
        raise NotImplementedError

    def generate(self, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` distinct examples of the file at ``path``, sampled with ``generator``.

        Args:
            n: number of examples (at most the file's size).
            generator: the only source of randomness (same state, same list).

        Returns:
            The sampled examples, in sampled order.

        Raises:
            ValueError: no ``path`` was given, or ``n`` is negative or exceeds the file's size.
        """
        if self.path is None:
            raise ValueError(f"{self.name}: generate needs a data file ({self.name}:path=FILE)")
        if self._examples is None:
            self._examples = self.load(self.path)
        if not 0 <= n <= len(self._examples):
            raise ValueError(f"{self.name}: n must be in [0, {len(self._examples)}], got {n}")
        order = torch.randperm(len(self._examples), generator=generator)[:n].tolist()
        return [self._examples[i] for i in order]


def randint(low: int, high: int, generator: torch.Generator) -> int:
    """One integer drawn uniformly from ``[low, high]`` (both inclusive) with ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())
