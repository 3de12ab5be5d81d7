"""Decoding (DESIGN §3): unmasking order pinned on hand-computed logits, budgets, trajectories.

A table model returns fixed logits per response position, so each order below is computed by
hand in the comments; a state-dependent fake model checks the vectorised loop against a plain
per-row reference; the random tiny model checks that a padded batch decodes like its rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from tabom.batch_decode import concat_outputs, decode_batches, decode_texts, response_text
from tabom.decoding import (
    DecodeConfig,
    decode,
    filter_logits,
    pad_prompts,
    select_top_k,
    step_schedule,
    steps_for,
    transfer_schedule,
)
from tabom.models import build_tiny

MASK = 2  # [MASK] sits inside the vocabulary, not at its end
REAL = (0, 1, 3, 4)  # V = 5
V = 5
PROMPT = torch.tensor([[4, 1, 0]])

# Four positions whose confidence, margin and entropy orders all differ (probabilities of the
# proposed token first):
#   pos  q                           confidence  margin  sum q log q
#   0    (.50, .25, .20, .05)        .50         .25     -1.1648
#   1    (.55, .40, .05, 0)          .55         .15     -0.8451
#   2    (.60, .15, .15, .10)        .60         .45     -1.1059
#   3    (.65, .25, .05, .05)        .65         .40     -0.9262
# confidence order 3, 2, 1, 0; margin order 2, 3, 0, 1; entropy order 1, 3, 2, 0.
DISTINCT = [
    (0.50, 0.25, 0.20, 0.05),
    (0.55, 0.40, 0.05, 0.0),
    (0.60, 0.15, 0.15, 0.10),
    (0.65, 0.25, 0.05, 0.05),
]
DISTINCT_ENTROPY = [1.1648214, 0.8451133, 1.1058899, 0.9261557]

# Eight positions by confidence alone: the proposed token gets c, the three others (1 - c) / 3.
# confidence order: 5 (.95), 1 (.90), 7 (.80), 3 (.70), 6 (.60), 2 (.50), 4 (.40), 0 (.30).
CONF8 = [0.30, 0.90, 0.50, 0.70, 0.40, 0.95, 0.60, 0.80]


def table(rows: list[tuple[float, ...]], mask_logit: float = 50.0) -> torch.Tensor:
    """``(T, V)`` logits: position j proposes REAL[j % 4]; [MASK] has the largest logit."""
    out = torch.full((len(rows), V), float("-inf"))
    for j, probs in enumerate(rows):
        for i, p in enumerate(probs):
            out[j, REAL[(j + i) % 4]] = math.log(p) if p > 0 else float("-inf")
        out[j, MASK] = mask_logit
    return out


def conf_table(confs: list[float]) -> torch.Tensor:
    return table([(c, (1 - c) / 3, (1 - c) / 3, (1 - c) / 3) for c in confs])


def argmax_tokens(n: int) -> list[int]:
    return [REAL[j % 4] for j in range(n)]


class TableModel:
    """Fixed logits on the last T positions, ``(T, V)`` for every row or ``(B, T, V)``: then
    row b is the row whose prompt is ``prompts[b]`` (the sampler may run a subset of rows)."""

    def __init__(self, logits: torch.Tensor, prompts: torch.Tensor | None = None) -> None:
        self.logits = logits
        self.prompts = prompts
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.inputs.append((ids.clone(), mask.clone()))
        B, L = ids.shape
        T = self.logits.shape[-2]
        out = torch.zeros(B, L, V)
        logits = self.logits
        if logits.dim() == 3:  # the table rows of the rows that run, found by their prompt
            P = self.prompts.shape[1]
            rows = [int((self.prompts == i[:P]).all(-1).nonzero()) for i in ids]
            logits = logits[rows]
        out[:, L - T :] = logits
        return out


def run(logits: torch.Tensor, prompt: torch.Tensor = PROMPT, **kw) -> tuple:
    model = TableModel(logits, prompt)
    cfg = DecodeConfig(gen_length=logits.shape[-2], **kw)
    out = decode(model, prompt, torch.ones_like(prompt), cfg, mask_token_id=MASK)
    return out, model


# ---------------------------------------------------------------- order per score and budget


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("confidence", [3, 2, 1, 0]),  # order 3, 2, 1, 0
        ("margin", [2, 3, 0, 1]),  # order 2, 3, 0, 1
        ("entropy", [3, 0, 2, 1]),  # order 1, 3, 2, 0
    ],
)
def test_one_token_per_step_order_per_score(score, expected):
    out, model = run(table(DISTINCT), steps=4, score=score)
    assert out.decoding_order.tolist() == [expected]
    assert out.response_ids.tolist() == [argmax_tokens(4)]
    assert out.nfe == len(model.inputs) == 4


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("confidence", [1, 1, 0, 0]),  # step 0: {3, 2}, step 1: {1, 0}
        ("margin", [1, 1, 0, 0]),  # step 0: {2, 3}, step 1: {0, 1}
        ("entropy", [1, 0, 1, 0]),  # step 0: {1, 3}, step 1: {2, 0}
    ],
)
def test_two_tokens_per_step_order_per_score(score, expected):
    out, _ = run(table(DISTINCT), steps=2, score=score)
    assert out.decoding_order.tolist() == [expected]
    assert out.nfe == 2


def test_budgets_on_eight_positions():
    # one token per step: the step of position j is its confidence rank
    out, _ = run(conf_table(CONF8), steps=8)
    assert out.decoding_order.tolist() == [[7, 1, 5, 3, 6, 0, 4, 2]]
    # T / 2 steps: two per step, rank // 2
    out, _ = run(conf_table(CONF8), steps=4)
    assert out.decoding_order.tolist() == [[3, 0, 2, 1, 3, 0, 2, 1]]
    # T / 8 = one step: everything at once
    out, _ = run(conf_table(CONF8), steps=1)
    assert out.decoding_order.tolist() == [[0] * 8]


def test_remainder_goes_to_first_steps():
    # T = 5 (.30, .90, .50, .70, .40), 2 steps: 3 then 2; order 1, 3, 2 | 4, 0
    out, _ = run(conf_table(CONF8[:5]), steps=2)
    assert transfer_schedule(5, 2) == [3, 2]
    assert out.decoding_order.tolist() == [[1, 0, 0, 0, 1]]


def test_more_steps_than_masks_counts_zero_commit_steps():
    # T = 4 (.30, .90, .50, .70), 6 steps: schedule 1, 1, 1, 1, 0, 0; order 1, 3, 2, 0
    out, model = run(conf_table(CONF8[:4]), steps=6)
    assert step_schedule(DecodeConfig(gen_length=4, steps=6)) == [1, 1, 1, 1, 0, 0]
    assert out.decoding_order.tolist() == [[3, 0, 2, 1]]
    assert out.nfe == 6  # the budget's steps; the two that commit nothing run no forward
    assert len(model.inputs) == out.row_forwards == 4


def test_semi_autoregressive_blocks():
    # blocks of 4, 8 steps: block 0 (.30, .90, .50, .70) -> 1, 3, 2, 0 at steps 0-3;
    # block 1 (.40, .95, .60, .80) -> 5, 7, 6, 4 at steps 4-7, although position 5 (.95)
    # is the most confident of all
    out, _ = run(conf_table(CONF8), steps=8, block_length=4)
    assert out.decoding_order.tolist() == [[3, 0, 2, 1, 7, 4, 6, 5]]
    d = out.decoding_order[0]
    assert d[:4].max() < d[4:].min()
    # 4 steps: two per step inside each block
    out, _ = run(conf_table(CONF8), steps=4, block_length=4)
    assert out.decoding_order.tolist() == [[1, 0, 1, 0, 3, 2, 3, 2]]
    # blocks of 2 with 3 steps each: schedule 1, 1, 0 per block; the idle steps still count
    out, model = run(conf_table(CONF8[:4]), steps=6, block_length=2)
    assert out.decoding_order.tolist() == [[1, 0, 4, 3]]
    assert out.nfe == 6  # the budget's steps; the two that commit nothing run no forward
    assert len(model.inputs) == out.row_forwards == 4


def test_threshold_one_block():
    # threshold .75: step 0 commits every confidence >= .75: {1, 5, 7}; the logits do not
    # change, so afterwards none passes and the best one goes: 3, 6, 2, 4, 0 -> 6 forwards
    out, model = run(conf_table(CONF8), threshold=0.75)
    assert out.decoding_order.tolist() == [[5, 0, 3, 1, 4, 0, 2, 0]]
    assert out.nfe == len(model.inputs) == 6


def test_threshold_with_blocks():
    # blocks of 4, threshold .75: block 0: {1}, 3, 2, 0 (steps 0-3); block 1: {5, 7}, 6, 4
    out, _ = run(conf_table(CONF8), threshold=0.75, block_length=4, steps=3)  # steps ignored
    assert out.decoding_order.tolist() == [[3, 0, 2, 1, 6, 4, 5, 4]]
    assert out.nfe == 7


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        # threshold .62: step 0 commits 3 (.65) alone; then none of .50/.55/.60 passes and
        # the best by the selected score goes
        ("confidence", [3, 2, 1, 0]),  # 2 (.60), 1 (.55), 0
        ("margin", [2, 3, 1, 0]),  # 2 (.45), 0 (.25 > .15), 1
        ("entropy", [3, 1, 2, 0]),  # 1 (-.845), 2 (-1.106 > -1.165), 0
    ],
)
def test_threshold_fallback_uses_selected_score(score, expected):
    out, _ = run(table(DISTINCT), threshold=0.62, score=score)
    assert out.decoding_order.tolist() == [expected]
    assert out.nfe == 4


def test_threshold_rows_advance_independently():
    # row 0 needs 6 forwards (as above); row 1 is sure everywhere and finishes at step 0
    logits = torch.stack([conf_table(CONF8), conf_table([0.99] * 8)])  # (2, T, V)
    prompt = torch.tensor([[4, 1, 0], [3, 3, 3]])
    out, _ = run(logits, prompt=prompt, threshold=0.75)
    assert out.decoding_order.tolist() == [[5, 0, 3, 1, 4, 0, 2, 0], [0] * 8]
    assert out.nfe == 6


def test_ties_go_to_the_lower_position():
    # every position has the same logits (same token layout, so bit-identical scores)
    same = conf_table([0.5])[0].expand(6, V)
    out, _ = run(same, steps=6)
    assert out.decoding_order.tolist() == [list(range(6))]
    out, _ = run(same, steps=3, score="margin")
    assert out.decoding_order.tolist() == [[0, 0, 1, 1, 2, 2]]
    out, _ = run(same, threshold=0.4, score="entropy")  # all pass at once
    assert out.decoding_order.tolist() == [[0] * 6]
    chosen = select_top_k(
        torch.tensor([[1.0, 2.0, 2.0, 2.0]]),
        torch.tensor([[True, True, False, True]]),
        torch.tensor([2]),
    )
    assert chosen.tolist() == [[False, True, False, True]]


def test_random_score_is_a_seeded_permutation():
    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        model = TableModel(conf_table(CONF8))
        cfg = DecodeConfig(gen_length=8, steps=8, score="random")
        out = decode(model, PROMPT, torch.ones_like(PROMPT), cfg, mask_token_id=MASK, generator=g)
        return out.decoding_order[0].tolist()

    assert order(0) == order(0)
    assert sorted(order(0)) == list(range(8))
    assert order(0) != order(1)


def test_mask_is_never_proposed():
    # [MASK] has logit 50 everywhere, far above every real token; entropies exclude it
    out, _ = run(table(DISTINCT), steps=4, record_entropy=True)
    assert not (out.sequences == MASK).any()
    assert out.response_ids.tolist() == [argmax_tokens(4)]
    torch.testing.assert_close(out.decode_entropy[0], torch.tensor(DISTINCT_ENTROPY))


# ---------------------------------------------------------------- trajectory invariants


@pytest.mark.parametrize(
    "kw",
    [
        dict(steps=8),
        dict(steps=4),
        dict(steps=2),
        dict(steps=12),
        dict(steps=4, block_length=4),
        dict(steps=12, block_length=2),
        dict(threshold=0.75, block_length=4),
    ],
)
def test_decode_step_covers_every_position_once(kw):
    out, model = run(conf_table(CONF8), **kw)
    d = out.decoding_order[0]
    assert (d >= 0).all() and (d < out.nfe).all()  # each position exactly one step
    counts = torch.bincount(d, minlength=out.nfe).tolist()
    cfg = DecodeConfig(gen_length=8, **kw)
    if cfg.threshold is None:
        assert counts == step_schedule(cfg)
    assert sum(counts) == 8
    # the state fed at step i shows exactly the tokens committed before i; nothing remasked
    # (a forward runs at the steps whose block still has a masked position: a block
    # schedule's steps that commit nothing run none)
    final = out.response_ids[0]
    if cfg.threshold is None:
        Lb, per_block = cfg.block_size, cfg.resolve().steps // cfg.n_blocks
        ran = [i for i in range(out.nfe) if (d[i // per_block * Lb :][:Lb] >= i).any()]
    else:
        ran = list(range(out.nfe))
    assert len(ran) == len(model.inputs) == out.row_forwards
    for i, (ids, mask) in zip(ran, model.inputs, strict=True):
        resp = ids[0, PROMPT.shape[1] :]
        done = d < i
        assert (resp[done] == final[done]).all() and (resp[~done] == MASK).all()
        assert mask.tolist() == [[1] * (PROMPT.shape[1] + 8)]


class ContextModel:
    """State-dependent row-wise logits: E[x_j] + F[x_(j-1)] + H[x_(j+1)] + G[j] + K[row sum % 7]."""

    def __init__(self, seed: int = 0, length: int = 32, scale: float = 0.6) -> None:
        g = torch.Generator().manual_seed(seed)
        self.E, self.F, self.H = (scale * torch.randn(V, V, generator=g) for _ in range(3))
        self.G = scale * torch.randn(length, V, generator=g)
        self.K = scale * torch.randn(7, V, generator=g)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([ids[:, :1], ids[:, :-1]], dim=1)
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
        context = (ids * mask).sum(dim=1) % 7  # (B,)
        return (
            self.E[ids]
            + self.F[prev]
            + self.H[nxt]
            + self.G[: ids.shape[1]]
            + self.K[context, None]
        )


def naive_decode(model, ids, mask, cfg: DecodeConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Plain per-row, per-position reference of :func:`decode` at temperature 0."""
    cfg = cfg.resolve()  # the steps of the budget (unused in threshold mode)
    T, Lb, P = cfg.gen_length, cfg.block_size, ids.shape[1]
    tokens_out, steps_out = [], []
    for b in range(ids.shape[0]):
        x = torch.cat([ids[b], torch.full((T,), MASK)]).unsqueeze(0)
        a = torch.cat([mask[b], torch.ones(T, dtype=mask.dtype)]).unsqueeze(0)
        steps, step = [-1] * T, 0
        for blk in range(cfg.n_blocks):
            block = range(blk * Lb, (blk + 1) * Lb)
            n_block_steps = cfg.steps // cfg.n_blocks
            block_step = 0
            while True:
                todo = [p for p in block if steps[p] < 0]
                if cfg.threshold is None and block_step == n_block_steps:
                    break
                if cfg.threshold is not None and not todo:
                    break
                logits = model(x, a)[0, P:].clone()
                logits[:, MASK] = float("-inf")
                q = logits.softmax(-1)
                score = {}
                for p in todo:
                    top = sorted(q[p].tolist(), reverse=True)
                    score[p] = {
                        "confidence": top[0],
                        "margin": top[0] - top[1],
                        "entropy": sum(v * math.log(v) for v in top if v > 0),
                    }[cfg.score]
                ranked = sorted(todo, key=lambda p: (-score[p], p))
                if cfg.threshold is None:
                    m, s = Lb, n_block_steps
                    chosen = ranked[: m // s + (block_step < m % s)]
                else:
                    chosen = [p for p in todo if q[p].max() >= cfg.threshold] or ranked[:1]
                for p in chosen:
                    x[0, P + p] = int(q[p].argmax())
                    steps[p] = step
                step += 1
                block_step += 1
        tokens_out.append(x[0, P:].tolist())
        steps_out.append(steps)
    return tokens_out, steps_out


@pytest.mark.parametrize("score", ["confidence", "margin", "entropy"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(steps=12),
        dict(steps=5),
        dict(steps=6, block_length=4),
        dict(steps=9, block_length=4),
        dict(threshold=0.65),
        dict(threshold=0.5, block_length=4),
    ],
)
def test_vectorised_matches_naive_reference(score, kw):
    model = ContextModel()
    ids, mask = pad_prompts([[4, 1], [3, 0, 4, 1, 1], [1]], pad_token_id=0)
    cfg = DecodeConfig(gen_length=12, score=score, **kw)
    out = decode(model, ids, mask, cfg, mask_token_id=MASK)
    tokens, steps = naive_decode(model, ids, mask, cfg)
    assert out.response_ids.tolist() == tokens
    assert out.decoding_order.tolist() == steps


# ---------------------------------------------------------------- sampling


def test_temperature_sampling_is_reproducible_and_top_p_tiny_is_argmax():
    def sample(seed: int, **kw):
        g = torch.Generator().manual_seed(seed)
        cfg = DecodeConfig(gen_length=8, steps=8, temperature=1.0, **kw)
        model = TableModel(conf_table(CONF8))
        return decode(model, PROMPT, torch.ones_like(PROMPT), cfg, mask_token_id=MASK, generator=g)

    a, b = sample(0), sample(0)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.decoding_order, b.decoding_order)
    assert not (a.sequences == MASK).any()
    assert sample(0, top_p=1e-6).response_ids.tolist() == [argmax_tokens(8)]
    assert sample(3, top_k=1).response_ids.tolist() == [argmax_tokens(8)]
    # at temperature 1 the .30 positions are sampled away from the argmax for some seed
    assert any(sample(s).response_ids.tolist() != [argmax_tokens(8)] for s in range(5))


def test_filter_logits():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    kept = lambda **kw: torch.isfinite(filter_logits(logits, **kw)).tolist()  # noqa: E731
    assert kept(top_p=0.75) == [True, True, False]  # .5 < .75, .5 + .3 reaches it
    assert kept(top_p=0.85) == [True, True, True]
    assert kept(top_p=0.4) == [True, False, False]  # the best always stays
    assert kept(top_k=2) == [True, True, False]
    assert kept(top_k=2, top_p=0.4) == [True, False, False]


# ---------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


PROMPTS = ["12+345=", "7+8=", "1234+56789="]


@pytest.mark.parametrize(
    "kw",
    [
        dict(steps=8, score="confidence"),
        dict(steps=4, block_length=4, score="entropy"),
        dict(steps=8, score="margin"),
        dict(threshold=0.0162, block_length=4, score="confidence"),
    ],
)
def test_batch_decodes_like_rows(tiny, kw):
    cfg = DecodeConfig(gen_length=8, **kw)
    encoded = [tiny.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    ids, mask = pad_prompts(encoded, tiny.spec.pad_token_id)
    assert (ids[1, :-4] == tiny.spec.pad_token_id).all() and mask[1].tolist()[:-4] == [0] * 7
    batch = decode(tiny, ids, mask, cfg, mask_token_id=tiny.mask_token_id)
    nfes = []
    for row, e in enumerate(encoded):
        one = torch.tensor([e])
        alone = decode(tiny, one, torch.ones_like(one), cfg, mask_token_id=tiny.mask_token_id)
        assert torch.equal(alone.response_ids[0], batch.response_ids[row])
        assert torch.equal(alone.decoding_order[0], batch.decoding_order[row])
        nfes.append(alone.nfe)
    assert batch.nfe == max(nfes)
    assert batch.prompt_length == ids.shape[1]
    assert torch.equal(batch.prompt_ids, ids)


def test_decode_texts_and_response_text(tiny):
    cfg = DecodeConfig(gen_length=8, steps=4, record_entropy=True)
    texts, out = decode_texts(tiny, PROMPTS, cfg, batch_size=2)  # batches of width 7 and 11
    texts_one, out_one = decode_texts(tiny, PROMPTS, cfg, batch_size=3)
    assert texts == texts_one and out.nfe == 8 and out_one.nfe == 4
    assert torch.equal(out.sequences, out_one.sequences)
    assert torch.equal(out.decoding_order, out_one.decoding_order)
    assert out.decode_entropy is not None and out.decode_entropy.shape == (3, 8)
    tok, eos = tiny.tokenizer, tiny.spec.eos_token_id
    ab = tok("ab", add_special_tokens=False)["input_ids"]
    c = tok("c", add_special_tokens=False)["input_ids"]
    assert response_text(tok, ab + [eos] + c, eos) == "ab"
    assert response_text(tok, torch.tensor(ab + [tiny.spec.pad_token_id]), eos) == "ab"
    assert response_text(tok, [eos] + ab, eos) == ""


def test_concat_outputs_pads_prompts_left():
    a, _ = run(conf_table(CONF8[:4]), steps=4)
    b, _ = run(conf_table(CONF8[:4]), prompt=torch.tensor([[4]]), steps=4)
    out = concat_outputs([a, b], pad_token_id=0)
    assert out.prompt_length == 3 and out.nfe == 8
    assert out.sequences[1, :3].tolist() == [0, 0, 4]
    assert out.attention_mask[1].tolist() == [0, 0] + [1] * 5


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(gen_length=0), "gen_length"),
        (dict(steps=0), "steps"),
        (
            dict(gen_length=32, block_length=5),
            r"gen_length \(32\) must be divisible by block_length \(5\)",
        ),
        (
            dict(gen_length=24, block_length=8, steps=10),
            r"steps \(10\) must be divisible by the number of blocks \(3\)",
        ),
        (dict(block_length=0), "block_length"),
        (dict(score="lowest"), "score"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
    ],
)
def test_config_validation_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        DecodeConfig(**kw)


def test_threshold_ignores_steps_divisibility():
    cfg = DecodeConfig(gen_length=24, block_length=8, steps=10, threshold=0.9)
    with pytest.raises(ValueError, match="threshold"):
        step_schedule(cfg)


def test_decode_rejects_bad_inputs():
    cfg = DecodeConfig(gen_length=4, steps=4)
    model = TableModel(table(DISTINCT))
    with pytest.raises(ValueError, match="prompt_mask"):
        decode(model, PROMPT, torch.ones(1, 2, dtype=torch.long), cfg, mask_token_id=MASK)
    with pytest.raises(ValueError, match="logits"):
        decode(
            lambda i, m: torch.zeros(1, 2, V),
            PROMPT,
            torch.ones_like(PROMPT),
            cfg,
            mask_token_id=MASK,
        )
    with pytest.raises(ValueError, match="NaN"):
        decode(
            lambda i, m: torch.full((*i.shape, V), float("nan")),
            PROMPT,
            torch.ones_like(PROMPT),
            cfg,
            mask_token_id=MASK,
        )


def test_pad_prompts_left():
    ids, mask = pad_prompts([[5, 6], [7], []], pad_token_id=0)
    assert ids.tolist() == [[5, 6], [0, 7], [0, 0]]
    assert mask.tolist() == [[1, 1], [0, 1], [0, 0]]
    with pytest.raises(ValueError):
        pad_prompts([], pad_token_id=0)


# ---------------------------------------------------------------- budgets and forwards per row


@pytest.mark.parametrize(
    ("T", "tps", "block", "steps"),
    [
        (8, 1, None, 8),  # one token per step
        (8, 2, None, 4),
        (8, 3, None, 3),  # ceil(8 / 3)
        (8, 16, None, 1),  # at least one step
        (8, 3, 4, 4),  # ceil(8 / 3) = 3, rounded up to 2 blocks: 4
        (6, 2, 3, 4),  # 3 steps, rounded up to 2 blocks: 4 (2 per block)
        (8, 8, 2, 4),  # 1 step, but 4 blocks need one each
        (8, 1, 8, 8),  # one block of T
    ],
)
def test_steps_for_hand_cases(T, tps, block, steps):
    assert steps_for(T, tps, block) == steps
    cfg = DecodeConfig(gen_length=T, steps=steps, block_length=block)  # always a valid budget
    assert max(step_schedule(cfg)) <= tps  # no step commits more than tokens_per_step


def test_steps_for_names_the_bad_setting():
    with pytest.raises(ValueError, match="tokens_per_step must be >= 1, got 0"):
        steps_for(8, 0)
    with pytest.raises(
        ValueError, match=r"block_length \(3\) must divide the response length \(8\)"
    ):
        steps_for(8, 1, 3)
    with pytest.raises(ValueError, match=r"block_length \(16\) must divide"):
        steps_for(8, 1, 16)  # longer than T: no ZeroDivisionError
    with pytest.raises(ValueError, match="block_length"):
        steps_for(8, 1, 0)


def test_forwards_per_row_is_steps_in_fixed_mode(tiny):
    encoded = [tiny.encode_prompt(p) for p in PROMPTS]
    for steps in (8, 4):  # one and two tokens per step
        cfg = DecodeConfig(gen_length=8, steps=steps)
        out = decode_batches(tiny, encoded, cfg, batch_size=2)
        assert out.forwards_per_row.tolist() == [steps] * 3
        assert out.nfe == 2 * steps  # forwards of the two batches


def test_forwards_per_row_is_the_last_commit_in_threshold_mode(tiny):
    encoded = [tiny.encode_prompt(p) for p in PROMPTS]
    cfg = DecodeConfig(gen_length=8, threshold=0.3, block_length=4)
    batch = decode_batches(tiny, encoded, cfg, batch_size=3)
    assert torch.equal(batch.forwards_per_row, batch.decoding_order.max(dim=-1).values + 1)
    alone = decode_batches(tiny, encoded, cfg, batch_size=1)  # each row its own batch
    assert torch.equal(alone.forwards_per_row, batch.forwards_per_row)  # batch-independent
    assert alone.nfe == int(alone.forwards_per_row.sum())
    assert batch.nfe == int(batch.forwards_per_row.max())


def test_decode_batches_keeps_prompt_order_and_rejects_bad_calls(tiny):
    cfg = DecodeConfig(gen_length=8, steps=8)
    texts, out = decode_texts(tiny, PROMPTS, cfg, batch_size=2)
    encoded = [tiny.encode_prompt(p) for p in PROMPTS]
    again = decode_batches(tiny, encoded, cfg, batch_size=2)
    assert torch.equal(again.sequences, out.sequences) and again.nfe == out.nfe
    with pytest.raises(ValueError, match="at least one prompt"):
        decode_batches(tiny, [], cfg)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        decode_batches(tiny, encoded, cfg, batch_size=0)


@pytest.mark.parametrize("score", ["entropy", "confidence", "margin"])
def test_recorded_entropy_matches_the_proposal(tiny, score):
    # the entropy recorded at commit is the proposal's at that step, whatever the score
    cfg = DecodeConfig(gen_length=8, steps=8, score=score, record_entropy=True)
    ids, mask = pad_prompts([tiny.encode_prompt(PROMPTS[0])], tiny.spec.pad_token_id)
    out = decode(tiny, ids, mask, cfg, mask_token_id=tiny.mask_token_id)
    assert out.decode_entropy is not None
    assert bool((out.decode_entropy >= 0).all())
    x = torch.cat([ids, torch.full((1, 8), tiny.mask_token_id)], dim=1)
    attn = torch.ones_like(x)
    for step in range(8):
        logits = tiny(x, attn)[0, ids.shape[1] :].float()
        logits[:, tiny.mask_token_id] = float("-inf")
        q = logits.softmax(-1)
        pos = int((out.decoding_order[0] == step).nonzero()[0])
        h = -torch.special.xlogy(q[pos], q[pos]).sum()
        assert out.decode_entropy[0, pos].item() == pytest.approx(h.item(), abs=1e-5)
        x[0, ids.shape[1] + pos] = out.response_ids[0, pos]


def test_the_label_names_the_budget_and_every_other_field_that_differs():
    base = DecodeConfig(temperature=1.0)
    assert base.label(base) == "confidence@1"
    assert DecodeConfig(score="entropy", tokens_per_step=3).label() == "entropy@3"
    assert DecodeConfig(steps=64).label() == "confidence@s64"
    assert DecodeConfig(threshold=0.9).label() == "confidence@t0.9"
    # any other recorded field, read from the dataclass: a new one needs no edit here
    other = {"block_length": 4, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "cache": "dual"}
    labels = {"confidence@1"}
    for name, value in other.items():
        label = DecodeConfig(**{"temperature": 1.0, name: value}).label(base)
        assert label.startswith("confidence@1,") and label.endswith(f"{name}={value}")
        labels.add(label)
    assert len(labels) == len(other) + 1
    # the budgets of tabom eval: score x tokens per step, one label each
    from tabom.commands.eval import EvalConfig

    cfg = EvalConfig(budget_tokens_per_step=[1, 2], budget_scores=["confidence", "margin"],
                     decode=DecodeConfig(top_k=5))  # fmt: skip
    assert list(cfg.budgets()) == ["confidence@1", "confidence@2", "margin@1", "margin@2"]
