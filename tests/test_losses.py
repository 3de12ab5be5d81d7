"""The entropy, the vectorised ranking loss against a naive loop, and the objectives against
the references of ``tests/naive.py`` (the one loss path: what ``compute_objective`` runs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from naive import masked_ce, rank_loss_loop
from tabom.losses import rank_loss, token_entropy
from tabom.masking import random_mask, time_delay_mask
from tabom.objectives import LossConfig, compute_objective, term_knobs
from tabom.train_data import TrajectoryBatch

MASK = 2
VOCAB = 13


def trajectories(b: int = 6, length: int = 20, response: int = 14, per_step: int = 2, seed=0):
    """[pad | prompt | response] rows decoded ``per_step`` tokens a step, some never decoded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, length), generator=g)
    resp = torch.zeros(b, length, dtype=torch.bool)
    ds = torch.full((b, length), -1, dtype=torch.long)
    for row in range(b):
        start = length - response + row % 3  # shorter responses, longer prompt / pad
        resp[row, start:] = True
        n = length - start
        order = torch.randperm(n, generator=g)
        d = torch.arange(n) // per_step
        d[n - row % 2 :] = -1  # odd rows: the last position is never decoded
        ds[row, start + order] = d
    ds[-1, ds[-1] > 0] = -1  # one row too short to cut (one step, two tokens)
    return ids, resp, ds


# 1) masked CE ---------------------------------------------------------------------------------


def test_masked_ce_equals_cross_entropy_on_supervised_positions():
    logits = torch.randn(3, 7, 11, requires_grad=True)
    targets = torch.randint(0, 11, (3, 7))
    sup = torch.rand(3, 7) < 0.4
    sup[0, 0] = True
    ours = masked_ce(logits, targets, sup)
    ref = F.cross_entropy(logits[sup], targets[sup])
    torch.testing.assert_close(ours, ref)
    g_ours, g_ref = (torch.autograd.grad(x, logits)[0] for x in (ours, ref))
    torch.testing.assert_close(g_ours, g_ref)
    # 1/t weighting over a custom normaliser, against a loop
    t = torch.tensor([0.5, 0.25, 1.0])
    weighted = masked_ce(logits, targets, sup, t=t, normalizer=21.0)
    loop = sum(
        F.cross_entropy(logits[b, p][None], targets[b, p][None]) / t[b]
        for b in range(3)
        for p in range(7)
        if sup[b, p]
    )
    torch.testing.assert_close(weighted, loop / 21.0)


def test_masked_ce_with_nothing_supervised_is_zero_with_a_graph():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = masked_ce(
        logits, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool)
    )
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


# 2) entropy ranking loss ----------------------------------------------------------------------


def test_token_entropy_matches_the_definition_and_survives_minus_inf():
    logits = torch.randn(4, VOCAB, dtype=torch.bfloat16)
    p = torch.softmax(logits.float(), -1)
    torch.testing.assert_close(token_entropy(logits), -(p * p.log()).sum(-1))
    # analytic backward against finite differences (double), and against autograd of the formula
    x = torch.randn(2, 3, VOCAB, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: token_entropy(z).double(), (x,))
    y = torch.randn(5, VOCAB, requires_grad=True)
    (g_ours,) = torch.autograd.grad(token_entropy(y).square().sum(), y)
    q = torch.softmax(y, -1)
    (g_ref,) = torch.autograd.grad((-(q * q.log()).sum(-1)).square().sum(), y)
    torch.testing.assert_close(g_ours, g_ref)
    # -inf logits (a banned token): finite entropy and gradients
    z = torch.randn(3, VOCAB).index_fill(1, torch.tensor([MASK]), float("-inf"))
    z.requires_grad_(True)
    h = token_entropy(z)
    (grad,) = torch.autograd.grad(h.sum(), z)
    assert torch.isfinite(h).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("ties", ["strict", "reference", "decode-entropy"])
@pytest.mark.parametrize(("unit", "rank_window"), [("steps", 2), ("steps", 5), ("tokens", 3)])
def test_rank_loss_vectorised_equals_the_naive_loop(ties, unit, rank_window):
    ids, resp, ds = trajectories()
    plan = time_delay_mask(
        ids,
        ds,
        response_mask=resp,
        window=3,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(0),
        window_unit=unit,
    )
    logits = (2 * torch.randn(*ids.shape, VOCAB)).requires_grad_(True)
    # recorded entropies with exact ties inside some steps
    entropy = torch.randint(0, 3, ds.shape).float()
    kw = dict(window=rank_window, margin=0.3, ties=ties, decode_entropy=entropy)
    out = rank_loss(
        token_entropy(logits), ds, plan.cut, supervise=plan.supervise, window_unit=unit, **kw
    )
    ref = rank_loss_loop(logits, ds, plan.cut, plan.supervise, unit=unit, **kw)
    assert out.n_samples > 0 and out.n_pairs > 0 and plan.n_uncut == 1
    torch.testing.assert_close(out.loss, ref)
    g_out, g_ref = (torch.autograd.grad(x, logits)[0] for x in (out.loss, ref))
    torch.testing.assert_close(g_out, g_ref)
    # gradient only at the candidates: entropies were taken only inside the window
    touched = g_out.abs().sum(-1) > 0
    assert not (touched & ~plan.supervise).any()


def test_rank_loss_tie_modes_count_pairs():
    # one sample, window of 2 steps x 2 tokens: 4 cross-step pairs, plus 2 same-step ones
    ds = torch.tensor([[-1, 0, 0, 1, 1, 2, 2]])
    logits = torch.randn(1, 7, VOCAB)
    cut = torch.tensor([0])
    h = token_entropy(logits)
    kw = dict(window=2, margin=0.1)
    assert rank_loss(h, ds, cut, **kw).n_pairs == 4
    assert rank_loss(h, ds, cut, ties="reference", **kw).n_pairs == 6
    ent = torch.rand(1, 7)
    out = rank_loss(h, ds, cut, ties="decode-entropy", decode_entropy=ent, **kw)
    assert out.n_pairs == 6 and out.n_samples == 1


def test_rank_loss_hinge_value_and_no_pair_case():
    # two tokens, d = 0 then 1: loss = relu(H_0 - H_1 + m); uniform (high H) first is penalised
    logits = torch.zeros(1, 2, VOCAB)
    logits[0, 1, 0] = 20.0  # position 1 almost certain: H ≈ 0
    ds = torch.tensor([[0, 1]])
    out = rank_loss(token_entropy(logits), ds, torch.tensor([0]), window=2, margin=0.5)
    torch.testing.assert_close(
        out.loss, token_entropy(logits[0, 0]) - token_entropy(logits[0, 1]) + 0.5
    )
    # nothing to rank (uncut, or one step in the window): 0 with a graph to the logits
    z = torch.randn(2, 2, VOCAB, requires_grad=True)
    same_step = torch.tensor([[0, 0], [0, 0]])  # candidates but, strict, no pair
    cases = [(ds.expand(2, 2), -1, 2), (ds.expand(2, 2), 0, 1), (same_step, 0, 2)]
    for steps, s, width in cases:
        cut = torch.full((2,), s)
        out = rank_loss(token_entropy(z), steps, cut, window=width, margin=0.5)
        assert out.loss.item() == 0.0 and out.n_pairs == 0 and out.n_samples == 0
        (grad,) = torch.autograd.grad(out.loss, z)
        assert grad.abs().sum() == 0


# 3) objectives --------------------------------------------------------------------------------


class FakeModel(torch.nn.Module):
    """Logits from a token table plus a position bias; counts its forwards."""

    def __init__(self, length: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB))
        self.pos = torch.nn.Parameter(torch.randn(length, VOCAB))
        self.calls = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        return self.table[input_ids] + self.pos[None, : input_ids.shape[1]]  # (B, L, V)


def as_batch(ids, attn, resp, ds=None) -> TrajectoryBatch:
    return TrajectoryBatch(ids, attn, resp, ds, None, [])


@pytest.mark.parametrize("objective", ["sft", "traj-sft", "td", "tabom"])
def test_compute_objective_pieces(objective):
    ids, resp, ds = trajectories()
    attn = torch.ones_like(ids)
    model = FakeModel(ids.shape[1])
    loss = LossConfig(td_window=3, rank_window=2, rank_margin=0.2, rank_weight=1.5)
    kw = dict(objective=objective, mask_token_id=MASK, loss=loss)
    out = compute_objective(
        model, as_batch(ids, attn, resp, ds), generator=torch.Generator().manual_seed(7), **kw
    )
    assert model.calls == 1
    # the same masking, recomputed by hand
    g = torch.Generator().manual_seed(7)
    if objective in ("sft", "traj-sft"):
        plan = random_mask(ids, resp, mask_token_id=MASK, generator=g)
    else:
        plan = time_delay_mask(
            ids, ds, response_mask=resp, window=3, mask_token_id=MASK, generator=g
        )
    logits = model(plan.input_ids, attn)
    torch.testing.assert_close(out.ce, masked_ce(logits, ids, plan.supervise))
    assert out.n_supervised == int(plan.supervise.sum()) > 0
    assert out.n_uncut == plan.n_uncut == (1 if objective in ("td", "tabom") else 0)
    if objective == "tabom":
        rank = rank_loss_loop(logits, ds, plan.cut, plan.supervise, window=2, margin=0.2)
        torch.testing.assert_close(out.rank, rank)
        torch.testing.assert_close(out.total, out.ce + 1.5 * out.rank)
        assert out.rank.item() > 0 and out.n_pairs > 0 and out.n_rank_samples > 0
    else:
        assert out.rank.item() == 0.0 and out.n_pairs == 0 and out.n_rank_samples == 0
        torch.testing.assert_close(out.total, out.ce)
    out.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_compute_objective_nelbo_and_errors():
    ids, resp, ds = trajectories()
    attn = torch.ones_like(ids)
    model = FakeModel(ids.shape[1])
    out = compute_objective(
        model,
        as_batch(ids, attn, resp),
        objective="sft",
        loss=LossConfig(nelbo_weight=True),
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(1),
    )
    plan = random_mask(ids, resp, mask_token_id=MASK, generator=torch.Generator().manual_seed(1))
    logits = model(plan.input_ids, attn)
    ref = masked_ce(logits, ids, plan.supervise, t=plan.t, normalizer=resp.sum())
    torch.testing.assert_close(out.ce, ref)


def test_loss_settings_are_refused_by_the_config_naming_the_flag():
    """Each rule once, in the config layer (issue 20): a range in field metadata, the variant
    name in ``LossConfig``, ``nelbo_weight`` against the objective in ``TrainConfig``."""
    from tabom.cli import load_config
    from tabom.commands.train import TrainConfig
    from tabom.config import ConfigError

    with pytest.raises(ValueError, match="rank_loss must be one of hinge"):
        LossConfig(rank_loss="nope")
    with pytest.raises(ConfigError, match="td_window: 0 is out of range; it must be >= 1"):
        LossConfig(td_window=0)
    for argv, flag in [
        (["--loss.td_window", "0"], "--loss.td_window: 0 is out of range"),
        (["--loss.loss_chunk", "-1"], "--loss.loss_chunk: -1 is out of range"),
        (["--loss.tad_tau", "0"], "--loss.tad_tau: 0.0 is out of range"),
        (["--loss.tad_delta", "0"], "--loss.tad_delta: 0 is out of range"),
        (["--loss.window_unit", "bytes"], "--loss.window_unit: 'bytes' is not one of"),
        (["--loss.td_cut_range", "all"], "--loss.td_cut_range: 'all' is not one of"),
        (["--loss.rank_loss", "nope"], "--loss.rank_loss must be one of hinge"),
        (["--loss.nelbo_weight", "true"], "--loss.nelbo_weight: applies to sft / traj-sft"),
    ]:
        with pytest.raises(ConfigError, match=flag):
            load_config(TrainConfig, None, ["--data", "x.jsonl", *argv])
    for objective in ("td", "tabom", "tad", "puma", "papl"):
        data = ["--gt_task", "addition"] if objective in ("puma", "papl") else ["--data", "x"]
        argv = [*data, "--objective", objective, "--loss.nelbo_weight", "true"]
        with pytest.raises(ConfigError, match="--loss.nelbo_weight: applies to sft"):
            load_config(TrainConfig, None, argv)
    for objective in ("sft", "traj-sft"):
        data = ["--gt_task", "addition"] if objective == "sft" else ["--data", "x"]
        argv = [*data, "--objective", objective, "--loss.nelbo_weight", "true"]
        assert load_config(TrainConfig, None, argv).loss.nelbo_weight


def test_a_ranking_variant_is_one_registered_term(monkeypatch):
    """``--loss.rank_loss NAME`` runs the term registered as NAME, with its knobs (keyword-only
    parameters) filled from ``LossConfig.rank_KNOB``."""
    from tabom import losses

    ids, resp, ds = trajectories()
    attn = torch.ones_like(ids)
    model = FakeModel(ids.shape[1])
    seen = {}

    def scaled_hinge(h, before, margin, *, beta):
        seen.update(beta=beta, margin=margin)
        terms, counted = losses.RANK_LOSSES["hinge"](h, before, margin)
        return beta * terms, counted

    monkeypatch.setitem(losses.RANK_LOSSES, "scaled", scaled_hinge)
    assert term_knobs("scaled") == ("beta",) and term_knobs("hinge") == ()
    runs = {}
    for name in ("hinge", "scaled"):
        loss = LossConfig(
            td_window=3, rank_window=2, rank_margin=0.2, rank_loss=name, rank_beta=3.0
        )
        runs[name] = compute_objective(
            model,
            as_batch(ids, attn, resp, ds),
            objective="tabom",
            loss=loss,
            mask_token_id=MASK,
            generator=torch.Generator().manual_seed(7),
        )
    torch.testing.assert_close(runs["scaled"].rank, 3.0 * runs["hinge"].rank)
    assert runs["hinge"].rank.item() > 0 and seen == {"beta": 3.0, "margin": 0.2}
