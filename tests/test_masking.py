"""Random and time-delay masking (DESIGN §5): invariants, reproducibility, uncut samples."""

from __future__ import annotations

import pytest
import torch

from tabom.masking import random_mask, time_delay_mask, window_mask

MASK = 2


def trajectory_batch(
    steps: list[int], *, per_step: int = 1, length: int = 24, response: int = 12, seed: int = 0
):
    """Left-padded [pad | prompt | response] rows with a random decode order per row.

    Row b's response is decoded in ``steps[b]`` steps of ``per_step`` tokens (random order);
    response positions beyond ``steps[b] * per_step`` are never decoded (d = -1).
    """
    g = torch.Generator().manual_seed(seed)
    b = len(steps)
    ids = torch.randint(4, 50, (b, length), generator=g)
    resp = torch.zeros(b, length, dtype=torch.bool)
    decoding_order = torch.full((b, length), -1, dtype=torch.long)
    for row, n_steps in enumerate(steps):
        pad = row % 3  # a different left pad per row
        ids[row, :pad] = 0
        start = length - response
        resp[row, start:] = True
        order = torch.randperm(response, generator=g)
        d = torch.arange(response) // per_step
        d[d >= n_steps] = -1
        decoding_order[row, start + order] = d
    return ids, resp, decoding_order


def test_random_mask_only_touches_the_response_and_is_reproducible():
    ids = torch.randint(4, 50, (64, 20))
    resp = torch.zeros(64, 20, dtype=torch.bool)
    resp[:, 8:] = True
    resp[:5, 8:12] = False  # some samples with a shorter response region
    plan = random_mask(ids, resp, mask_token_id=MASK, generator=torch.Generator().manual_seed(1))
    again = random_mask(ids, resp, mask_token_id=MASK, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plan.input_ids, again.input_ids) and torch.equal(plan.t, again.t)
    assert not plan.supervise[~resp].any()
    assert torch.equal(plan.input_ids[~plan.supervise], ids[~plan.supervise])
    assert (plan.input_ids[plan.supervise] == MASK).all()
    assert plan.cut is None and plan.n_uncut == 0
    # the share of masked response tokens follows t: correlation over samples is strong
    share = (plan.supervise.sum(1) / resp.sum(1)).float()
    assert torch.corrcoef(torch.stack([share, plan.t]))[0, 1] > 0.8
    other = random_mask(ids, resp, mask_token_id=MASK, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(plan.supervise, other.supervise)


@pytest.mark.parametrize("per_step", [1, 2])
def test_time_delay_mask_reveals_before_the_cut_and_supervises_the_window(per_step):
    m = 3
    ids, resp, ds = trajectory_batch([12, 9, 6, 5, 4, 3, 2], per_step=per_step)
    plan = time_delay_mask(
        ids,
        ds,
        response_mask=resp,
        window=m,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(0),
    )
    s_max = ds.max(1).values
    s = plan.cut[:, None]
    assert torch.equal(plan.valid, s_max >= m) and torch.equal(plan.cut >= 0, plan.valid)
    assert plan.n_uncut == int((s_max < m).sum()) > 0
    v = plan.valid
    assert ((plan.cut[v] >= 0) & (plan.cut[v] <= s_max[v] - m)).all()
    # revealed (clean, not [MASK]) exactly where 0 ≤ d < s; every other response position masked
    revealed = (ds >= 0) & (ds < s) & v[:, None]
    assert torch.equal(plan.input_ids[revealed], ids[revealed])
    assert (plan.input_ids[resp & ~revealed] == MASK).all()
    # supervised exactly s ≤ d < s + M; nothing for uncut samples; d = s_max never
    assert torch.equal(plan.supervise, (ds >= s) & (ds < s + m) & v[:, None])
    assert not plan.supervise[~v].any()
    assert not (plan.supervise & (ds == s_max[:, None])).any()
    # prompt and pad untouched
    assert torch.equal(plan.input_ids[~resp], ids[~resp])
    torch.testing.assert_close(plan.t, ((resp & ~revealed).sum(1) / resp.sum(1)).float())


def test_time_delay_mask_is_reproducible_and_covers_every_cut_uniformly():
    ids, resp, ds = trajectory_batch([10] * 400)
    m = 4  # s ∈ {0, …, 9 − 4}: 6 values
    kw = dict(response_mask=resp, window=m, mask_token_id=MASK)
    a = time_delay_mask(ids, ds, generator=torch.Generator().manual_seed(3), **kw)
    b = time_delay_mask(ids, ds, generator=torch.Generator().manual_seed(3), **kw)
    c = time_delay_mask(ids, ds, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.cut, b.cut)
    assert torch.equal(a.supervise, b.supervise)
    assert not torch.equal(a.cut, c.cut)
    counts = torch.bincount(a.cut, minlength=6)
    assert counts.numel() == 6 and (counts > 400 / 6 * 0.6).all()


def test_time_delay_mask_reports_uncut_samples():
    # s_max = steps - 1: 3 < M = 4 uncut; 4 steps (s_max = 3) is still uncut; 5 steps cut at 0
    ids, resp, ds = trajectory_batch([4, 5, 3, 0])
    plan = time_delay_mask(ids, ds, response_mask=resp, window=4, mask_token_id=MASK)
    assert plan.valid.tolist() == [False, True, False, False]
    assert plan.cut.tolist() == [-1, 0, -1, -1] and plan.n_uncut == 3
    assert plan.supervise.sum(1).tolist() == [0, 4, 0, 0]
    assert (plan.input_ids[resp] == MASK).all()  # uncut rows keep a fully masked response


def test_time_delay_mask_rejects_steps_outside_the_response():
    ids, resp, ds = trajectory_batch([6])
    ds[0, 0] = 1  # a decode step on the pad / prompt
    with pytest.raises(ValueError, match="outside response_mask"):
        time_delay_mask(ids, ds, response_mask=resp, window=2, mask_token_id=MASK)


def test_token_window_unit():
    # one token per step: tokens and steps coincide
    ids, resp, ds = trajectory_batch([12, 8, 3])
    kw = dict(response_mask=resp, window=3, mask_token_id=MASK)
    steps = time_delay_mask(ids, ds, generator=torch.Generator().manual_seed(5), **kw)
    toks = time_delay_mask(
        ids, ds, generator=torch.Generator().manual_seed(5), window_unit="tokens", **kw
    )
    assert torch.equal(steps.supervise, toks.supervise) and torch.equal(steps.cut, toks.cut)
    # two tokens per step: exactly M tokens, the first M in (d, position) order after the cut
    ids, resp, ds = trajectory_batch([6, 6, 1], per_step=2)
    plan = time_delay_mask(
        ids,
        ds,
        response_mask=resp,
        window=3,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(1),
        window_unit="tokens",
    )
    assert plan.valid.tolist() == [True, True, False]
    for row in range(2):
        s = int(plan.cut[row])
        after = sorted((int(ds[row, p]), p) for p in range(ds.shape[1]) if ds[row, p] >= s)
        assert plan.supervise[row].nonzero().flatten().tolist() == sorted(p for _, p in after[:3])
    window = window_mask(ds, torch.tensor([0, 1, -1]), width=3, unit="tokens")
    assert window.sum(1).tolist() == [3, 3, 0]


def test_inclusive_cut_range_adds_the_last_window_and_supervises_the_last_step():
    ids, resp, ds = trajectory_batch([10] * 400)  # s_max = 9, M = 4
    kw = dict(response_mask=resp, window=4, mask_token_id=MASK)
    design = time_delay_mask(ids, ds, generator=torch.Generator().manual_seed(3), **kw)
    incl = time_delay_mask(
        ids, ds, generator=torch.Generator().manual_seed(3), cut_range="inclusive", **kw
    )
    assert int(design.cut.max()) == 5 and int(incl.cut.max()) == 6  # {0..5} vs {0..6}
    last = ds == 9
    assert not (design.supervise & last).any()  # the design range never reaches s_max
    assert (incl.supervise & last).any()
    # same invariants: revealed exactly d < s, supervised exactly s <= d < s + M
    s = incl.cut[:, None]
    assert torch.equal(incl.input_ids != MASK, ~resp | ((ds >= 0) & (ds < s)))
    assert torch.equal(incl.supervise, (ds >= s) & (ds < s + 4))
    # a trajectory of exactly M steps (s_max = M - 1) can now be cut, at 0
    ids, resp, ds = trajectory_batch([4, 3])
    plan = time_delay_mask(
        ids, ds, response_mask=resp, window=4, mask_token_id=MASK, cut_range="inclusive"
    )
    assert plan.cut.tolist() == [0, -1] and plan.n_uncut == 1


def test_inclusive_cut_range_in_token_units():
    ids, resp, ds = trajectory_batch([12])  # 12 tokens decoded, one per step
    kw = dict(response_mask=resp, window=3, mask_token_id=MASK, window_unit="tokens")
    cuts = {
        rng: {
            int(
                time_delay_mask(
                    ids, ds, generator=torch.Generator().manual_seed(i), cut_range=rng, **kw
                ).cut
            )
            for i in range(200)
        }
        for rng in ("design", "inclusive")
    }
    assert cuts["design"] == set(range(9)) and cuts["inclusive"] == set(range(10))
