"""Dataset builders and scorers of the ``tabom_humaneval`` / ``tabom_mbpp`` harness tasks.

Loaded by lm-eval from the task YAMLs (``!function utils.NAME``); the examples are those of
:mod:`tabom.tasks.code`, and an answer passes when its tests run to their end in the sandbox.
"""

from __future__ import annotations

import json
from typing import Any

from tabom.errors import TabomError
from tabom.tasks import make_task
from tabom.tasks.base import Example

_TASKS: dict[str, Any] = {}


def _task(spec: str) -> Any:
    if spec not in _TASKS:
        _TASKS[spec] = make_task(spec)
    return _TASKS[spec]


def _dataset(spec: str, key: str, path: str | None) -> Any:
    import datasets

    if not path:
        raise TabomError(
            f"lm-eval task tabom_{spec.split(':')[0]}: give the data file as metadata, "
            f'--metadata \'{{"{key}": "FILE.jsonl"}}\''
        )
    rows = [
        {"id": ex.id, "prompt": ex.prompt, "answer": ex.answer, "data": json.dumps(ex.data)}
        for ex in _task(spec).load(path)
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def humaneval(humaneval_path: str | None = None, **_: Any) -> Any:
    """HumanEval from ``humaneval_path`` (HumanEval.jsonl)."""
    return _dataset("humaneval", "humaneval_path", humaneval_path)


def mbpp(mbpp_path: str | None = None, **_: Any) -> Any:
    """MBPP's test split (task ids 11-510) from ``mbpp_path`` (mbpp.jsonl)."""
    return _dataset("mbpp:split=test", "mbpp_path", mbpp_path)


def _score(spec: str, doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    ex = Example(doc["id"], doc["prompt"], doc["answer"], json.loads(doc["data"]))
    return {"pass@1": float(_task(spec).verify(ex, results[0]))}


def score_humaneval(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``pass@1`` of one HumanEval answer: its tests run in the sandbox."""
    return _score("humaneval", doc, results)


def score_mbpp(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``pass@1`` of one MBPP answer: its asserts run in the sandbox."""
    return _score("mbpp:split=test", doc, results)
