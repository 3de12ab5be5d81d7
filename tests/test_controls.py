"""The control objectives' components: PUMA's online reveal order and PAPL's planner weights.

PUMA (arXiv 2602.10314): ``masking.confidence_reveal_order`` against a hand-worked case and a
naive per-row loop; its output is a trajectory ``time_delay_mask`` accepts. PAPL
(arXiv 2509.23405): ``losses.planner_weights`` (what ``compute_objective`` runs) against the
naive per-token loop of ``tests/naive.py`` (the loss itself: ``test_objective_dispatch``).
"""

from __future__ import annotations

import math

import pytest
import torch

from naive import papl_loop
from tabom.losses import planner_weights
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
    logits = torch.randn(4, 7, V, generator=g, dtype=torch.float64).mul(2)
    targets = torch.randint(3, V, (4, 7), generator=g)
    sup = torch.rand(4, 7, generator=g) < 0.6
    sup[3] = False  # a sample with nothing supervised
    return logits, targets, sup


def log_confidence(logits, targets):
    """log q(x_p) with [MASK] left out, as ``tabom.head.loss_terms`` computes it per row."""
    z = logits.clone()
    z[..., MASK] = -math.inf
    return z.log_softmax(-1).gather(-1, targets[..., None])[..., 0]


@pytest.mark.parametrize("tau,mix", [(1.0, 1.0), (0.3, 0.5), (4.0, 0.0)])
def test_papl_weights_match_a_naive_loop(tau, mix):
    logits, targets, sup = papl_case()
    w = planner_weights(log_confidence(logits, targets), sup, tau=tau, mix=mix)
    _, w_ref = papl_loop(logits, targets, sup, tau=tau, mix=mix, mask_token_id=MASK)
    torch.testing.assert_close(w, w_ref.float(), rtol=1e-5, atol=1e-6)
    assert not w.requires_grad and (w[~sup] == 0).all()
    for b in range(3):  # mean 1 over each sample's supervised tokens
        assert w[b][sup[b]].mean().item() == pytest.approx(1.0, rel=1e-5)


def test_papl_weights_favour_confident_tokens_and_vanish_at_mix_0():
    logits, targets, sup = papl_case(1)
    log_c = log_confidence(logits, targets)
    w = planner_weights(log_c, sup, tau=0.5)
    b = 0
    ps = sup[b].nonzero()[:, 0]
    assert torch.equal(w[b, ps].argsort(), log_c[b, ps].argsort())  # monotone in confidence
    assert torch.equal(planner_weights(log_c, sup, mix=0.0), sup.float())  # plain CE weights
