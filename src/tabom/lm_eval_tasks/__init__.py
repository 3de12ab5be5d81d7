"""lm-evaluation-harness tasks scored by tabom's own verifiers, offline (DESIGN §7, round 3).

The harness's ``humaneval`` / ``mbpp`` load the ``code_eval`` metric from the hub; these tasks
read a local file and run each answer's tests in :mod:`tabom.sandbox` instead:
``tabom_humaneval`` (HumanEval.jsonl) and ``tabom_mbpp`` (mbpp.jsonl, the test split 11-510),
with the prompts of :mod:`tabom.tasks.code`; metric ``pass@1``. The files are given as
metadata, and ``python -m tabom.lm_eval_adapter`` adds this folder to ``--include_path``::

    python -m tabom.lm_eval_adapter --model tabom --model_args pretrained=...,backend=llada \\
        --tasks tabom_humaneval,tabom_mbpp \\
        --metadata '{"humaneval_path": "data/HumanEval.jsonl", "mbpp_path": "data/mbpp.jsonl"}'
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
"""The folder holding the task YAMLs (an ``include_path`` of the harness)."""

__all__ = ["FOLDER"]
