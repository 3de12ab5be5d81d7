"""Every ranking variant of ``losses.rank_loss`` against a naive Python loop, value and gradient.

The loop (``tests/naive.py``) recomputes each candidate's entropy from the full-T
probabilities, lists the ordered pairs one by one and applies the variant's formula to
scalars; the vectorised loss, fed entropies as ``compute_objective`` feeds it, must match it
in value and in the gradient with respect to the logits (fp64, so agreement is tight). A
variant's knobs are ``LossConfig`` fields with declared ranges (issue 20: one check per rule).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from naive import rank_loss_loop
from tabom.cli import load_config
from tabom.commands.train import TrainConfig
from tabom.config import ConfigError
from tabom.losses import RANK_LOSSES, auto_margin, rank_loss, token_entropy
from tabom.masking import time_delay_mask
from tabom.objectives import LossConfig, term_knobs

VOCAB = 11
VARIANTS = sorted(RANK_LOSSES)


def batch(b: int = 6, length: int = 16, response: int = 12, per_step: int = 2, seed: int = 0):
    """Logits (fp64 leaf), decode steps with same-step ties, cuts and the TD window of M = 4."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, length), generator=g)
    resp = torch.zeros(b, length, dtype=torch.bool)
    ds = torch.full((b, length), -1, dtype=torch.long)
    for row in range(b):
        start = length - response + row % 3
        resp[row, start:] = True
        n = length - start
        order = torch.randperm(n, generator=g)
        ds[row, start + order] = torch.arange(n) // (per_step if row % 2 else 1)
    plan = time_delay_mask(
        ids, ds, response_mask=resp, window=4, mask_token_id=2, generator=g, cut_range="inclusive"
    )
    logits = (2 * torch.randn(b, length, VOCAB, generator=g, dtype=torch.float64)).requires_grad_()
    entropy = torch.rand(b, length, generator=g)
    return logits, ds, plan.cut, plan.supervise, entropy


def run(logits, ds, cut, *, variant="hinge", margin=0.1, beta=1.0, **kw):
    """``rank_loss`` on the logits' entropies, with the variant's knobs (here only β)."""
    knobs = {"beta": beta} if "beta" in term_knobs(variant) else {}
    return rank_loss(token_entropy(logits), ds, cut, variant=variant, margin=margin, **kw, **knobs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ties", ["strict", "reference", "decode-entropy"])
@pytest.mark.parametrize("margin", [0.0, 0.3, "auto"])
def test_variant_matches_naive_loop_value_and_gradient(variant, ties, margin):
    for seed in range(3):
        logits, ds, cut, sup, ent = batch(seed=seed)
        kw = dict(window=3, margin=margin, beta=1.7, ties=ties, decode_entropy=ent)
        out = run(logits, ds, cut, variant=variant, supervise=sup, **kw)
        (g_vec,) = torch.autograd.grad(out.loss, logits)
        ref = rank_loss_loop(logits, ds, cut, sup, variant=variant, **kw)
        (g_ref,) = torch.autograd.grad(ref, logits)
        assert out.n_samples > 0
        torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_vec, g_ref, rtol=1e-8, atol=1e-12)
        assert g_vec.abs().sum() > 0


@pytest.mark.parametrize("variant", ["hinge-sg", "logistic-sg"])
def test_one_sided_forms_never_push_the_later_token(variant):
    """Two candidates, the earlier one decoded first: only its logits get a gradient."""
    logits = torch.randn(1, 3, VOCAB, dtype=torch.float64, requires_grad=True)
    ds = torch.tensor([[-1, 0, 1]])
    out = run(logits, ds, torch.tensor([0]), variant=variant, window=2, margin=5.0)
    (g,) = torch.autograd.grad(out.loss, logits)
    assert g[0, 1].abs().sum() > 0
    assert torch.equal(g[0, 2], torch.zeros(VOCAB, dtype=torch.float64))
    two_sided = run(logits, ds, torch.tensor([0]), variant=variant[:-3], window=2, margin=5.0)
    (g2,) = torch.autograd.grad(two_sided.loss, logits)
    assert g2[0, 2].abs().sum() > 0


def test_plackett_luce_is_the_exact_order_likelihood_with_a_total_order():
    """One token per step: the sum of the terms is −log Π_t softmax(−βH)[t] over what remains."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 6, VOCAB, generator=g, dtype=torch.float64)
    ds = torch.tensor([[3, 0, 5, 1, 4, 2]])
    beta = 0.7
    out = run(
        logits, ds, torch.tensor([0]), variant="plackett-luce", window=6, margin=0.0, beta=beta
    )
    h = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)[0]
    remaining, nll = list(ds[0].argsort().tolist()), 0.0
    while len(remaining) > 1:
        first = remaining[0]
        z = sum(math.exp(-beta * float(h[r])) for r in remaining)
        nll -= math.log(math.exp(-beta * float(h[first])) / z)
        remaining.pop(0)
    assert out.loss.item() * 5 == pytest.approx(nll, rel=1e-12)  # 5 non-trivial stages


def test_plackett_luce_strict_ties_score_each_member_against_later_stages():
    """Stages {a, b} then {c}: −log p(a | {a, c}) − log p(b | {b, c}), mean over the 2 terms."""
    logits = torch.randn(1, 3, VOCAB, dtype=torch.float64)
    ds = torch.tensor([[0, 0, 1]])
    out = run(logits, ds, torch.tensor([0]), variant="plackett-luce", window=2, margin=0.0)
    h = (-(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1))[0].tolist()
    ea, eb, ec = (math.exp(-x) for x in h)
    expect = (-math.log(ea / (ea + ec)) - math.log(eb / (eb + ec))) / 2
    assert out.loss.item() == pytest.approx(expect, rel=1e-12)
    # one stage only: nothing comes after it, no term (as the strict hinge has no pair)
    one = run(
        logits,
        torch.tensor([[0, 0, 0]]),
        torch.tensor([0]),
        variant="plackett-luce",
        window=2,
        margin=0.0,
    )
    assert one.n_samples == 0 and one.loss.item() == 0


def test_auto_margin_is_a_detached_fraction_of_the_window_mean():
    h = torch.tensor([[0.1, 0.3, 9.0], [2.0, 0.0, 0.0]], requires_grad=True)
    slot = torch.tensor([[True, True, False], [True, False, False]])
    m = auto_margin(h, slot, 0.5)
    torch.testing.assert_close(m, torch.tensor([0.1, 1.0]))
    assert not m.requires_grad


def test_every_knob_is_a_loss_config_field_with_a_declared_range():
    """A term's keyword-only parameter NAME is ``LossConfig.rank_NAME``, range-checked there
    once (``config.check_ranges`` for a config built in Python, the flag for the CLI)."""
    fields = {f.name: f for f in dataclasses.fields(LossConfig)}
    knobs = {k for v in VARIANTS for k in term_knobs(v)}
    assert knobs == {"beta"}  # today's knob; a new one needs its field (test below)
    for knob in knobs:
        assert "range" in fields[f"rank_{knob}"].metadata
    with pytest.raises(ConfigError, match=r"rank_beta: 0\.0 is out of range; it must be > 0"):
        LossConfig(rank_beta=0.0)
    with pytest.raises(ConfigError, match=r"--loss\.rank_beta: -1\.0 is out of range"):
        load_config(TrainConfig, None, ["--data", "x", "--loss.rank_beta", "-1"])


def test_rank_settings_are_checked_by_the_config_once():
    """The rules rank_loss / auto_margin used to re-check live in LossConfig alone."""
    for bad, match in [
        (dict(rank_loss="pairwise"), "rank_loss must be one of hinge"),
        (dict(rank_margin=float("nan")), "rank_margin: nan is not a finite number"),
        (dict(rank_margin=-0.1), r"rank_margin: -0\.1 is out of range"),
        (dict(rank_margin_fraction=-1.0), "rank_margin_fraction: -1.0 is out of range"),
        (dict(rank_ties="sorted"), "rank_ties: 'sorted' is not one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            LossConfig(**bad)
    argv = ["--data", "x", "--loss.rank_margin", "relative"]
    with pytest.raises(ConfigError, match="--loss.rank_margin"):
        load_config(TrainConfig, None, argv)


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_pair_gives_an_attached_zero(variant):
    logits = torch.randn(2, 4, VOCAB, requires_grad=True)
    ds = torch.tensor([[-1, 0, -1, -1], [-1, -1, -1, -1]])
    out = run(logits, ds, torch.tensor([0, -1]), variant=variant, window=3)
    assert out.loss.item() == 0 and out.n_pairs == 0 and out.loss.requires_grad
