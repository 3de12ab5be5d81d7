"""Verifiable tasks and their registry (DESIGN §7).

A task is named by a spec string, ``name`` or ``name:field=value,field=value``::

    make_task("addition:min_digits=5,max_digits=5")
    make_task("countdown:n_operands=4")
    make_task("gsm8k:path=../shared/data/gsm8k/test.jsonl")
    make_task("mbpp:path=mbpp.jsonl,split=test,workers=2")  # code: run in a sandbox

Values are parsed as their field's type by the config layer's converter
(:func:`tabom.config.convert_value`: int, float, bool, choices, ``none`` for an optional field);
an error names the spec and the field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, get_type_hints

from tabom.config import ConfigError, convert_value
from tabom.errors import TabomError
from tabom.tasks.addition import AdditionTask
from tabom.tasks.base import DataFileError, Example, Task, read_jsonl, require_str
from tabom.tasks.code import CodeTask, HumanEvalTask, MBPPTask
from tabom.tasks.countdown import CountdownTask
from tabom.tasks.gsm8k import GSM8KTask
from tabom.tasks.long_addition import LongAdditionTask
from tabom.tasks.math_task import MathTask
from tabom.tasks.sudoku import SudokuTask

TASKS: dict[str, type] = {
    "addition": AdditionTask,
    "countdown": CountdownTask,
    "sudoku": SudokuTask,
    "gsm8k": GSM8KTask,
    "math": MathTask,
    "humaneval": HumanEvalTask,
    "mbpp": MBPPTask,
    "code": CodeTask,
    "longadd": LongAdditionTask,
}
"""Registry: spec name -> task dataclass."""

OLD_DOMAIN = "addition:min_digits=1,max_digits=3,width=4"
"""The shipped base model's old domain: sums of 1-3 digit numbers, written 4 digits wide."""
NEW_DOMAIN = "addition:min_digits=4,max_digits=4,width=4"
"""Its new domain: 4-digit sums, seen in 1% of pretraining batches (docs/benchmarks.md)."""


class TaskSpecError(TabomError):
    """A task spec that names no task, an unknown field or a bad value; names the spec."""


def make_task(spec: str) -> Task:
    """Build a task from a spec string.

    Args:
        spec: ``name`` or ``name:field=value,...``, e.g. ``sudoku:n_blanks=8``.

    Returns:
        The task instance.

    Raises:
        ValueError: an unknown task name, an unknown or repeated field, an item without ``=``,
            a non-integer value for an integer field, or a value the task rejects.
    """
    name, _, args = spec.strip().partition(":")
    name = name.strip()
    if name not in TASKS:
        raise TaskSpecError(f"unknown task {name!r} in spec {spec!r}; known: {', '.join(TASKS)}")
    cls = TASKS[name]
    allowed = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in args.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise TaskSpecError(f"task spec {spec!r}: expected field=value, got {item!r}")
        if key not in allowed:
            raise TaskSpecError(
                f"task spec {spec!r}: unknown field {key!r} for task {name!r}; "
                f"known: {', '.join(allowed)}"
            )
        if key in kwargs:
            raise TaskSpecError(f"task spec {spec!r}: field {key!r} given twice")
        try:  # the config layer's converter: the same rules as a flag or a YAML value
            where = f"task spec {spec!r}: field {key!r}"
            kwargs[key] = convert_value(value.strip(), hints[key], where)
        except ConfigError as e:
            raise TaskSpecError(str(e)) from None
    try:
        return cls(**kwargs)
    except TabomError:
        raise
    except (TypeError, ValueError) as e:
        raise TaskSpecError(f"task spec {spec!r}: {e}") from None


def load_examples(spec: str, path: str | Path) -> list[Example]:
    """Build the task named by ``spec`` and load its data file.

    Args:
        spec: a task spec, as for :func:`make_task`.
        path: the task's JSONL file.

    Returns:
        The file's examples.

    Raises:
        ValueError: a bad spec, or a task that has no data files (``addition``).
        DataFileError: the file is malformed.
    """
    task = make_task(spec)
    if not hasattr(task, "load"):
        raise TaskSpecError(f"task {task.name!r} has no data files to load; use generate()")
    return task.load(path)


__all__ = [
    "NEW_DOMAIN",
    "OLD_DOMAIN",
    "TASKS",
    "AdditionTask",
    "CodeTask",
    "CountdownTask",
    "DataFileError",
    "Example",
    "GSM8KTask",
    "HumanEvalTask",
    "LongAdditionTask",
    "MBPPTask",
    "MathTask",
    "SudokuTask",
    "Task",
    "TaskSpecError",
    "load_examples",
    "make_task",
    "read_jsonl",
    "require_str",
]
