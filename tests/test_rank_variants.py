"""Every ranking variant of ``losses.rank_loss`` against a naive Python loop, value and gradient.

The loop recomputes each candidate's entropy from the full-T probabilities, lists the ordered
pairs one by one and applies the variant's formula to scalars; the vectorised loss must match
it in value and in the gradient with respect to the logits (fp64, so agreement is tight).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tabom.losses import RANK_LOSSES, auto_margin, entropy_rank_loss, rank_loss
from tabom.masking import time_delay_mask

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


def ordered(ds, entropy, b, i, j, ties):
    di, dj = int(ds[b, i]), int(ds[b, j])
    if di != dj:
        return di < dj
    if i == j or ties == "strict":
        return False
    if ties == "reference":
        return i < j
    return (float(entropy[b, i]), i) < (float(entropy[b, j]), j)


def naive(logits, ds, cut, supervise, *, variant, window, margin, beta, ties, entropy, frac=0.5):
    """Per-sample, per-pair loop on scalars."""
    h_all = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)  # (B, L)
    sample_terms = []
    for b in range(logits.shape[0]):
        s = int(cut[b])
        if s < 0:
            continue
        cands = [
            p for p in range(ds.shape[1]) if supervise[b, p] and s <= int(ds[b, p]) < s + window
        ]
        if margin == "auto":
            m = frac * sum(h_all[b, p].item() for p in cands) / max(len(cands), 1)
        else:
            m = margin
        terms = []
        for i in cands:
            later = [j for j in cands if ordered(ds, entropy, b, i, j, ties)]
            if variant == "plackett-luce":
                if later:
                    z = 1 + sum(torch.exp(beta * (h_all[b, i] - h_all[b, j] + m)) for j in later)
                    terms.append(torch.log(z))
                continue
            for j in later:
                hi, hj = h_all[b, i], h_all[b, j]
                if variant.endswith("-sg"):
                    hj = hj.detach()
                if variant.startswith("hinge"):
                    terms.append(torch.clamp(hi - hj + m, min=0))
                else:
                    terms.append(F.softplus(beta * (hi - hj + m)))
        if terms:
            sample_terms.append(sum(terms) / len(terms))
    if not sample_terms:
        return logits.sum() * 0
    return sum(sample_terms) / len(sample_terms)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ties", ["strict", "reference", "decode-entropy"])
@pytest.mark.parametrize("margin", [0.0, 0.3, "auto"])
def test_variant_matches_naive_loop_value_and_gradient(variant, ties, margin):
    for seed in range(3):
        logits, ds, cut, sup, ent = batch(seed=seed)
        kw = dict(window=3, margin=margin, beta=1.7, ties=ties)
        out = rank_loss(logits, ds, cut, variant=variant, supervise=sup, decode_entropy=ent, **kw)
        (g_vec,) = torch.autograd.grad(out.loss, logits)
        ref = naive(logits, ds, cut, sup, variant=variant, entropy=ent, **kw)
        (g_ref,) = torch.autograd.grad(ref, logits)
        assert out.n_samples > 0
        torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_vec, g_ref, rtol=1e-8, atol=1e-12)
        assert g_vec.abs().sum() > 0


def test_hinge_is_bit_identical_to_entropy_rank_loss():
    for seed in range(4):
        logits, ds, cut, sup, ent = batch(seed=seed)
        for ties in ("strict", "reference", "decode-entropy"):
            kw = dict(window=3, margin=0.1, supervise=sup, ties=ties, decode_entropy=ent)
            a = entropy_rank_loss(logits.float(), ds, cut, **kw)
            b = rank_loss(logits.float(), ds, cut, variant="hinge", **kw)
            assert torch.equal(a.loss, b.loss)
            assert (a.n_pairs, a.n_samples) == (b.n_pairs, b.n_samples)


@pytest.mark.parametrize("variant", ["hinge-sg", "logistic-sg"])
def test_one_sided_forms_never_push_the_later_token(variant):
    """Two candidates, the earlier one decoded first: only its logits get a gradient."""
    logits = torch.randn(1, 3, VOCAB, dtype=torch.float64, requires_grad=True)
    ds = torch.tensor([[-1, 0, 1]])
    out = rank_loss(logits, ds, torch.tensor([0]), variant=variant, window=2, margin=5.0)
    (g,) = torch.autograd.grad(out.loss, logits)
    assert g[0, 1].abs().sum() > 0
    assert torch.equal(g[0, 2], torch.zeros(VOCAB, dtype=torch.float64))
    two_sided = rank_loss(logits, ds, torch.tensor([0]), variant=variant[:-3], window=2, margin=5.0)
    (g2,) = torch.autograd.grad(two_sided.loss, logits)
    assert g2[0, 2].abs().sum() > 0


def test_plackett_luce_is_the_exact_order_likelihood_with_a_total_order():
    """One token per step: the sum of the terms is −log Π_t softmax(−βH)[t] over what remains."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 6, VOCAB, generator=g, dtype=torch.float64)
    ds = torch.tensor([[3, 0, 5, 1, 4, 2]])
    beta = 0.7
    out = rank_loss(
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
    out = rank_loss(logits, ds, torch.tensor([0]), variant="plackett-luce", window=2, margin=0.0)
    h = (-(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1))[0].tolist()
    ea, eb, ec = (math.exp(-x) for x in h)
    expect = (-math.log(ea / (ea + ec)) - math.log(eb / (eb + ec))) / 2
    assert out.loss.item() == pytest.approx(expect, rel=1e-12)
    # one stage only: nothing comes after it, no term (as the strict hinge has no pair)
    one = rank_loss(
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
    with pytest.raises(ValueError, match="fraction"):
        auto_margin(h, slot, -1.0)


def test_rank_loss_rejects_bad_settings():
    logits, ds, cut, sup, _ = batch()
    with pytest.raises(ValueError, match="rank_loss"):
        rank_loss(logits, ds, cut, variant="pairwise", window=3)
    with pytest.raises(ValueError, match="rank_margin"):
        rank_loss(logits, ds, cut, window=3, margin=float("nan"))
    with pytest.raises(ValueError, match="rank_margin"):
        rank_loss(logits, ds, cut, window=3, margin="relative")
    with pytest.raises(ValueError, match="rank_beta"):
        rank_loss(logits, ds, cut, variant="logistic", window=3, beta=0.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_pair_gives_an_attached_zero(variant):
    logits = torch.randn(2, 4, VOCAB, requires_grad=True)
    ds = torch.tensor([[-1, 0, -1, -1], [-1, -1, -1, -1]])
    out = rank_loss(logits, ds, torch.tensor([0, -1]), variant=variant, window=3)
    assert out.loss.item() == 0 and out.n_pairs == 0 and out.loss.requires_grad
