"""The issue-12 objectives through ``compute_objective``: every ``rank_loss`` variant against
the naive loop, ``rank_margin: auto`` from a flag, and the controls ``puma`` and ``papl``
recomputed by hand (``tests/naive.py``; DESIGN §5; arXiv 2602.10314, 2509.23405)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from naive import masked_ce, papl_loop, rank_loss_loop
from tabom import losses
from tabom.cli import load_config
from tabom.commands.train import load_train_items
from tabom.config import ConfigError
from tabom.masking import confidence_reveal_order, random_mask, time_delay_mask
from tabom.objectives import OBJECTIVES, LossConfig, compute_objective
from test_losses import MASK, FakeModel, as_batch, trajectories
from test_trainer import traj  # noqa: F401  (the module fixture)


def test_the_objective_table_is_the_losses_registry():
    """One list of variants: every term of ``losses.RANK_LOSSES`` and nothing else."""
    assert {"puma", "papl"} <= set(OBJECTIVES)


@pytest.mark.parametrize("variant", sorted(losses.RANK_LOSSES))
@pytest.mark.parametrize("margin", [0.2, "auto"])
def test_each_variant_reaches_compute_objective_with_its_settings(variant, margin):
    ids, resp, ds = trajectories()
    attn = torch.ones_like(ids)
    model = FakeModel(ids.shape[1])
    loss = LossConfig(
        td_window=3,
        rank_window=3,
        rank_margin=margin,
        rank_margin_fraction=0.7,
        rank_weight=1.5,
        rank_loss=variant,
        rank_beta=2.0,
    )
    out = compute_objective(
        model,
        as_batch(ids, attn, resp, ds),
        objective="tabom",
        loss=loss,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(7),
    )
    plan = time_delay_mask(
        ids,
        ds,
        response_mask=resp,
        window=3,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(7),
    )
    logits = model(plan.input_ids, attn)
    ref = rank_loss_loop(
        logits,
        ds,
        plan.cut,
        plan.supervise,
        variant=variant,
        window=3,
        margin=margin,
        margin_fraction=0.7,
        beta=2.0,
    )
    torch.testing.assert_close(out.rank, ref)
    torch.testing.assert_close(out.total, out.ce + 1.5 * ref)
    assert out.rank.item() > 0 and out.n_pairs > 0
    out.total.backward()
    assert model.table.grad is not None and model.table.grad.abs().sum() > 0


def test_rank_margin_auto_and_variant_from_flags(tmp_path):
    from tabom.commands.train import TrainConfig

    argv = ["--data", "x.jsonl", "--loss.rank_margin", "auto", "--loss.rank_loss", "logistic-sg"]
    cfg = load_config(TrainConfig, None, argv + ["--loss.rank_margin_fraction", "0.25"])
    assert cfg.loss.rank_margin == "auto" and cfg.loss.rank_margin_fraction == 0.25
    assert cfg.loss.rank_loss == "logistic-sg"
    assert (
        load_config(
            TrainConfig, None, ["--data", "x", "--loss.rank_margin", "0.3"]
        ).loss.rank_margin
        == 0.3
    )
    with pytest.raises((ConfigError, ValueError), match="rank_margin"):
        load_config(TrainConfig, None, ["--data", "x", "--loss.rank_margin", "big"])
    with pytest.raises((ConfigError, ValueError), match="rank_loss"):
        load_config(TrainConfig, None, ["--data", "x", "--loss.rank_loss", "nope"])
    with pytest.raises((ConfigError, ValueError), match="papl_mix"):
        load_config(TrainConfig, None, ["--data", "x", "--loss.papl_mix", "2"])


def test_puma_is_time_delay_masking_on_the_models_own_reveal_order():
    ids, resp, _ = trajectories()
    attn = torch.ones_like(ids)
    model = FakeModel(ids.shape[1])
    loss = LossConfig(td_window=3, rank_window=3, td_cut_range="inclusive")
    batch = as_batch(ids, attn, resp)  # ground truth: no decoding order
    out = compute_objective(
        model,
        batch,
        objective="puma",
        loss=loss,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(3),
    )
    n_reveal = int(resp.sum(1).max())
    assert model.calls == n_reveal + 1  # one no-grad forward per reveal step, one to train
    # by hand: the reveal order (no grad), then time-delay masking at a cut, CE on the window
    order = confidence_reveal_order(lambda x: model(x, attn), ids, resp, mask_token_id=MASK)
    assert (order[resp] >= 0).all() and (order[~resp] == -1).all()
    plan = time_delay_mask(
        ids,
        order,
        response_mask=resp,
        window=3,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(3),
        cut_range="inclusive",
    )
    ref = masked_ce(model(plan.input_ids, attn), ids, plan.supervise)
    torch.testing.assert_close(out.ce, ref)
    assert out.rank.item() == 0 and out.n_supervised == int(plan.supervise.sum()) > 0
    # a model that changes its confidence changes the order: it is recomputed, not stored
    with torch.no_grad():
        model.pos.mul_(-1)
    again = confidence_reveal_order(lambda x: model(x, attn), ids, resp, mask_token_id=MASK)
    assert not torch.equal(again, order)


@pytest.mark.parametrize("mix", [1.0, 0.0])
def test_papl_is_random_masking_with_planner_weighted_ce(mix):
    ids, resp, _ = trajectories()
    attn = torch.ones_like(ids)
    model = FakeModel(ids.shape[1])
    loss = LossConfig(papl_tau=0.5, papl_mix=mix)
    batch = as_batch(ids, attn, resp)
    kw = dict(loss=loss, mask_token_id=MASK)
    out = compute_objective(
        model, batch, objective="papl", generator=torch.Generator().manual_seed(5), **kw
    )
    plan = random_mask(ids, resp, mask_token_id=MASK, generator=torch.Generator().manual_seed(5))
    logits = model(plan.input_ids, attn)
    ref, _ = papl_loop(logits, ids, plan.supervise, tau=0.5, mix=mix, mask_token_id=MASK)
    torch.testing.assert_close(out.ce, ref.float(), rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(out.ce, model.table)
    (g_ref,) = torch.autograd.grad(ref, model.table)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    sft = compute_objective(
        model, batch, objective="sft", generator=torch.Generator().manual_seed(5), **kw
    )
    if mix == 0.0:  # no planner share: exactly the random-mask CE
        torch.testing.assert_close(out.ce, sft.ce)
    else:
        assert abs(out.ce.item() - sft.ce.item()) > 1e-4


def test_nelbo_weight_is_refused_for_the_controls():
    """The rule lives in TrainConfig (objective against loss.nelbo_weight), checked once."""
    from tabom.commands.train import TrainConfig

    for objective in ("puma", "papl"):
        with pytest.raises(ValueError, match="nelbo_weight"):
            TrainConfig(objective=objective, gt_task="addition", loss=LossConfig(nelbo_weight=True))


@pytest.mark.slow  # a distilled file (about 13 s of fixture)
def test_decode_entropy_ties_need_the_files_entropies(model_dir, traj, tmp_path):  # noqa: F811
    """The one check of this data rule is where train reads the file (it names FILE:LINE);
    ``rank_loss`` no longer re-checks that ``decode_entropy`` was passed."""
    from tabom.errors import TabomError
    from tabom.models import load_model
    from test_trainer import config

    lines = Path(traj).read_text().splitlines()
    record = json.loads(lines[1])
    assert record.pop("decode_entropy") is not None  # distill records them
    lines[1] = json.dumps(record)
    data = tmp_path / "no-entropy.jsonl"
    data.write_text("\n".join(lines) + "\n")
    dlm = load_model(model_dir)
    assert len(load_train_items(config(model_dir, traj, tmp_path, rank_ties="decode-entropy"), dlm)[0])
    cfg = config(model_dir, str(data), tmp_path, rank_ties="decode-entropy")
    with pytest.raises(TabomError, match=r"no-entropy\.jsonl:2: loss\.rank_ties: 'decode-entropy'"):
        load_train_items(cfg, dlm)
    assert len(load_train_items(config(model_dir, str(data), tmp_path, rank_ties="reference"), dlm)[0])
