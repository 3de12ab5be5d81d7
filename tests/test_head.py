"""The LM head only where the loss or the sampler needs it (``tabom.head``, issue 11).

Every backend's ``logits_at`` against its full forward; every objective's loss and gradient
against the full-logits path it replaced (chunked or not, padded batches); decoding against
the whole-block sampler it replaced (a verbatim copy below), on every score and budget.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from naive import masked_ce, papl_loop, rank_loss_loop
from realdata import REAL_CODE
from tabom.decoding import (
    DecodeConfig,
    decode,
    pad_prompts,
    score_proposals,
    select_top_k,
    step_schedule,
)
from tabom.decoding import (
    filter_logits as _filter,
)
from tabom.decoding import (
    propose as new_propose,
)
from tabom.head import ce_entropy
from tabom.masking import confidence_reveal_order, random_mask, time_delay_mask
from tabom.models import TinyModelConfig, build_tiny
from tabom.models.base import DiffusionLM
from tabom.models.standin import make_standin
from tabom.objectives import LossConfig, compute_objective
from tabom.train_data import TrajectoryBatch

REL = 1e-5  # chunked vs whole head, few vs many rows: 1.2e-6 seen under avx2 (rank loss)
SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, DiffusionLM]:
    root = tmp_path_factory.mktemp("head")
    out = {
        "tiny": build_tiny(SMALL, seed=1),
        "tiny-dream": build_tiny(dataclasses.replace(SMALL, family="qwen2"), seed=2),
    }
    for kind in ("llada", "dream", "bert", "modernbert"):
        out[kind] = make_standin(kind, root / kind, seed=3)
    return out


def padded_batch(dlm: DiffusionLM, per_step: int = 1, seed: int = 0):
    """4 rows, prompts of 3-6 tokens left-padded, T = 8 responses, a random decode order."""
    g = torch.Generator().manual_seed(seed)
    T, V = 8, dlm.vocab_size
    lengths = [6, 3, 5, 4]
    P = max(lengths)
    ids = torch.randint(4, min(V, 90), (4, P + T), generator=g)
    attn = torch.ones_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, P:] = True
    steps = torch.full_like(ids, -1)
    for b, n in enumerate(lengths):
        ids[b, : P - n] = dlm.spec.pad_token_id
        attn[b, : P - n] = 0
        steps[b, P:] = torch.randperm(T, generator=g) // per_step
    return ids, attn, resp, steps


# --------------------------------------------------------------------------- logits at positions


@pytest.mark.parametrize("kind", ["tiny", "tiny-dream", "llada", "dream", "bert", "modernbert"])
def test_logits_at_equal_the_full_forward(models, kind):
    dlm = models[kind]
    assert dlm.spec.head_at_positions  # every backend's loader: not remote code
    ids, attn, _, _ = padded_batch(dlm)
    full = dlm(ids, attn)  # (B, L, V) aligned
    hidden = dlm.hidden_states(ids, attn)
    assert hidden.shape[:2] == ids.shape and hidden.shape[-1] < full.shape[-1]  # not logits
    rows, pos = torch.meshgrid(torch.arange(4), torch.arange(ids.shape[1]), indexing="ij")
    rows, pos = rows.flatten(), pos.flatten()  # every position, 0 included (Dream: raw[:, 0])
    perm = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))
    got = dlm.logits_at(hidden, rows[perm], pos[perm])
    torch.testing.assert_close(got, full[rows[perm], pos[perm]], rtol=REL, atol=1e-6)
    few = dlm.logits_at(hidden, rows[perm[:3]], pos[perm[:3]])  # BLAS: another kernel for 3 rows
    torch.testing.assert_close(few, got[:3], rtol=REL, atol=1e-6)


def test_the_shift_reads_the_previous_hidden_state(models):
    dlm = models["tiny-dream"]
    assert dlm.spec.shift_logits
    ids, attn, _, _ = padded_batch(dlm)
    hidden = dlm.hidden_states(ids, attn)
    head = dlm.model.get_output_embeddings()
    rows, pos = torch.tensor([0, 0, 2]), torch.tensor([0, 1, 9])
    want = head(hidden[rows, torch.tensor([0, 0, 8])])  # j -> j - 1, 0 -> 0
    got = dlm.logits_at(hidden, rows, pos)
    torch.testing.assert_close(got, want, rtol=REL, atol=1e-6)  # same rows, rounding may differ
    # and not the unshifted rows: position 1 reads hidden 0, which differs clearly from hidden 1
    unshifted = head(hidden[rows, pos])
    assert (got[1:] - unshifted[1:]).abs().max() > 100 * 1e-6


def test_a_spec_without_head_at_positions_gives_the_same_logits(models):
    dlm = models["tiny-dream"]
    plain = DiffusionLM(
        dlm.model, dlm.tokenizer, dataclasses.replace(dlm.spec, head_at_positions=False)
    )
    ids, attn, _, _ = padded_batch(dlm)
    hidden = plain.hidden_states(ids, attn)
    assert hidden.shape[-1] == dlm.vocab_size  # the raw logits
    rows, pos = torch.tensor([1, 3, 0]), torch.tensor([0, 7, 13])
    torch.testing.assert_close(
        plain.logits_at(hidden, rows, pos), dlm(ids, attn)[rows, pos], rtol=REL, atol=1e-6
    )


# --------------------------------------------------------------------------- objectives


def run_objective(model, ids, attn, resp, steps, *, objective, seed, mask_token_id, **loss):
    """:func:`compute_objective` on a batch of tensors with ``LossConfig(**loss)``."""
    batch = TrajectoryBatch(ids, attn, resp, steps, decode_entropy=None, ids=[])
    return compute_objective(
        model,
        batch,
        objective=objective,
        loss=LossConfig(**loss),
        mask_token_id=mask_token_id,
        generator=torch.Generator().manual_seed(seed),
    )


def full_logits_objective(dlm, ids, attn, resp, steps, *, objective, seed, nelbo=False):
    """The objectives before this change: all (B, L, V) logits, then CE and rank gathers."""
    g = torch.Generator().manual_seed(seed)
    if objective == "puma":  # the model's own confidence reveal order of the ground truth
        with torch.no_grad():
            steps = confidence_reveal_order(
                lambda x: dlm(x, attn), ids, resp, mask_token_id=dlm.mask_token_id
            )
    if objective in ("td", "tabom", "puma"):
        plan = time_delay_mask(
            ids, steps, response_mask=resp, window=3, mask_token_id=dlm.mask_token_id, generator=g
        )
    else:
        plan = random_mask(ids, resp, mask_token_id=dlm.mask_token_id, generator=g)
    logits = dlm(plan.input_ids, attn)
    if objective == "papl":  # the naive per-token loop
        ce, _ = papl_loop(
            logits, ids, plan.supervise, tau=0.7, mix=0.8, mask_token_id=dlm.mask_token_id
        )
        return ce.float(), torch.zeros(())
    ce = masked_ce(
        logits,
        ids,
        plan.supervise,
        t=plan.t if nelbo else None,
        normalizer=resp.sum().clamp(min=1) if nelbo else None,
    )
    if objective != "tabom":
        return ce, torch.zeros(())
    rank = rank_loss_loop(logits, steps, plan.cut, plan.supervise, window=2, margin=0.3)
    return ce, rank


def grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


@pytest.mark.parametrize("kind", ["tiny", "tiny-dream", "bert"])
@pytest.mark.parametrize("objective", ["sft", "traj-sft", "td", "tabom", "puma", "papl"])
@pytest.mark.parametrize("chunk", [0, 3])
def test_loss_and_gradient_equal_the_full_logits_path(models, kind, objective, chunk):
    dlm = models[kind]
    ids, attn, resp, steps = padded_batch(dlm, per_step=1 if kind == "tiny" else 2)
    nelbo = objective == "sft"
    ce, rank = full_logits_objective(
        dlm, ids, attn, resp, steps, objective=objective, seed=4, nelbo=nelbo
    )
    want_total = ce + 1.5 * rank
    out = run_objective(
        dlm,
        ids,
        attn,
        resp,
        steps,
        objective=objective,
        seed=4,
        mask_token_id=dlm.mask_token_id,
        td_window=3,
        rank_window=2,
        rank_margin=0.3,
        rank_weight=1.5,
        nelbo_weight=nelbo,
        loss_chunk=chunk,
        papl_tau=0.7,
        papl_mix=0.8,
    )
    assert out.n_supervised > chunk  # chunking really splits the rows
    torch.testing.assert_close(out.ce, ce, rtol=REL, atol=0)
    torch.testing.assert_close(out.rank, rank, rtol=REL, atol=0)
    torch.testing.assert_close(out.total, want_total, rtol=REL, atol=0)
    if objective == "tabom":
        assert out.rank.item() > 0 and out.n_pairs > 0
    got_g, want_g = grads(dlm.model, out.total), grads(dlm.model, want_total)
    # 1e-6 relative to the gradient's scale (its largest entry over all parameters): chunks
    # sum the head's weight gradient in another order, and a gradient that is zero by symmetry
    # (a bias the softmax does not see) is rounding noise in both paths
    scale = max(float(g.abs().max()) for g in want_g if g is not None)
    checked = 0
    for g_new, g_old in zip(got_g, want_g, strict=True):
        if g_old is None:
            assert g_new is None or not g_new.any()
            continue
        torch.testing.assert_close(g_new, g_old, rtol=REL, atol=REL * scale)
        checked += int(g_old.abs().max() > 1e-3 * scale)
    assert checked > 3
    if chunk == 0 and kind != "bert" and objective not in ("papl", "tabom"):
        # unchunked, bias-free head: the same numbers as the plain gather bit for bit (BERT's
        # head bias gradient is a sum over N rows instead of all B x L); papl and tabom
        # are compared with per-token / per-pair loops, equal up to rounding
        assert all(
            (a is None and b is None) or torch.equal(a, b)
            for a, b in zip(got_g, want_g, strict=True)
        )


def test_chunks_bound_the_head_rows(models, monkeypatch):
    dlm = models["tiny"]
    ids, attn, resp, steps = padded_batch(dlm)
    head_weight = dlm.model.get_output_embeddings().weight
    sizes: list[int] = []
    linear = torch.nn.functional.linear

    def recording(x, weight, bias=None):
        if weight is head_weight:
            sizes.append(x.shape[0])
        return linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", recording)
    kw = dict(objective="traj-sft", mask_token_id=dlm.mask_token_id, loss_chunk=4)
    out = run_objective(dlm, ids, attn, resp, steps, seed=1, **kw)
    n_forward = len(sizes)
    assert max(sizes) <= 4 and sum(sizes) == out.n_supervised > 8
    out.total.backward()  # each chunk's logits are recomputed in backward
    assert len(sizes) == 2 * n_forward and max(sizes) <= 4


def test_callables_and_head_models_give_one_loss(models):
    dlm = models["tiny-dream"]
    ids, attn, resp, steps = padded_batch(dlm, per_step=2)
    kw = dict(objective="tabom", mask_token_id=dlm.mask_token_id, td_window=3, rank_window=3)
    a = run_objective(dlm, ids, attn, resp, steps, seed=2, **kw)
    b = run_objective(lambda i, m: dlm(i, m), ids, attn, resp, steps, seed=2, **kw)
    torch.testing.assert_close(a.total, b.total, rtol=REL, atol=0)


def test_ce_entropy_matches_the_definitions():
    z = torch.randn(5, 11)
    z[0, 3] = float("-inf")
    t = torch.tensor([0, 1, 2, 3, 4])
    ce, h = ce_entropy(z, t)
    logp = torch.log_softmax(z, -1)
    torch.testing.assert_close(ce, -logp[torch.arange(5), t])
    p = logp.exp()
    torch.testing.assert_close(h, -(torch.where(p > 0, p * logp, 0)).sum(-1))


# --------------------------------------------------------------------------- decoding


def old_propose(logits, *, temperature, top_p, top_k, generator):
    """``propose`` before this change: ``torch.multinomial`` over every row."""
    if temperature == 0:
        return logits.argmax(dim=-1), logits.softmax(dim=-1)
    q = _filter(logits / temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    flat = q.reshape(-1, q.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator).view(q.shape[:-1])
    return tokens, q


@torch.no_grad()
def old_decode(model, prompt_ids, prompt_mask, cfg, *, mask_token_id, generator=None):
    """``decode`` before this change, verbatim up to comments: proposals over the whole block
    from all (B, L, V) logits."""
    cfg = cfg.resolve()
    B, P = prompt_ids.shape
    T, Lb = cfg.gen_length, cfg.block_size
    x = torch.cat([prompt_ids, prompt_ids.new_full((B, T), mask_token_id)], dim=1)
    attn = torch.cat([prompt_mask, prompt_mask.new_ones((B, T))], dim=1)
    response = x[:, P:]
    decoding_order = torch.full((B, T), -1, dtype=torch.long)
    entropy = torch.full((B, T), float("nan")) if cfg.record_entropy else None
    rows = torch.arange(B).unsqueeze(-1)
    offsets = torch.arange(Lb)
    fixed = cfg.threshold is None
    schedule = step_schedule(cfg) if fixed else []
    steps_per_block = cfg.steps // cfg.n_blocks
    step = 0
    while True:
        if fixed:
            if step == cfg.steps:
                break
            start = torch.full((B,), (step // steps_per_block) * Lb)
        else:
            masked = decoding_order < 0
            if not bool(masked.any()):
                break
            start = masked.long().argmax(dim=-1) // Lb * Lb
        pos = start.unsqueeze(-1) + offsets
        logits = model(x, attn)
        block_logits = logits[rows, P + pos].float()
        block_logits[..., mask_token_id] = float("-inf")
        tokens, q = old_propose(
            block_logits,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            generator=generator,
        )
        confidence = neg_entropy = None
        if cfg.score == "confidence" or not fixed:
            confidence = q.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        if cfg.score == "entropy" or entropy is not None:
            neg_entropy = torch.special.xlogy(q, q).sum(dim=-1)
        if cfg.score == "confidence":
            scores = confidence
        elif cfg.score == "entropy":
            scores = neg_entropy
        else:
            scores = score_proposals(q, tokens, cfg.score, generator=generator)
        candidates = decoding_order.gather(1, pos) < 0
        if fixed:
            k = torch.full((B,), schedule[step], dtype=torch.long)
            commit = select_top_k(scores, candidates, k)
        else:
            passed = candidates & (confidence >= cfg.threshold)
            best = select_top_k(scores, candidates, torch.ones(B, dtype=torch.long))
            commit = passed | (best & ~passed.any(dim=-1, keepdim=True))
        response.scatter_(1, pos, torch.where(commit, tokens, response.gather(1, pos)))
        decoding_order.scatter_(1, pos, torch.where(commit, step, decoding_order.gather(1, pos)))
        if entropy is not None:
            h = -neg_entropy
            entropy.scatter_(1, pos, torch.where(commit, h, entropy.gather(1, pos)))
        step += 1
    return x, decoding_order, step, entropy


@pytest.fixture(scope="module")
def sharp(models) -> dict[str, DiffusionLM]:
    """The tiny models with their final norm scaled 50x: a random model's near-uniform outputs
    tie to 1e-4 in entropy, so a sampler computing the head on other rows (other rounding) may
    break a tie the other way on some CPU kernel path; sharpened logits leave no such tie."""
    out = {}
    for kind in ("tiny", "tiny-dream"):
        dlm = models[kind]
        model = build_tiny(
            dataclasses.replace(SMALL, family="qwen2") if kind == "tiny-dream" else SMALL,
            seed=1 if kind == "tiny" else 2,
        )
        with torch.no_grad():
            model.model.model.norm.weight.mul_(50.0)
        assert model.spec == dlm.spec
        out[kind] = model
    return out


BUDGETS = [
    dict(steps=12),
    dict(steps=6),
    dict(steps=16),  # more steps than masks: steps that commit nothing
    dict(steps=6, block_length=4),
    dict(threshold=0.05),
    dict(threshold=0.2, block_length=4),
    dict(steps=6, temperature=1.0, top_p=0.9),
    dict(steps=12, block_length=6, temperature=0.7, top_k=5),
    dict(threshold=0.1, block_length=6, temperature=1.0),
]


@pytest.mark.parametrize("kind", ["tiny", "tiny-dream"])
@pytest.mark.parametrize("score", ["confidence", "margin", "entropy", "random"])
@pytest.mark.parametrize(
    "budget", BUDGETS, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items())
)
def test_decode_equals_the_whole_block_sampler(sharp, kind, score, budget):
    dlm = sharp[kind]
    cfg = DecodeConfig(gen_length=12, score=score, record_entropy=True, **budget)
    ids, mask = pad_prompts([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], dlm.spec.pad_token_id)
    sizes: list[int] = []
    apply_head = dlm.apply_head

    def recording(rows):
        sizes.append(rows.shape[0])
        return apply_head(rows)

    dlm.apply_head = recording  # instance attribute: this test only
    try:
        new = decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id,
                     generator=torch.Generator().manual_seed(9))  # fmt: skip
    finally:
        del dlm.apply_head
    x, steps, nfe, entropy = old_decode(
        dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id,
        generator=torch.Generator().manual_seed(9),
    )  # fmt: skip
    assert torch.equal(new.sequences, x)
    assert torch.equal(new.decoding_order, steps)
    assert new.nfe == nfe and len(sizes) <= nfe  # a step with nothing to commit runs no head
    # the head on fewer rows rounds differently (seen: 2.1e-7 relative; 10x that here)
    torch.testing.assert_close(new.decode_entropy, entropy, rtol=2e-6, atol=1e-6, equal_nan=True)
    # the head ran at the still-masked positions of the active block only
    block = cfg.block_size
    assert max(sizes) <= 3 * block and sum(sizes) < nfe * 3 * (ids.shape[1] + 12)


def test_propose_draws_what_multinomial_draws():
    q_logits = torch.randn(6, 30)
    a, _ = new_propose(q_logits, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b, _ = old_propose(q_logits, temperature=1.0, top_p=1.0, top_k=0,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(a, b)
    index = torch.tensor([4, 1])  # rows 4 and 1 of the six, computed alone
    c, _ = new_propose(
        q_logits[index], temperature=1.0, generator=torch.Generator().manual_seed(1),
        noise_rows=(index, 6),
    )  # fmt: skip
    assert torch.equal(c, a[index])


def test_a_plain_logits_callable_decodes_like_the_head_model(models):
    dlm = models["dream"]
    cfg = DecodeConfig(gen_length=8, steps=8, block_length=4, score="entropy")
    ids, mask = pad_prompts([[5, 6, 7], [10]], dlm.spec.pad_token_id)
    a = decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id)
    b = decode(lambda i, m: dlm(i, m), ids, mask, cfg, mask_token_id=dlm.mask_token_id)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.decoding_order, b.decoding_order)


def test_chunked_and_unchunked_agree_under_bf16_autocast(models):
    """Mixed precision (``tabom train --mixed_precision bf16``): the head's products in bf16."""
    dlm = models["tiny"]
    ids, attn, resp, steps = padded_batch(dlm)
    kw = dict(objective="tabom", mask_token_id=dlm.mask_token_id, td_window=3, rank_window=3)
    outs, gs = [], []
    for chunk in (0, 3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run_objective(dlm, ids, attn, resp, steps, seed=3, loss_chunk=chunk, **kw)
        outs.append(out)
        gs.append(grads(dlm.model, out.total))
    assert outs[0].total.dtype == torch.float32 and torch.isfinite(outs[0].total)
    torch.testing.assert_close(outs[1].total, outs[0].total, rtol=1e-2, atol=0)
    for a, b in zip(gs[1], gs[0], strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2 * float(b.abs().max()) + 1e-6)


# --------------------------------------------------------------------------- native LLaDA / Dream



@pytest.mark.parametrize("name", ["llada-masked", "dream"])
def test_native_classes_give_the_real_codes_logits_at_positions(name, one_thread):
    """LLaDA / Dream in transformers' Llama / Qwen2 classes (the native path): the head at
    positions equals the real modeling code's logits (stored with the fixture), shift included."""
    from safetensors.torch import load_file

    from tabom.models import load_model

    folder = REAL_CODE / name
    dlm = load_model(str(folder), dtype="float32")
    assert dlm.spec.head_at_positions and dlm.spec.shift_logits == (name == "dream")
    saved = load_file(str(folder / "cases.safetensors"))
    ids, mask = saved["padded_batch.input_ids"], saved["padded_batch.attention_mask"]
    raw = saved["padded_batch.logits"]  # the real code's (B, L, V), unshifted
    keep = mask.bool().clone()
    if dlm.spec.shift_logits:
        raw = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
        keep[:, 1:] &= mask[:, :-1].bool()  # a row's first real token follows a pad
    rows, pos = keep.nonzero(as_tuple=True)
    with torch.no_grad():
        got = dlm.logits_at(dlm.hidden_states(ids, mask), rows, pos)
        full = dlm(ids, mask)[rows, pos]
    torch.testing.assert_close(got, full, rtol=REL, atol=1e-6)
    assert float((got - raw[rows, pos]).abs().max()) < 1e-4


@pytest.mark.parametrize("name", ["llada-masked", "dream"])
def test_native_lora_gradient_checkpointing_and_chunks_keep_the_gradients(name, one_thread):
    """The training path of the 7-8B recipes (LoRA on q/v, activation checkpointing, chunked
    head loss) gives the gradients of plain training."""
    import peft

    from tabom.models import enable_gradient_checkpointing, load_model

    grads_by_setting = {}
    for ckpt, chunk in ((False, 0), (True, 3)):
        dlm = load_model(str(REAL_CODE / name), dtype="float32")
        torch.manual_seed(0)
        lora = peft.LoraConfig(r=4, lora_alpha=4, target_modules=list(dlm.spec.lora_targets))
        model = peft.get_peft_model(dlm.model, lora)
        for n, p in model.named_parameters():
            if "lora_B" in n:  # a nonzero B, so that lora_A gets a gradient too
                torch.nn.init.normal_(p, std=0.02)
        if ckpt:
            enable_gradient_checkpointing(model)
        model.train()
        train_dlm = DiffusionLM(model, dlm.tokenizer, dlm.spec)
        ids, attn, resp, steps = padded_batch(train_dlm, per_step=2)
        out = run_objective(
            train_dlm, ids, attn, resp, steps, objective="tabom", seed=5,
            mask_token_id=dlm.mask_token_id, td_window=3, rank_window=3, loss_chunk=chunk,
        )  # fmt: skip
        out.total.backward()
        grads_by_setting[ckpt] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
        }
        assert out.rank > 0
    plain, other = grads_by_setting[False], grads_by_setting[True]
    scale = max(float(g.abs().max()) for g in plain.values())
    assert scale > 0 and plain.keys() == other.keys()
    for n, g in plain.items():
        torch.testing.assert_close(other[n], g, rtol=1e-5, atol=1e-6 * scale)


def test_loss_chunk_is_checked():
    assert LossConfig(loss_chunk=64).loss_chunk == 64
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="loss_chunk"):
            LossConfig(loss_chunk=bad)
