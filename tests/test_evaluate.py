"""pass@k against a brute-force count; budgets per task; forwards per answer."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from tabom.decoding import DecodeConfig
from tabom.evaluate import budget_for, evaluate_task
from tabom.metrics import pass_at_k
from tabom.models import build_tiny
from tabom.tasks import make_task


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny()


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


# ---------------------------------------------------------------- budgets per task


def fake_task(gen_length: int) -> SimpleNamespace:
    """``budget_for`` reads only the task's name and response length."""
    return SimpleNamespace(name=f"t{gen_length}", gen_length=gen_length)


def test_decode_config_takes_its_length_from_the_task():
    # ``tabom eval --decode.block_length 16 --decode.tokens_per_step 2``: no placeholder length
    budget = DecodeConfig(score="entropy", tokens_per_step=2, block_length=16, temperature=0.5)
    cfg = budget_for(fake_task(32), budget)
    assert (cfg.gen_length, cfg.steps, cfg.block_length) == (32, 16, 16)
    assert (cfg.score, cfg.temperature) == ("entropy", 0.5)
    assert budget_for(fake_task(16), DecodeConfig(tokens_per_step=3, block_length=16)).steps == 6
    assert budget_for(fake_task(6), DecodeConfig(tokens_per_step=4)).steps == 2  # ceil(6 / 4)
    with pytest.raises(ValueError, match=r"task 't8'.*block_length \(16\) must divide"):
        budget_for(fake_task(8), budget)
    with pytest.raises(ValueError, match="tokens_per_step: 0 is out of range"):
        DecodeConfig(tokens_per_step=0)
    with pytest.raises(ValueError, match="score: 'nope' is not one of"):
        DecodeConfig(score="nope")  # type: ignore[arg-type]


def test_budget_for_a_decode_config():
    same = DecodeConfig(gen_length=6, steps=4, threshold=0.5)
    assert budget_for(fake_task(6), same) is same  # the task's length: used as it is
    with pytest.raises(ValueError, match="gen_length 8, but the task's response length is 6"):
        budget_for(fake_task(6), DecodeConfig(gen_length=8, steps=4))
    assert budget_for(fake_task(6), DecodeConfig(tokens_per_step=1)).steps == 6


def test_forwards_per_answer_count_each_row(tiny_model):
    task = make_task("addition:min_digits=1,max_digits=2")
    examples = task.generate(5, torch.Generator().manual_seed(0))
    fixed = evaluate_task(tiny_model, task, examples, DecodeConfig(tokens_per_step=1), batch_size=2)
    assert fixed.nfe_per_answer == task.gen_length and fixed.tokens_per_forward == 1.0
    cfg = DecodeConfig(gen_length=task.gen_length, threshold=0.3)
    alone = evaluate_task(tiny_model, task, examples, cfg, batch_size=1)
    batched = evaluate_task(tiny_model, task, examples, cfg, batch_size=5)
    assert alone.nfe_per_answer == batched.nfe_per_answer <= task.gen_length
    assert alone.tokens_per_forward == batched.tokens_per_forward >= 1.0
    assert alone.responses == batched.responses
