"""The control objectives' components: PUMA's online reveal order and PAPL's planner weights.

PUMA (arXiv 2602.10314): ``masking.confidence_reveal_order`` against a hand-worked case and a
naive per-row loop; its output is a trajectory ``time_delay_mask`` accepts. PAPL
(arXiv 2509.23405): ``losses.planner_weights`` / ``planner_weighted_ce`` against a naive loop,
value and gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tabom.losses import masked_ce, planner_weighted_ce, planner_weights
from tabom.masking import confidence_reveal_order, time_delay_mask

MASK = 2
V = 6


def left_bonus_forward(base: list[float], targets: torch.Tensor):
    """Hand model: at response position p the target's logit is base[p] + 5 if p − 1 is a
    revealed response position; every other logit is 0."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        b, length = x.shape
        logits = torch.zeros(b, length, V)
        for r in range(b):
            for p in range(1, length):
                bonus = 5.0 if p >= 2 and x[r, p - 1] != MASK else 0.0
                logits[r, p, targets[r, p]] = base[p] + bonus
        return logits

    return forward


def test_puma_order_is_recomputed_after_each_reveal():
    ids = torch.tensor([[5, 4, 3, 4]])  # prompt "5", response 4 3 4
    resp = torch.tensor([[False, True, True, True]])
    fwd = left_bonus_forward([0.0, 1.0, 3.0, 0.5], ids)
    # step 0: scores 1, 3, 0.5 -> reveal p2; step 1: p3 gets the bonus (5.5 > 1) -> p3; then p1
    d = confidence_reveal_order(fwd, ids, resp, mask_token_id=MASK)
    assert d.tolist() == [[-1, 2, 0, 1]]  # one forward's static order: p2, p1, p3


def tiny_model(seed: int = 0):
    """A random state-dependent model: each position's logits depend on the whole input."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(V, 8, generator=g)
    mix = torch.randn(8, 8, generator=g)
    head = torch.randn(8, V, generator=g)

    def forward(x: torch.Tensor) -> torch.Tensor:
        e = emb[x]  # (B, L, 8)
        ctx = e.mean(1, keepdim=True) @ mix  # (B, 1, 8)
        return 3 * torch.tanh(e + ctx + torch.arange(x.shape[1])[None, :, None] * 0.1) @ head

    return forward


def naive_order(forward, ids, resp):
    out = torch.full_like(ids, -1)
    for r in range(ids.shape[0]):
        x = ids[r : r + 1].clone()
        hidden = [p for p in range(ids.shape[1]) if resp[r, p]]
        x[0, hidden] = MASK
        step = 0
        while hidden:
            logits = forward(x)[0].double()
            logits[:, MASK] = -math.inf
            q = torch.softmax(logits, -1)
            best = max(hidden, key=lambda p: (float(q[p].max()), -p))  # ties: lower position
            out[r, best] = step
            x[0, best] = ids[r, best]
            hidden.remove(best)
            step += 1
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_puma_order_matches_a_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (5, 11), generator=g)
    resp = torch.zeros(5, 11, dtype=torch.bool)
    for r in range(5):
        resp[r, 3 + r % 2 :] = True  # responses of 8 and 7 tokens after a prompt (+ pad)
    fwd = tiny_model(seed)
    d = confidence_reveal_order(fwd, ids, resp, mask_token_id=MASK)
    assert torch.equal(d, naive_order(fwd, ids, resp))
    for r in range(5):  # every response position revealed once, one per step, nothing else
        steps = d[r][resp[r]]
        assert (d[r][~resp[r]] == -1).all() and sorted(steps.tolist()) == list(range(len(steps)))
    plan = time_delay_mask(ids, d, response_mask=resp, window=2, mask_token_id=MASK, generator=g)
    assert plan.valid.all() and plan.supervise.any()


def papl_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 7, V, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    targets = torch.randint(3, V, (4, 7), generator=g)
    sup = torch.rand(4, 7, generator=g) < 0.6
    sup[3] = False  # a sample with nothing supervised
    return logits, targets, sup


def naive_papl(logits, targets, sup, *, tau, mix, score):
    z = logits.detach().clone()
    z[..., MASK] = -math.inf
    q = torch.softmax(z, -1)
    total, n_all = 0.0, int(sup.sum())
    weights = torch.zeros(sup.shape)
    for b in range(logits.shape[0]):
        ps = [p for p in range(logits.shape[1]) if sup[b, p]]
        c = {p: float(q[b, p, targets[b, p]] if score == "target" else q[b, p].max()) for p in ps}
        zsum = sum(c[p] ** (1 / tau) for p in ps)
        for p in ps:
            w = (1 - mix) + mix * len(ps) * c[p] ** (1 / tau) / zsum
            weights[b, p] = w
            total = total + w * F.cross_entropy(logits[b, p][None], targets[b, p][None])
    return total / n_all, weights


@pytest.mark.parametrize("score", ["target", "confidence"])
@pytest.mark.parametrize("tau,mix", [(1.0, 1.0), (0.3, 0.5), (4.0, 0.0)])
def test_papl_matches_a_naive_loop_value_and_gradient(score, tau, mix):
    logits, targets, sup = papl_case()
    kw = dict(tau=tau, mix=mix, score=score)
    loss = planner_weighted_ce(logits, targets, sup, mask_token_id=MASK, **kw)
    ref, w_ref = naive_papl(logits, targets, sup, **kw)
    # fp32 like masked_ce (the CE upcasts half precision to fp32, fp64 is cast down)
    torch.testing.assert_close(loss, ref.float(), rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    w = planner_weights(logits, targets, sup, mask_token_id=MASK, **kw)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    assert not w.requires_grad
    for b in range(3):  # mean 1 over each sample's supervised tokens
        assert w[b][sup[b]].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert (w[~sup] == 0).all()


def test_papl_weights_favour_confident_tokens_and_reduce_to_masked_ce():
    logits, targets, sup = papl_case(1)
    w = planner_weights(logits, targets, sup, tau=0.5)
    conf = torch.softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    b = 0
    ps = sup[b].nonzero()[:, 0]
    assert torch.equal(w[b, ps].argsort(), conf[b, ps].argsort())  # monotone in confidence
    plain = masked_ce(logits, targets, sup)
    assert torch.equal(planner_weighted_ce(logits, targets, sup, mix=0.0), plain)
    for bad, match in [
        (dict(tau=0.0), "papl_tau"),
        (dict(mix=1.5), "papl_mix"),
        (dict(score="margin"), "papl_score"),
    ]:
        with pytest.raises(ValueError, match=match):
            planner_weights(logits, targets, sup, **bad)
