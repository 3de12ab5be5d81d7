"""The Monte-Carlo NELBO against exact enumeration (DESIGN §7, "Likelihood").

1. :func:`nelbo_terms` (batched, padded, head at masked rows) equals a loop over single
   unpadded rows through the full-logits path, Dream's shift included.
2. For L <= 6 the exact expectation enumerates every mask set: Σ_l (1/l) mean_{|M|=l} Σ_{i∈M}
   -log p(x_i | x_¬M) (the LLaDA form; the clipped MDLM form with its exact size weights).
   The estimator's mean over many draws lies within 3 Monte-Carlo standard errors of it, for
   plain, stratified, antithetic and orders draws, on the tiny model and on the real-code Dream
   fixture.
3. The bound: on a model with a 4-token vocabulary (+ [MASK]) and L <= 3, the per-order
   likelihood p_σ(x) (decode one position at a time in order σ, each token from the model's
   conditional) is computed for every order σ and every x in V^L. Checked: each p_σ and their
   mean p_mix sum to 1 over V^L (real distributions); the exact NELBO equals E_σ[-log p_σ(x)]
   (the identity behind the bound); and NELBO >= -log p_mix(x) (Jensen), strictly for some x.
   The NELBO does not bound the NLL of a fixed order (left to right): for some x it is below.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from realdata import REAL_CODE
from tabom.likelihood import (
    LikelihoodConfig,
    draw_masks,
    estimate_nelbo,
    nelbo_terms,
    per_token,
)
from tabom.models import load_model
from tabom.models.base import BackendSpec, DiffusionLM

FIXTURE = REAL_CODE / "dream"  # vendored under tests/fixtures


def full_logp(dlm, ids: list[int], mask_id: int) -> torch.Tensor:
    """``(S, V)`` log p at every position of one unpadded row, [MASK] excluded (slow path)."""
    with torch.no_grad():
        logits = dlm(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0].float()
    logits[:, mask_id] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def set_nll(dlm, ctx: list[int], cont: list[int], subset: tuple[int, ...]) -> float:
    """Σ_{i ∈ subset} -log p(x_i | context, the rest of the continuation), one forward."""
    m = dlm.mask_token_id
    noised = ctx + [m if j in subset else t for j, t in enumerate(cont)]
    logp = full_logp(dlm, noised, m)
    return -sum(float(logp[len(ctx) + j, cont[j]]) for j in subset)


def size_means(dlm, ctx: list[int], cont: list[int]) -> list[float]:
    """ḡ(l) = mean over |M| = l of Σ_{i∈M} -log p, for l = 0..L (every mask set)."""
    L = len(cont)
    out = [0.0]
    for size in range(1, L + 1):
        subs = list(itertools.combinations(range(L), size))
        out.append(sum(set_nll(dlm, ctx, cont, s) for s in subs) / len(subs))
    return out


def exact_llada(g: list[float]) -> float:
    """E_l[(L/l) Σ_M] = Σ_l (1/L)(L/l) ḡ(l) = Σ_l ḡ(l) / l."""
    return sum(g[size] / size for size in range(1, len(g)))


def exact_mdlm(g: list[float], t_min: float) -> float:
    """E_{t ~ U(t_min,1)} E_{M ~ Bern(t)^L}[(1/t) Σ_M] = Σ_l w_l ḡ(l),
    w_l = C(L,l) ∫ t^(l-1) (1-t)^(L-l) dt / (1 - t_min) (Gauss-Legendre, exact here)."""
    L = len(g) - 1
    x, w = np.polynomial.legendre.leggauss(L + 2)
    t = t_min + (1 - t_min) * (x + 1) / 2  # nodes on [t_min, 1]
    w = w * (1 - t_min) / 2
    total = 0.0
    for size in range(1, L + 1):
        integral = float((w * t ** (size - 1) * (1 - t) ** (L - size)).sum())
        total += math.comb(L, size) * integral / (1 - t_min) * g[size]
    return total


# --------------------------------------------------------------------------- 1) vectorised


def test_nelbo_terms_equal_a_loop_over_rows_on_the_shifted_padded_model(tmp_path):
    from tabom.models.standin import build_standin, save_standin

    model, tok = build_standin("dream", seed=5)
    dlm = load_model(str(save_standin(model, tok, tmp_path / "d", backend="dream")))
    assert dlm.spec.shift_logits
    gen = torch.Generator().manual_seed(0)
    rows = []  # (ctx, cont) of different lengths: a left-padded batch
    for n_ctx, n_cont in ((3, 5), (7, 2), (1, 6), (5, 4)):
        ids = torch.randint(3, dlm.vocab_size - 1, (n_ctx + n_cont,), generator=gen).tolist()
        rows.append((ids[:n_ctx], ids[n_ctx:]))
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((4, width), dlm.spec.pad_token_id)
    attn = torch.zeros((4, width), dtype=torch.long)
    where = torch.zeros((4, width), dtype=torch.bool)
    lengths = torch.tensor([len(b) for _, b in rows])
    masked, _, weight = draw_masks(lengths, 1, generator=gen)
    for r, (a, b) in enumerate(rows):
        ids[r, width - len(a) - len(b) :] = torch.tensor(a + b)
        attn[r, width - len(a) - len(b) :] = 1
        where[r, width - len(b) :] = masked[r, 0, : len(b)]
    with torch.no_grad():
        got = nelbo_terms(dlm, ids, attn, where, weight[:, 0], mask_token_id=dlm.mask_token_id)
    for r, (a, b) in enumerate(rows):
        subset = tuple(int(j) for j in masked[r, 0, : len(b)].nonzero().flatten())
        assert subset, "every draw masks at least one position"
        want = float(weight[r, 0]) * set_nll(dlm, a, b, subset)
        assert float(got[r]) == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert float(weight[r, 0]) == len(b) / len(subset)
    # ``orders``: one scored position of the masked ones, weight L
    om, osc, ow = draw_masks(lengths, 12, generator=gen, draws="orders")
    om, osc, ow = om[:, :1], osc[:, :1], ow[:, :1]  # row 0: step of a whole order (L <= 12)
    count = torch.zeros_like(where)
    for r, (_, b) in enumerate(rows):
        where[r] = False
        where[r, width - len(b) :] = om[r, 0, : len(b)]
        count[r, width - len(b) :] = osc[r, 0, : len(b)]
    with torch.no_grad():
        got = nelbo_terms(dlm, ids, attn, where, ow[:, 0], mask_token_id=dlm.mask_token_id,
                          scored=count)
    for r, (a, b) in enumerate(rows):
        subset = tuple(int(j) for j in om[r, 0, : len(b)].nonzero().flatten())
        (i,) = osc[r, 0, : len(b)].nonzero().flatten().tolist()
        m = dlm.mask_token_id
        logp = full_logp(dlm, a + [m if j in subset else t for j, t in enumerate(b)], m)
        assert float(got[r]) == pytest.approx(-len(b) * float(logp[len(a) + i, b[i]]), rel=1e-4)


def test_draws_mask_l_uniform_positions_and_stratify():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 0, 3])
    masked, scored, weight = draw_masks(lengths, 4000, generator=gen, draws="plain")
    assert torch.equal(masked, scored)
    sizes = masked.sum(-1)  # (R, K)
    assert bool((masked[:, :, 3:].sum(-1)[2] == 0).all()) and bool((sizes[1] == 0).all())
    counts = torch.bincount(sizes[0], minlength=6)[1:].double() / 4000
    assert counts.sub(0.2).abs().max() < 0.03  # l uniform in 1..5
    assert masked[0].double().mean(0).sub(0.6).abs().max() < 0.03  # E[l]/L = 3/5 per position
    assert torch.allclose(weight[0], 5 / sizes[0].double())
    strat, _, _ = draw_masks(lengths, 10, generator=gen, draws="stratified")
    assert strat[0].sum(-1).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # even cover of 1..L
    anti, _, _ = draw_masks(lengths, 6, generator=gen, draws="antithetic")
    s = anti[0].sum(-1)
    assert (s[:3] + s[3:]).tolist() == [6, 6, 6]  # l and L + 1 - l
    assert bool((anti[0, :3] | anti[0, 3:]).all())  # complementary: every position covered
    assert ((anti[0, :3] & anti[0, 3:]).sum(-1) == 1).all()  # one shared
    om, osc, ow = draw_masks(lengths, 12, generator=gen, draws="orders")
    assert bool((ow[0, :10] == 5).all()) and (osc[0, :10].sum(-1) == 1).all()
    assert not osc[1].any() and not bool((osc & ~om).any())  # scored positions are masked
    for block in (om[0, :5], om[0, 5:10]):  # whole orders: sizes 5..1, nested, one of each
        assert sorted(block.sum(-1).tolist()) == [1, 2, 3, 4, 5]
    assert bool(osc[0, :5].sum(0).eq(1).all())  # each position scored once per order
    # the 2 remaining rows: plain samples (every masked position scored, weight L / l)
    assert torch.equal(osc[0, 10:], om[0, 10:])
    assert torch.allclose(ow[0, 10:], 5 / om[0, 10:].sum(-1).double())


# --------------------------------------------------------------------------- 2) exact expectation


def check_unbiased(dlm, ctx: list[int], cont: list[int]) -> None:
    g = size_means(dlm, ctx, cont)
    exact = exact_llada(g)
    for draws in ("plain", "stratified", "antithetic", "orders"):
        cfg = LikelihoodConfig(n_samples=1000, draws=draws, batch_size=500, seed=3)
        est = estimate_nelbo(
            dlm, [(ctx, cont)], cfg, mask_token_id=dlm.mask_token_id,
            pad_token_id=dlm.spec.pad_token_id,
        )
        mean, se = float(est.nelbo[0]), float(est.se[0])
        assert abs(mean - exact) < 3 * se, (draws, mean, exact, se)
        assert se < 0.05 * exact  # the test has power: the interval is narrow
    t_min = 0.05
    cfg = LikelihoodConfig(n_samples=1000, form="mdlm", draws="stratified", t_min=t_min,
                           batch_size=500, seed=4)
    est = estimate_nelbo(
        dlm, [(ctx, cont)], cfg, mask_token_id=dlm.mask_token_id,
        pad_token_id=dlm.spec.pad_token_id,
    )
    want = exact_mdlm(g, t_min)
    assert abs(float(est.nelbo[0]) - want) < 3 * float(est.se[0]), (float(est.nelbo[0]), want)
    assert exact_mdlm(g, 0.0) == pytest.approx(exact, rel=1e-9)  # the same NELBO unclipped


@pytest.mark.slow
def test_mean_matches_the_exact_expectation_on_the_tiny_model():
    dlm = load_model("tiny-base")
    ctx = dlm.encode_prompt("5239+3760=")
    cont = dlm.tokenizer("08999", add_special_tokens=False)["input_ids"] + [dlm.spec.eos_token_id]
    assert len(cont) == 6
    check_unbiased(dlm, ctx, cont)


@pytest.mark.slow
@pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"no real-code fixture at {FIXTURE}")
def test_mean_matches_the_exact_expectation_on_the_real_code_dream_fixture():
    dlm = load_model(str(FIXTURE), dtype="float32")
    assert dlm.spec.shift_logits
    ctx = dlm.encode_prompt("def add(a, b):")
    cont = dlm.tokenizer(" return a + b", add_special_tokens=False)["input_ids"][:5]
    assert len(cont) == 5
    check_unbiased(dlm, ctx, cont)


# --------------------------------------------------------------------------- 3) the bound


def tiny_vocab_model() -> DiffusionLM:
    """A bidirectional 2-layer Llama with tokens 0..3 and [MASK] = 4 (random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tabom.models.base import make_bidirectional

    config = LlamaConfig(
        vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, pad_token_id=3, eos_token_id=3,
        bos_token_id=None,
    )
    torch.manual_seed(11)
    model = make_bidirectional(LlamaForCausalLM(config)).eval()
    with torch.no_grad():  # sharper conditionals than the near-uniform init
        model.lm_head.weight.mul_(40)
    spec = BackendSpec(name="tiny", mask_token_id=4, shift_logits=False, eos_token_id=3,
                       pad_token_id=3)
    return DiffusionLM(model=model, tokenizer=None, spec=spec)


def order_nll(dlm, ctx: list[int], x: tuple[int, ...], order: tuple[int, ...]) -> float:
    """-log p_σ(x): reveal x one position at a time in ``order``, from the all-masked canvas."""
    m = dlm.mask_token_id
    canvas = [m] * len(x)
    total = 0.0
    for j in order:
        logp = full_logp(dlm, ctx + canvas, m)
        total -= float(logp[len(ctx) + j, x[j]])
        canvas[j] = x[j]
    return total


@pytest.mark.parametrize("L", [1, 2, 3])
def test_nelbo_bounds_the_order_marginal_nll_and_equals_the_mean_order_nll(L):
    dlm = tiny_vocab_model()
    ctx = [0, 2]
    orders = list(itertools.permutations(range(L)))
    seqs = list(itertools.product(range(4), repeat=L))
    p_order = torch.tensor([[math.exp(-order_nll(dlm, ctx, x, o)) for o in orders] for x in seqs])
    assert torch.allclose(p_order.sum(0), torch.ones(len(orders)), atol=1e-5)  # each p_σ
    p_mix = p_order.mean(1)  # (|V|^L,)
    assert float(p_mix.sum()) == pytest.approx(1.0, abs=1e-5)
    gaps = []
    below_l2r = 0
    for x, ps, pm in zip(seqs, p_order, p_mix, strict=True):
        nelbo = exact_llada(size_means(dlm, ctx, list(x)))
        mean_order_nll = float((-ps.log()).mean())
        assert nelbo == pytest.approx(mean_order_nll, rel=1e-5, abs=1e-5)  # the identity
        gaps.append(nelbo - (-math.log(float(pm))))
        below_l2r += nelbo < -math.log(float(ps[0])) - 1e-6  # orders[0] = left to right
    assert min(gaps) >= -1e-5  # NELBO >= -log p_mix for every x
    if L == 1:
        assert max(gaps) < 1e-5  # one order: the NELBO is the exact NLL
    else:
        assert max(gaps) > 1e-3  # a bound, not an identity
        assert below_l2r > 0  # and not a bound on the left-to-right NLL


def test_estimate_bounds_the_order_marginal_nll_in_the_mean():
    dlm = tiny_vocab_model()
    ctx, x = [0, 2], (1, 0, 2)
    orders = list(itertools.permutations(range(3)))
    p_mix = sum(math.exp(-order_nll(dlm, ctx, x, o)) for o in orders) / len(orders)
    cfg = LikelihoodConfig(n_samples=3000, draws="stratified", batch_size=1000)
    est = estimate_nelbo(dlm, [(ctx, list(x))], cfg, mask_token_id=4, pad_token_id=3)
    exact = exact_llada(size_means(dlm, ctx, list(x)))
    assert abs(float(est.nelbo[0]) - exact) < 3 * float(est.se[0])
    assert float(est.nelbo[0]) + 3 * float(est.se[0]) > -math.log(p_mix)


# --------------------------------------------------------------------------- API


def test_batching_padding_and_order_do_not_change_the_estimate():
    dlm = load_model("tiny-base")
    reqs = [(dlm.encode_prompt(p), dlm.tokenizer(a, add_special_tokens=False)["input_ids"])
            for p, a in (("12+5=", "17"), ("400+321=", "0721"), ("9+9=", "18"), ("1=", ""))]
    kw = {"mask_token_id": dlm.mask_token_id, "pad_token_id": dlm.spec.pad_token_id}
    one = estimate_nelbo(dlm, reqs, LikelihoodConfig(n_samples=8, batch_size=1), **kw)
    many = estimate_nelbo(dlm, reqs, LikelihoodConfig(n_samples=8, batch_size=64), **kw)
    assert torch.allclose(one.samples, many.samples, rtol=1e-4, atol=1e-5)
    assert one.n_tokens.tolist() == [2, 4, 2, 0] and float(one.nelbo[3]) == 0.0
    value, se, ppl = per_token(many)
    assert value == pytest.approx(float(many.nelbo.sum()) / 8) and ppl == pytest.approx(
        math.exp(value)
    )
    assert 0 < se < value
    with pytest.raises(ValueError, match="longer than"):
        estimate_nelbo(dlm, [([1], [5] * 10)], LikelihoodConfig(), max_length=8, **kw)


def test_config_ranges_and_pairs():
    from tabom.config import ConfigError

    with pytest.raises(ConfigError, match="n_samples"):
        LikelihoodConfig(n_samples=0)
    with pytest.raises(ConfigError, match="t_min"):
        LikelihoodConfig(t_min=1.0)
    with pytest.raises(ValueError, match="draws: 'sobol' is not one of"):
        LikelihoodConfig(draws="sobol")
    with pytest.raises(ValueError, match="need form llada"):
        LikelihoodConfig(draws="orders", form="mdlm")
    with pytest.raises(ValueError, match="odd"):
        LikelihoodConfig(n_samples=3, draws="antithetic")
