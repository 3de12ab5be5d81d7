"""Random masking and masked CE: invariants and agreement with F.cross_entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tabom.losses import masked_ce
from tabom.masking import random_mask


def _batch():
    ids = torch.randint(4, 50, (64, 20))
    resp = torch.zeros(64, 20, dtype=torch.bool)
    resp[:, 8:] = True
    resp[:5, 8:12] = False  # some samples with a shorter response region
    return ids, resp


def test_random_mask_only_touches_the_response_and_is_reproducible():
    ids, resp = _batch()
    plan = random_mask(ids, resp, mask_token_id=2, generator=torch.Generator().manual_seed(1))
    again = random_mask(ids, resp, mask_token_id=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plan.input_ids, again.input_ids) and torch.equal(plan.t, again.t)
    assert not plan.supervise[~resp].any()
    assert torch.equal(plan.input_ids[~plan.supervise], ids[~plan.supervise])
    assert (plan.input_ids[plan.supervise] == 2).all()
    # the share of masked response tokens follows t: correlation over samples is strong
    share = (plan.supervise.sum(1) / resp.sum(1)).float()
    assert torch.corrcoef(torch.stack([share, plan.t]))[0, 1] > 0.8
    other = random_mask(ids, resp, mask_token_id=2, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(plan.supervise, other.supervise)


def test_masked_ce_equals_cross_entropy_on_supervised_positions():
    logits = torch.randn(3, 7, 11, requires_grad=True)
    targets = torch.randint(0, 11, (3, 7))
    sup = torch.rand(3, 7) < 0.4
    sup[0, 0] = True
    ours = masked_ce(logits, targets, sup)
    ref = F.cross_entropy(logits[sup], targets[sup])
    torch.testing.assert_close(ours, ref)
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
