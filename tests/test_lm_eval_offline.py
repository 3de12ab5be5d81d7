"""Which of the paper's five benchmarks the lm-evaluation-harness runs offline here (docs/models.md).

Pins the table in docs/models.md ("lm-eval, offline"): with no network, the harness's own
MATH-500, HumanEval, MBPP and IFEval tasks cannot load (hub datasets, the hub ``code_eval``
metric, NLTK downloads); GSM8K runs from a local copy (tests/test_lm_eval.py). tabom scores
math, HumanEval and MBPP itself (tests/test_verified_e2e.py). If a harness release makes one of
them load offline, this test fails and the table needs updating.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabom.models.scripted import save_scripted
from tabom.sandbox import bwrap_works
from tabom.tasks import make_task

lm_eval = pytest.importorskip("lm_eval")
HUMANEVAL = Path(__file__).parent / "data" / "humaneval" / "HumanEval_sample.jsonl"


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


@pytest.mark.slow
@pytest.mark.skipif(not bwrap_works(), reason="no working bubblewrap")
def test_tabom_humaneval_runs_in_the_harness_offline_scored_by_the_sandbox(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    from lm_eval.tasks import TaskManager

    import tabom.lm_eval_adapter  # noqa: F401  (registers the model)
    from tabom.lm_eval_tasks import FOLDER

    ex = make_task("humaneval").load(HUMANEVAL)
    script = {  # answers known in advance: right, wrong, exits early; the 4th is empty
        ex[0].prompt: [ex[0].answer],
        ex[1].prompt: ["    return None\n"],
        ex[2].prompt: ["```python\nimport sys\nsys.exit(0)\n```"],
    }
    model = save_scripted(tmp_path / "m", script)
    out = lm_eval.simple_evaluate(
        model="tabom",
        model_args=f"pretrained={model},threshold=0.9,gen_length=256",
        tasks=["tabom_humaneval"],
        task_manager=TaskManager(
            include_path=str(FOLDER), metadata={"humaneval_path": str(HUMANEVAL)}
        ),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = out["samples"]["tabom_humaneval"]
    assert [s["arguments"][0][0] for s in samples] == [e.prompt for e in ex]  # tabom's prompts
    got = {s["doc"]["id"]: s["pass@1"] for s in samples}
    assert got == {"humaneval-0": 1.0, "humaneval-2": 0.0, "humaneval-10": 0.0, "humaneval-53": 0.0}
    assert out["results"]["tabom_humaneval"]["pass@1,none"] == pytest.approx(0.25)
    assert json.loads(samples[0]["doc"]["data"])["entry_point"] == "has_close_elements"
