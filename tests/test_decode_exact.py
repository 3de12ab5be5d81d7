"""Exact savings of the sampler (issue 18): rows that have nothing left to commit leave the
forward, prompts are grouped by length, one host sync per step, and the approximate KV caches.

``reference_decode`` below is ``tabom.decoding.decode`` as it was before issue 18, verbatim
(renamed): every row runs every forward. The new sampler must give the same tokens, decode
steps, forwards and recorded entropies, bit for bit, on every score, budget and sampling
setting, on both tiny families (unshifted and Dream-style shifted logits).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tabom.batch_decode import concat_outputs, decode_batches
from tabom.decoding import (
    DecodeConfig,
    DecodeOutput,
    _to_block,
    decode,
    pad_prompts,
    propose,
    score_proposals,
    select_top_k,
    step_schedule,
)
from tabom.head import HeadModel, as_head_model, logits_at
from tabom.models import TinyModelConfig, build_tiny
from tabom.models.base import DiffusionLM

SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15], [16, 17, 18, 19]]


def sharpened(dlm: DiffusionLM) -> DiffusionLM:
    """A random model with peaked proposals (head weights x 30): thresholds pass at different
    steps for different rows (rows leave at different times), and scores are not near-ties."""
    with torch.no_grad():
        dlm.model.get_output_embeddings().weight.mul_(30)
    return dlm


@pytest.fixture(scope="module")
def models() -> dict[str, DiffusionLM]:
    return {
        "tiny": sharpened(build_tiny(SMALL, seed=1)),
        "tiny-dream": sharpened(build_tiny(dataclasses.replace(SMALL, family="qwen2"), seed=2)),
    }


# ------------------------------------------------------------------ the sampler before issue 18


@torch.no_grad()
def reference_decode(
    model: HeadModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    cfg: DecodeConfig,
    *,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> DecodeOutput:
    """Decode a batch of left-padded prompts and record when each response token is committed.

    Each row is independent: it commits its own k positions (its own block in threshold
    mode), so a row decodes the same alone or in a padded batch when the model is row-wise.

    Args:
        model: a :class:`~tabom.head.HeadModel` (a :class:`~tabom.models.base.DiffusionLM`:
            the head runs only at the still-masked positions of the current block) or any
            ``(input_ids, attention_mask) -> logits (B, L, V)`` aligned so that
            ``logits[:, j]`` predicts token j. Both give the same tokens and steps.
        prompt_ids: ``(B, P)`` left-padded prompts.
        prompt_mask: ``(B, P)`` 1 on prompt tokens, 0 on padding.
        cfg: budget, score and proposal settings.
        mask_token_id: id of [MASK]; its logit is set to ``-inf`` so it is never proposed.
        generator: all randomness (sampling, ``random`` score); on the model's device.

    Returns:
        A :class:`DecodeOutput`; ``nfe`` is ``cfg.steps`` in fixed-budget mode, the forwards
        until every row is full in threshold mode.

    Raises:
        ValueError: mismatched prompt shapes, or logits of the wrong shape or with NaN.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(
            f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} "
            "must be the same (B, P) shape"
        )
    B, P = prompt_ids.shape
    cfg = cfg.resolve()  # raises when T is unset
    T, Lb = cfg.gen_length, cfg.block_size
    device = prompt_ids.device

    # 1) the state: prompt followed by T masks; the trajectory starts at -1
    x = torch.cat([prompt_ids, prompt_ids.new_full((B, T), mask_token_id)], dim=1)  # (B, P+T)
    attn = torch.cat([prompt_mask, prompt_mask.new_ones((B, T))], dim=1)  # (B, P+T)
    response = x[:, P:]  # (B, T) view: writing it writes x
    decoding_order = torch.full((B, T), -1, dtype=torch.long, device=device)
    entropy = torch.full((B, T), float("nan"), device=device) if cfg.record_entropy else None
    offsets = torch.arange(Lb, device=device)  # (Lb,)
    head_model = as_head_model(model)

    fixed = cfg.threshold is None
    schedule = step_schedule(cfg) if fixed else []
    steps_per_block = cfg.steps // cfg.n_blocks
    step = 0
    while True:
        # 2) the current block of each row: by step count in fixed-budget mode, else the
        #    block of the row's first masked position (rows advance on their own)
        if fixed:
            if step == cfg.steps:
                break
            start = torch.full((B,), (step // steps_per_block) * Lb, device=device)
        else:
            masked = decoding_order < 0  # (B, T)
            if not bool(masked.any()):
                break
            start = masked.long().argmax(dim=-1) // Lb * Lb  # full rows: block 0, no candidates
        pos = start.unsqueeze(-1) + offsets  # (B, Lb) response positions of the current block

        # 3) one forward to the hidden states; the head, proposals and scores only at the
        #    still-masked positions of the block (N of B x Lb), [MASK] never proposed
        hidden = head_model.hidden_states(x, attn)  # (B, P+T, H)
        if hidden.dim() != 3 or hidden.shape[:2] != x.shape:
            raise ValueError(
                f"model returned logits {tuple(hidden.shape)} for input {tuple(x.shape)}"
            )
        candidates = decoding_order.gather(1, pos) < 0  # (B, Lb) still masked
        b_idx, j_idx = candidates.nonzero(as_tuple=True)  # (N,) each, row-major
        cand_logits = logits_at(head_model, hidden, b_idx, P + pos[b_idx, j_idx]).float()
        cand_logits[:, mask_token_id] = float("-inf")  # (N, V)
        tokens_c, q = propose(
            cand_logits,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            generator=generator,
            noise_rows=(b_idx * Lb + j_idx, B * Lb),  # the same draws as a whole-block proposal
        )  # (N,), (N, V)
        # q(token) and sum q log q once per step, shared by the score, threshold and record
        confidence = neg_entropy = None
        if cfg.score == "confidence" or not fixed:
            confidence = q.gather(-1, tokens_c.unsqueeze(-1)).squeeze(-1)  # (N,)
        if cfg.score == "entropy" or entropy is not None:
            neg_entropy = torch.special.xlogy(q, q).sum(dim=-1)  # (N,), 0 log 0 = 0
        if cfg.score == "confidence":
            scores_c = confidence
        elif cfg.score == "entropy":
            scores_c = neg_entropy
        elif cfg.score == "random":  # drawn for the whole block: the stream does not depend on N
            scores_c = torch.rand((B, Lb), generator=generator, device=device)[b_idx, j_idx]
        else:
            scores_c = score_proposals(q, tokens_c, cfg.score, generator=generator)  # (N,)
        if bool(torch.isnan(scores_c).any()):
            raise ValueError(f"decode step {step}: the model's logits give NaN scores")

        where = (b_idx, j_idx)
        scores = _to_block(scores_c, where, (B, Lb), 0.0)  # (B, Lb)
        tokens = _to_block(tokens_c, where, (B, Lb), mask_token_id)  # (B, Lb)

        # 4) choose: the schedule's k best, or every confident one (at least the best)
        if fixed:
            k = torch.full((B,), schedule[step], dtype=torch.long, device=device)
            commit = select_top_k(scores, candidates, k)  # (B, Lb)
        else:
            passed = candidates & (_to_block(confidence, where, (B, Lb), 0.0) >= cfg.threshold)
            best = select_top_k(scores, candidates, torch.ones(B, dtype=torch.long, device=device))
            commit = passed | (best & ~passed.any(dim=-1, keepdim=True))

        # 5) write the committed tokens and their step; never touch committed positions
        response.scatter_(1, pos, torch.where(commit, tokens, response.gather(1, pos)))
        decoding_order.scatter_(1, pos, torch.where(commit, step, decoding_order.gather(1, pos)))
        if entropy is not None:
            h = -_to_block(neg_entropy, where, (B, Lb), 0.0)  # (B, Lb)
            entropy.scatter_(1, pos, torch.where(commit, h, entropy.gather(1, pos)))
        step += 1

    return DecodeOutput(
        sequences=x,
        decoding_order=decoding_order,
        nfe=step,
        prompt_length=P,
        attention_mask=attn,
        decode_entropy=entropy,
    )



# ------------------------------------------------------------------ identical outputs

BUDGETS = [
    dict(steps=12),
    dict(steps=4),  # three tokens a step
    dict(steps=21, block_length=4),  # more steps than masks: steps with nothing to commit
    dict(steps=6, block_length=6),
    dict(threshold=0.05),
    dict(threshold=0.3, block_length=4),  # rows advance and finish on their own
    dict(steps=6, temperature=1.0, top_p=0.9),
    dict(steps=24, block_length=6, temperature=0.7, top_k=5),  # zero-commit steps, sampled
    dict(threshold=0.2, block_length=4, temperature=1.0),
    dict(threshold=0.5, temperature=1.5, top_k=8, top_p=0.8),
]


def budget_id(b: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in b.items())


def run_both(dlm, cfg, seed=9):
    ids, mask = pad_prompts(PROMPTS, dlm.spec.pad_token_id)
    batches: list[int] = []
    hidden_states = dlm.hidden_states

    def recording(input_ids, attention_mask=None, **kw):
        batches.append(input_ids.shape[0])
        return hidden_states(input_ids, attention_mask, **kw)

    dlm.hidden_states = recording  # instance attribute: this call only
    try:
        new = decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id,
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
    finally:
        del dlm.hidden_states
    old = reference_decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id,
                           generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return new, old, batches


@pytest.mark.parametrize("kind", ["tiny", "tiny-dream"])
@pytest.mark.parametrize("score", ["confidence", "margin", "entropy", "random"])
@pytest.mark.parametrize("budget", BUDGETS, ids=budget_id)
def test_rows_leaving_the_batch_change_nothing(models, kind, score, budget, one_thread):
    dlm = models[kind]
    cfg = DecodeConfig(gen_length=12, score=score, record_entropy=True, **budget)
    new, old, batches = run_both(dlm, cfg)
    assert torch.equal(new.sequences, old.sequences)
    assert torch.equal(new.decoding_order, old.decoding_order)
    assert new.nfe == old.nfe
    torch.testing.assert_close(new.decode_entropy, old.decode_entropy, rtol=0, atol=0,
                               equal_nan=True)  # fmt: skip
    # the rows that ran: every row with a masked position in its current block, no other
    B, Lb = len(PROMPTS), cfg.block_size
    per_block = None if cfg.threshold is not None else cfg.resolve().steps // cfg.n_blocks
    want = []
    for step in range(new.nfe):
        n = 0
        for d in new.decoding_order:
            if per_block is not None:
                block = d[step // per_block * Lb :][:Lb]
            else:
                left = (d >= step).nonzero()
                block = d[int(left[0]) // Lb * Lb :][:Lb] if len(left) else d[:0]
            n += bool((block >= step).any())
        if n:
            want.append(n)
    assert batches == want and new.row_forwards == sum(want)
    if budget.get("steps", 0) > 12:  # a block schedule's last steps commit nothing
        assert new.row_forwards < B * new.nfe  # rows did leave: fewer rows than before


def test_rows_leave_in_threshold_mode(models, one_thread):
    # the sharpened models finish rows at different steps under most thresholds
    left = 0
    for kind in models:
        for budget in BUDGETS:
            if "threshold" in budget:
                cfg = DecodeConfig(gen_length=12, score="entropy", record_entropy=True, **budget)
                new, old, _ = run_both(models[kind], cfg)
                assert torch.equal(new.decoding_order, old.decoding_order)
                left += new.row_forwards < len(PROMPTS) * new.nfe
    assert left >= 4


class SureModel:
    """Row-wise logits: a row whose prompt holds token 16 is sure of every position (it
    finishes in one threshold step); the others get position-dependent noise."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.noise = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.batches.append(ids.shape[0])
        B, L = ids.shape
        out = self.noise[:L].expand(B, L, 40) + 0.1 * ids[..., None].float().sin()
        sure = (ids == 16).any(-1)
        return torch.where(sure[:, None, None], 20 * torch.nn.functional.one_hot(
            torch.full((L,), 30), 40).float(), out)  # fmt: skip


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_row_that_finishes_first_leaves_the_forward(temperature):
    cfg = DecodeConfig(gen_length=8, threshold=0.9, temperature=temperature,
                       record_entropy=True)  # fmt: skip
    ids, mask = pad_prompts(PROMPTS, 0)
    model = SureModel()
    new = decode(model, ids, mask, cfg, mask_token_id=2, generator=torch.Generator().manual_seed(4))
    old = reference_decode(SureModel(), ids, mask, cfg, mask_token_id=2,
                           generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert torch.equal(new.sequences, old.sequences)
    assert torch.equal(new.decoding_order, old.decoding_order)
    torch.testing.assert_close(new.decode_entropy, old.decode_entropy, rtol=0, atol=0)
    assert new.decoding_order[3].tolist() == [0] * 8  # the sure row: everything at step 0
    assert model.batches[0] == 4 and set(model.batches[1:]) == {3}  # then it left


# ------------------------------------------------------------------ host syncs per step

SYNCS = {"__bool__", "item", "tolist", "nonzero", "cpu", "__int__", "__float__", "__index__"}


class SyncCounter(TorchFunctionMode):
    """Counts the calls that read a device tensor on the host (a sync on a GPU).

    The sampler runs on CPU here, so "device" and "host" tensors are told apart by where they
    come from: the prompts and what is computed from them (or made with ``device=``) are
    device tensors; ``.cpu()`` results and tensors made without a device are host tensors.
    The model's forward is not counted (``paused``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.host: dict[int, weakref.ref] = {}  # id -> the host tensor (ids are reused)
        self.syncs: list[str] = []
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        name = getattr(func, "__name__", "")
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        for a in args:
            if isinstance(a, (list, tuple)):
                tensors += [t for t in a if isinstance(t, torch.Tensor)]
        on_device = any(not self.is_host(t) for t in tensors)
        if name in SYNCS and on_device:
            self.syncs.append(name)
        to_host = name == "cpu" or (not tensors and "device" not in kwargs)
        to_host = to_host or (tensors and not on_device and name != "to")
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and to_host:
                self.host[id(o)] = weakref.ref(o)
        return out

    def is_host(self, t: torch.Tensor) -> bool:
        ref = self.host.get(id(t))
        return ref is not None and ref() is t


def count_syncs(fn: Callable, dlm: DiffusionLM, cfg: DecodeConfig) -> tuple[int, int]:
    ids, mask = pad_prompts(PROMPTS, dlm.spec.pad_token_id)
    counter = SyncCounter()

    class Model:  # the model's forward is not the sampler's: not counted
        def __call__(self, i, m):
            counter.paused = True
            try:
                return dlm(i, m)
            finally:
                counter.paused = False

    with counter:
        out = fn(Model(), ids, mask, cfg, mask_token_id=dlm.mask_token_id,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    nfe = out.nfe if isinstance(out, DecodeOutput) else out[2] if isinstance(out, tuple) else 0
    return len(counter.syncs), nfe


@pytest.mark.parametrize(
    ("budget", "before_per_step"),
    [(dict(steps=12, block_length=4), 2), (dict(threshold=0.3, block_length=4), 3)],
)
def test_one_host_sync_per_step(models, budget, before_per_step, one_thread):
    dlm = models["tiny"]
    cfg = DecodeConfig(gen_length=12, score="entropy", temperature=1.0, **budget)
    before, nfe_before = count_syncs(reference_decode, dlm, cfg)
    after, nfe = count_syncs(decode, dlm, cfg)
    assert nfe == nfe_before > 0
    # before: nonzero() and bool(isnan(scores).any()) each step (+ bool(masked.any()) in
    # threshold mode, once more at the end); after: one .cpu() of the masked positions per
    # step (+ the last check in threshold mode) and the NaN flag once at the end
    assert before == before_per_step * nfe + (before_per_step == 3)
    assert after == nfe + (cfg.threshold is not None) + 1


def test_nan_scores_are_still_refused_naming_the_step():
    def nan_model(ids, mask):
        out = torch.zeros(*ids.shape, 8)
        out[:, -2:] = float("nan")  # the last two positions only
        return out

    ids = torch.tensor([[4, 5]])
    cfg = DecodeConfig(gen_length=4, steps=4, block_length=2)
    with pytest.raises(ValueError, match="decode step 2: the model's logits give NaN"):
        decode(nan_model, ids, torch.ones_like(ids), cfg, mask_token_id=2)


# ------------------------------------------------------------------ prompts grouped by length


def test_grouping_by_length_gives_the_same_rows_with_less_padding(models, one_thread):
    dlm = models["tiny-dream"]
    prompts = [[5] * n for n in (9, 2, 8, 3, 7, 2, 9, 3)]
    cfg = DecodeConfig(gen_length=6, steps=6, score="entropy", record_entropy=True)
    widths: list[int] = []
    hidden_states = dlm.hidden_states

    def recording(input_ids, attention_mask=None, **kw):
        widths.append(input_ids.shape[1])
        return hidden_states(input_ids, attention_mask, **kw)

    dlm.hidden_states = recording
    try:
        grouped = decode_batches(dlm, prompts, cfg, batch_size=4)
        n_grouped = len(widths)
        # the same batches in prompt order: each call is one batch, nothing to group
        plain = concat_outputs([decode_batches(dlm, prompts[i : i + 4], cfg, batch_size=4)
                                for i in (0, 4)], dlm.spec.pad_token_id)  # fmt: skip
    finally:
        del dlm.hidden_states
    one = decode_batches(dlm, prompts, cfg, batch_size=8)  # one batch: nothing to group
    for out in (grouped, plain):
        assert torch.equal(out.response_ids, one.response_ids)
        assert torch.equal(out.decoding_order, one.decoding_order)
        assert torch.equal(out.prompt_ids, one.prompt_ids)  # prompt order, left-padded
    # the same padding: the same numbers; less padding: the same up to float rounding (the
    # attention runs over fewer padded keys)
    assert torch.equal(plain.decode_entropy, one.decode_entropy)
    torch.testing.assert_close(grouped.decode_entropy, one.decode_entropy, rtol=0, atol=1e-5)
    # grouped: widths 3 + 6 and 9 + 6 (the short prompts together); plain: 9 + 6 twice
    assert sorted(set(widths[:n_grouped])) == [9, 15] and set(widths[n_grouped:]) == {15}


def test_sampled_decodes_keep_the_prompt_order(models, one_thread):
    # which random draws a prompt gets depends on its place in the batches: not regrouped
    dlm = models["tiny"]
    prompts = [[5] * n for n in (9, 2, 8, 3)]
    cfg = DecodeConfig(gen_length=6, steps=6, temperature=1.0)
    a = decode_batches(dlm, prompts, cfg, batch_size=2, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the batches in prompt order, one call each
    b = concat_outputs([decode_batches(dlm, prompts[i : i + 2], cfg, batch_size=2, generator=g)
                        for i in (0, 2)], dlm.spec.pad_token_id)  # fmt: skip
    assert torch.equal(a.sequences, b.sequences)
