"""The shipped long-addition base models (issue 19: ``tiny-longadd``, 2 layers, and the first
base ``tiny-longadd-v1``) load by name and solve their old domain much more often than their
new one (the regime their recipes' stop rules target)."""

from __future__ import annotations

import pytest
import torch

from tabom.decoding import DecodeConfig
from tabom.evaluate import evaluate_task
from tabom.models import SHIPPED, detect_backend, load_model
from tabom.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-longadd", "tiny-longadd-v1"])
def test_tiny_longadd_is_shipped_and_in_its_regime(name):
    assert (SHIPPED[name] / "model.safetensors").is_file()
    assert detect_backend(name) == "tiny"
    dlm = load_model(name)
    accs = {}
    for spec in ("longadd:digits=48,max_nines=0", "longadd:digits=48"):
        task = make_task(spec)
        exs = task.generate(24, torch.Generator().manual_seed(99))
        accs[spec] = evaluate_task(dlm, task, exs, DecodeConfig(score="confidence")).accuracy
    assert accs["longadd:digits=48,max_nines=0"] >= 0.6
    assert accs["longadd:digits=48"] < accs["longadd:digits=48,max_nines=0"] - 0.2
