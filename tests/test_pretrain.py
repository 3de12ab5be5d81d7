"""Pretraining: batches, schedule, and a short run that learns and saves a loadable model."""

from __future__ import annotations

import json

import pytest
import torch

from naive import masked_ce
from tabom.commands.pretrain import PretrainConfig, encode_example, pretrain
from tabom.masking import random_mask
from tabom.models import TinyModelConfig, build_tiny, load_model
from tabom.objectives import LossConfig, compute_objective
from tabom.schedule import lr_factor
from tabom.tasks import make_task
from tabom.train_data import collate_trajectories, ground_truth_item

SMALL = TinyModelConfig(
    hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_length=32
)


def collate(pairs, pad_id):
    """pretrain's batch: ground-truth items through the one training collate."""
    items = [ground_truth_item(str(i), p, r) for i, (p, r) in enumerate(pairs)]
    b = collate_trajectories(items, pad_id)
    return b.input_ids, b.attention_mask, b.response_mask


def test_encode_and_collate_left_pad_with_an_eos_tail():
    dlm = build_tiny(SMALL)
    task = make_task("addition:min_digits=1,max_digits=2")  # gen_length 4
    ex = task.generate(2, torch.Generator().manual_seed(0))
    pairs = [encode_example(dlm.tokenizer, task, e, eos_id=1) for e in ex]
    for (prompt, resp), e in zip(pairs, ex, strict=True):
        assert dlm.tokenizer.decode(prompt) == e.prompt
        assert len(resp) == task.gen_length
        assert dlm.tokenizer.decode(resp[: len(e.answer)]) == e.answer
        assert resp[len(e.answer) :] == [1] * (task.gen_length - len(e.answer))
    ids, attn, resp = collate(pairs, pad_id=0)
    for i, (p, r) in enumerate(pairs):
        n = len(p) + len(r)
        assert ids[i, -n:].tolist() == p + r
        assert attn[i].sum() == n and attn[i, -n:].all()
        assert resp[i].sum() == len(r) and resp[i, -len(r) :].all()


def test_an_answer_that_does_not_fit_is_an_error():
    dlm = build_tiny(SMALL)
    task = make_task("addition:min_digits=1,max_digits=1")  # gen_length 3
    ex = task.generate(1, torch.Generator().manual_seed(0))[0]
    long = type(ex)(id=ex.id, prompt=ex.prompt, answer="123", data=ex.data)
    with pytest.raises(ValueError, match="no room for EOS"):
        encode_example(dlm.tokenizer, task, long, eos_id=1)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("nelbo", [True, False])
def test_the_sft_objective_is_the_hand_written_mdlm_loss(nelbo):
    """pretrain's loss (compute_objective, sft) = random_mask + masked_ce with 1/t over the
    response length (or the token mean): the same draws, the same value."""
    dlm = build_tiny(SMALL, seed=1)
    task = make_task("addition:min_digits=1,max_digits=2")
    pairs = [encode_example(dlm.tokenizer, task, e, 1) for e in task.generate(16, _gen(5))]
    ids, attn, resp = collate(pairs, 0)
    plan = random_mask(ids, resp, mask_token_id=dlm.mask_token_id, generator=_gen(7))
    with torch.no_grad():
        expected = masked_ce(
            dlm(plan.input_ids, attn),
            ids,
            plan.supervise,
            t=plan.t if nelbo else None,
            normalizer=resp.sum() if nelbo else None,
        )
        items = [ground_truth_item(str(i), p, r) for i, (p, r) in enumerate(pairs)]
        got = compute_objective(
            dlm,
            collate_trajectories(items, 0),
            objective="sft",
            loss=LossConfig(nelbo_weight=nelbo),
            mask_token_id=dlm.mask_token_id,
            generator=_gen(7),
        ).total
    assert torch.equal(got, expected)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _fixed_batch_loss(dlm, task):
    gen = torch.Generator().manual_seed(123)
    pairs = [encode_example(dlm.tokenizer, task, e, 1) for e in task.generate(64, gen)]
    ids, attn, resp = collate(pairs, 0)
    plan = random_mask(ids, resp, mask_token_id=dlm.mask_token_id, generator=gen)
    with torch.no_grad():
        return masked_ce(dlm(plan.input_ids, attn), ids, plan.supervise).item()


def test_a_short_pretrain_lowers_the_loss_changes_every_weight_and_saves(tmp_path):
    spec = "addition:min_digits=1,max_digits=2"
    cfg = PretrainConfig(
        output_dir=str(tmp_path / "run"),
        model=SMALL,
        tasks=[spec],
        steps=60,
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        eval_every=0,
        eval_examples=8,
        seed=3,
    )
    init = build_tiny(SMALL, seed=3)
    before = _fixed_batch_loss(init, make_task(spec))
    final = pretrain(cfg)
    trained = load_model(str(final))
    assert _fixed_batch_loss(trained, make_task(spec)) < before - 0.5
    init_params = dict(init.model.named_parameters())
    for name, p in trained.model.named_parameters():
        assert not torch.equal(p, init_params[name]), f"{name} did not change"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 61))
    assert "eval" in log[-1] and spec in log[-1]["eval"]
    assert (tmp_path / "run" / "config.yaml").exists()


def test_config_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="task_weights has 1 entries but tasks has 2"):
        PretrainConfig(tasks=["addition", "sudoku"], task_weights=[1.0])


@pytest.mark.slow
def test_the_stop_rule_ends_pretraining_at_the_first_eval_that_meets_every_minimum(
    tmp_path, monkeypatch
):
    """``stop_at`` (issue 19): a rule, not a step count. The eval is faked to rise by 0.1 per
    eval on the first task and 0.2 on the second; minimums 0.3 and 0.5 are both met at the
    third eval (step 6 of a 20-step cap): training stops there and saves that model."""
    import tabom.commands.pretrain as pre

    specs = ["addition:min_digits=1,max_digits=2", "addition:min_digits=3,max_digits=3"]
    calls = []

    def fake_eval(dlm, eval_sets):
        calls.append(1)
        n = len(calls)
        return {specs[0]: 0.1 * n, specs[1]: 0.2 * n}

    monkeypatch.setattr(pre, "greedy_accuracy", fake_eval)
    cfg = PretrainConfig(
        output_dir=str(tmp_path / "run"),
        model=SMALL,
        tasks=specs,
        steps=20,
        batch_size=4,
        warmup_steps=1,
        eval_every=2,
        eval_examples=2,
        stop_at=[0.3, 0.5],
    )
    final = pretrain(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7)) and log[-1]["stopped"] == "stop_at"
    assert "stopped" not in log[3]  # step 4: 0.2 < 0.3 although 0.4 < 0.5 too
    assert load_model(str(final)) is not None
    with pytest.raises(ValueError, match="stop_at has 1 entries but there are 2 eval tasks"):
        PretrainConfig(tasks=specs, stop_at=[0.5])
    with pytest.raises(ValueError, match="stop_at needs eval_every > 0"):
        PretrainConfig(tasks=specs, stop_at=[0.5, 0.5], eval_every=0)
    with pytest.raises(ValueError, match="stop_at"):
        PretrainConfig(tasks=specs, stop_at=[0.5, 1.5])
