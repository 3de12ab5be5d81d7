"""Which of the paper's five benchmarks the lm-evaluation-harness runs offline here (docs/models.md).

Pins the table in docs/models.md ("lm-eval, offline"): with no network, the harness's own
MATH-500, HumanEval, MBPP and IFEval tasks cannot load (hub datasets, the hub ``code_eval``
metric, NLTK downloads); GSM8K runs from a local copy (tests/test_lm_eval.py). tabom scores
math, HumanEval and MBPP itself (tests/test_verified_e2e.py). If a harness release makes one of
them load offline, this test fails and the table needs updating.
"""

from __future__ import annotations

import pytest

lm_eval = pytest.importorskip("lm_eval")


@pytest.mark.slow
def test_the_harness_cannot_load_these_benchmarks_offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    for name in ("hendrycks_math500", "humaneval", "mbpp", "ifeval"):
        if name not in manager.all_tasks:
            continue  # not in this harness release: it cannot run either
        with pytest.raises(Exception):  # noqa: B017 - each fails its own way (see the table)
            manager.load_task_or_group([name])
