"""The Monte-Carlo negative ELBO of a continuation given a context (DESIGN §7, "Likelihood").

A masked diffusion LM has no exact likelihood. For a continuation x of L tokens after a context
c, LLaDA's bound (Nie et al. 2025, Eq. 12; the MDLM NELBO of Sahoo et al. 2024 in its
token-count form) is

    NELBO(x | c) = E_l E_{M, |M| = l} [ (L / l) Σ_{i ∈ M} -log p(x_i | c, x_{¬M}) ],

l uniform in {1..L}, M a uniformly drawn set of l continuation positions replaced by [MASK].
It equals the expected negative log-likelihood of x under a uniformly random decode order
(one token per step, each from the model's conditional given what is revealed), so it is an
upper bound on -log p_mix(x | c), p_mix = the order-marginal likelihood (the mean of the
per-order likelihoods; Jensen). The MDLM time-weighted form draws t ~ U(t_min, 1), masks each
position with probability t and weighs by 1/t (the same expectation when t_min = 0; unclipped
its variance is infinite, hence the clip, which biases it by O(t_min)).

:func:`nelbo_terms` is the estimator on given masks, a function of tensors (the head runs only
at masked rows, Dream's shift and left padding through the :class:`tabom.head.HeadModel`
API); :func:`draw_masks` draws the masks from a ``torch.Generator`` (plain, stratified or
antithetic draws of l / t, or whole decode orders: ``orders``, each token scored once per
order); :func:`estimate_nelbo` batches requests x samples and returns the
estimate with its Monte-Carlo standard error. Settings: :class:`LikelihoodConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from tabom.config import AT_LEAST_1, NON_NEGATIVE, check_ranges, in_range
from tabom.head import HeadModel, logits_at

DRAW_GROUP = 64
"""Requests whose masks are drawn together (the stream of draws is fixed by it)."""
Form = Literal["llada", "mdlm"]
Draws = Literal["plain", "stratified", "antithetic", "orders"]


@dataclass
class LikelihoodConfig:
    """Settings of the Monte-Carlo NELBO (``--likelihood.*``).

    Attributes:
        n_samples: Monte-Carlo samples K per continuation (each one forward row).
        draws: how the K mask sizes are drawn: ``plain`` (independent), ``stratified`` (the
            k-th u in [k/K, (k+1)/K), so the sizes cover 1..L evenly; its standard error is
            reported conservatively, as if independent), ``antithetic`` (the default:
            complementary pairs, one permutation's first l and last L + 1 - l positions; K
            must be even; never worse than plain in docs/benchmarks.md) or ``orders``
            (``llada`` form: rows come in blocks of L sharing one decode order σ, row k masks
            σ_k..σ_L and scores σ_k alone with weight L, so a block's mean is -log p_σ(x):
            every token counted once; the lowest variance where the per-token NLL hardly
            depends on the order, the highest where it does). All are unbiased.
        form: ``llada`` (l uniform in 1..L, l positions masked, weight L / l) or ``mdlm``
            (t ~ U(t_min, 1), each position masked with probability t, weight 1 / t).
        t_min: lower clip of t in the ``mdlm`` form (its bias; 0 = unbiased with infinite
            variance).
        batch_size: sequences per forward (K rows per continuation, split across forwards).
        seed: seed of the mask draws.
    """

    n_samples: int = field(default=32, metadata=AT_LEAST_1)
    draws: Draws = "antithetic"
    form: Form = "llada"
    t_min: float = field(default=1e-3, metadata=in_range(0, 1, high_open=True))
    batch_size: int = field(default=64, metadata=AT_LEAST_1)
    seed: int = field(default=0, metadata=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_ranges(self)  # ranges and choices (config.py)
        if self.draws == "orders" and self.form != "llada":
            raise ValueError("likelihood.draws orders: decode orders need form llada")
        if self.draws == "antithetic" and self.n_samples % 2:
            raise ValueError(
                f"likelihood.n_samples: antithetic draws come in pairs, {self.n_samples} is odd"
            )


@dataclass
class NelboEstimate:
    """The NELBO of each continuation (nats), from K Monte-Carlo samples.

    Attributes:
        nelbo: ``(R,)`` the estimate (mean of the samples), a bound on -log p_mix.
        se: ``(R,)`` its Monte-Carlo standard error (NaN with one sample).
        samples: ``(R, K)`` the per-sample values (antithetic: pairs are k and k + K/2).
        n_tokens: ``(R,)`` continuation lengths L.
    """

    nelbo: torch.Tensor
    se: torch.Tensor
    samples: torch.Tensor
    n_tokens: torch.Tensor


def _uniforms(shape: tuple[int, int], draws: Draws, generator: torch.Generator) -> torch.Tensor:
    """``(R, K)`` uniforms in [0, 1): independent, stratified over k, or antithetic pairs."""
    R, K = shape
    u = torch.rand((R, K), generator=generator, dtype=torch.float64)
    if draws == "stratified":
        return (torch.arange(K, dtype=torch.float64) + u) / K
    if draws == "antithetic":
        half = u[:, : K // 2]
        return torch.cat([half, 1.0 - half], dim=1)  # 1 - u in (0, 1]: l = L at u = 0
    return u  # plain


def draw_masks(
    lengths: torch.Tensor,
    n_samples: int,
    *,
    generator: torch.Generator,
    form: Form = "llada",
    draws: Draws = "plain",
    t_min: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask sets and weights of K Monte-Carlo samples per continuation.

    Args:
        lengths: ``(R,)`` continuation lengths L (0 allowed: nothing masked, weight 0).
        n_samples: K.
        generator: a CPU generator; every draw comes from it.
        form: ``llada`` (l = floor(u L) + 1 positions, uniformly chosen, weight L / l) or
            ``mdlm`` (t = t_min + (1 - t_min) u, each position with probability t, weight 1 / t).
        draws: ``plain``, ``stratified`` or ``antithetic`` (:class:`LikelihoodConfig`): the
            ``llada`` form's antithetic pairs are complementary masks (samples k and k + K/2
            share one permutation: its first l positions and its last L + 1 - l); the ``mdlm``
            form's pair t and 1 - t with independent masks.
        t_min: the ``mdlm`` clip.

    Returns:
        ``(masked, scored, weight)``: ``(R, K, Lmax)`` bool over continuation positions (False
        past each L): the positions replaced by [MASK] and those whose NLL counts (the masked
        ones, except under ``orders``: one), and ``(R, K)`` float64 weights.
    """
    R, K = lengths.shape[0], n_samples
    Lmax = int(lengths.max()) if R else 0
    L = lengths.to(torch.float64)[:, None]  # (R, 1)
    inside = torch.arange(Lmax)[None, None, :] < lengths[:, None, None]  # (R, 1, Lmax)
    if draws == "orders":  # form llada (LikelihoodConfig's rule)
        return _draw_orders(lengths, K, Lmax, generator)
    if form == "llada":
        # antithetic: complementary pairs from one permutation, M1 = its first l positions,
        # M2 = its last L + 1 - l (sizes uniform in 1..L, each a uniform subset of its size),
        # so the pair masks every position once and one position twice
        pairs = draws == "antithetic"
        k = K // 2 if pairs else K
        if pairs:
            u = torch.rand((R, k), generator=generator, dtype=torch.float64)
        else:
            u = _uniforms((R, K), draws, generator)  # (R, K)
        keys = torch.rand((R, k, Lmax), generator=generator, dtype=torch.float64)
        rank = keys.masked_fill(~inside, 2.0).argsort(-1).argsort(-1)  # past L: ranked last
        size = torch.minimum((u * L).floor() + 1, L)  # (R, k) in 1..L
        masked = rank < size[..., None]  # (R, k, Lmax): a uniform subset of each size
        if pairs:
            masked = torch.cat([masked, rank >= (size - 1)[..., None]], dim=1)  # (R, K, Lmax)
            size = torch.cat([size, L + 1 - size], dim=1)  # (R, K)
        weight = torch.where(L > 0, L / size.clamp(min=1), torch.zeros_like(size))
    else:  # mdlm
        u = _uniforms((R, K), draws, generator)  # (R, K)
        keys = torch.rand((R, K, Lmax), generator=generator, dtype=torch.float64)
        t = t_min + (1.0 - t_min) * u  # (R, K)
        masked = keys < t[..., None]
        weight = torch.where(L > 0, 1.0 / t, torch.zeros_like(t))
    masked = masked & inside
    return masked, masked, weight


def _draw_orders(
    lengths: torch.Tensor, K: int, Lmax: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``orders`` draws: per continuation, ⌊K / L⌋ whole uniform decode orders σ, then the
    remaining K mod L rows from one more order, at a uniform subset of its steps. Row k of a
    whole order masks σ_k..σ_L and scores σ_k alone, weight L (the order's rows average to
    -log p_σ(x)); a remaining row masks the same set but scores all of it, weight L / l (the
    ``plain`` sample, of lower variance alone). Each row is unbiased for the NELBO: the step is
    uniform, so the masked set is a uniform set of uniform size, and σ_k is uniform in it."""
    R = lengths.shape[0]
    masked = torch.zeros((R, K, Lmax), dtype=torch.bool)
    scored = torch.zeros((R, K, Lmax), dtype=torch.bool)
    weight = torch.zeros((R, K), dtype=torch.float64)
    rows = torch.arange(K)
    for r, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        n_orders = -(-K // n)
        rank = torch.rand((n_orders, n), generator=generator).argsort(-1).argsort(-1)
        steps = torch.rand((n_orders, n), generator=generator).argsort(-1)  # steps, shuffled
        order = rows // n  # (K,) the order of each row
        step = steps[order, rows % n]  # (K,) whole orders: every step once
        masked[r, :, :n] = rank[order] >= step[:, None]
        whole = order < K // n  # (K,)
        scored[r, :, :n] = torch.where(whole[:, None], rank[order] == step[:, None], masked[r, :, :n])
        weight[r] = torch.where(whole, float(n), n / (n - step).double())
    return masked, scored, weight


def nelbo_terms(
    model: HeadModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    masked: torch.Tensor,
    weight: torch.Tensor,
    *,
    mask_token_id: int,
    scored: torch.Tensor | None = None,
) -> torch.Tensor:
    """``weight * Σ_{scored} -log p(x_i | x_unmasked)`` per row: one Monte-Carlo NELBO sample.

    The masked positions are replaced by [MASK], the model runs once to its hidden states and
    the head only at the masked ``(row, position)`` pairs; log p is the log-softmax over the
    vocabulary without [MASK] (what the decoder can propose; :func:`tabom.decoding.decode`
    sets its logit to -inf too), so the per-order likelihoods are distributions over
    sequences of real tokens.

    Args:
        model: a :class:`~tabom.head.HeadModel` (:class:`~tabom.models.base.DiffusionLM`).
        input_ids: ``(N, S)`` clean ids, left-padded.
        attention_mask: ``(N, S)`` 1 on real tokens.
        masked: ``(N, S)`` bool, the positions to mask and score (never padding).
        weight: ``(N,)`` the sample's weight (L / l, or 1 / t).
        mask_token_id: the [MASK] id.
        scored: ``(N, S)`` bool, the masked positions whose NLL counts (default: all masked).

    Returns:
        ``(N,)`` float64.
    """
    noised = input_ids.masked_fill(masked, mask_token_id)
    hidden = model.hidden_states(noised, attention_mask)  # (N, S, H)
    rows, pos = (masked if scored is None else scored & masked).nonzero(as_tuple=True)  # (M,)
    total = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
    if rows.numel():
        logits = logits_at(model, hidden, rows, pos).float()  # (M, V)
        logits[:, mask_token_id] = float("-inf")
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, input_ids[rows, pos][:, None]).squeeze(-1)  # (M,)
        total.index_add_(0, rows, nll.double())
    return total * weight.to(total)


def standard_error(
    samples: torch.Tensor, draws: Draws, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """``(R,)`` Monte-Carlo standard error of the mean of ``(R, K)`` samples.

    Antithetic: from the K/2 independent pair means; ``orders``: from the spread of the whole
    orders' means and of the remaining rows, each weighted by its share of the K rows (with
    fewer than two whole orders, s / √K over rows, which over-states it: the rows of one order
    are negatively correlated); plain: s / √K; stratified: s / √K too, which over-states it
    (the sample variance includes the between-strata part that stratification removes), so
    intervals from it are conservative.
    """
    K = samples.shape[1]
    nan = torch.full_like(samples[:, 0], math.nan)
    if draws == "antithetic":
        pairs = (samples[:, : K // 2] + samples[:, K // 2 :]) / 2
        n = pairs.shape[1]
        return pairs.std(dim=1) / math.sqrt(n) if n > 1 else nan
    if K < 2:
        return nan
    out = samples.std(dim=1) / math.sqrt(K)
    if draws == "orders" and lengths is not None:
        for r, n in enumerate(lengths.tolist()):
            whole = K // n if n else 0
            if whole < 2:
                continue
            means = samples[r, : whole * n].view(whole, n).mean(dim=1)  # (whole,)
            var = (whole * n / K) ** 2 * float(means.var()) / whole
            rest = samples[r, whole * n :]
            if rest.numel() > 1:
                var += rest.numel() * float(rest.var()) / K**2
            elif rest.numel() == 1:  # one row: its variance from the plain form is unknown
                var += float(samples[r].var()) / K**2
            out[r] = math.sqrt(var)
    return out


@torch.no_grad()
def estimate_nelbo(
    model: HeadModel,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    cfg: LikelihoodConfig,
    *,
    mask_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> NelboEstimate:
    """The NELBO of each ``(context ids, continuation ids)`` request, K samples each.

    All masks are drawn first from ``generator`` (default: seeded ``cfg.seed``), for
    :data:`DRAW_GROUP` requests at a time in request order, so the result does not depend on
    ``cfg.batch_size``; the K rows of every request are then run
    ``cfg.batch_size`` rows per forward, requests ordered by length (less padding), each row
    left-padded as everywhere else.

    Args:
        model: the model (:class:`~tabom.models.base.DiffusionLM` or any HeadModel).
        requests: ``(context, continuation)`` token id lists.
        cfg: the settings.
        mask_token_id: [MASK] id; pad_token_id: the padding id.
        generator: a CPU generator (default ``torch.Generator().manual_seed(cfg.seed)``).
        max_length: the model's longest sequence; a longer context keeps its last tokens.
        device: where the forwards run (default: the model's parameters').

    Returns:
        A :class:`NelboEstimate` in request order.

    Raises:
        ValueError: a continuation longer than ``max_length``.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    if device is None:
        params = getattr(getattr(model, "model", None), "parameters", None)
        device = next(params()).device if params is not None else torch.device("cpu")
    seqs: list[tuple[list[int], list[int]]] = []
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = list(ctx), list(cont)
        if max_length is not None:
            if len(cont) > max_length:
                raise ValueError(
                    f"request {i}: continuation of {len(cont)} tokens is longer than the "
                    f"model's {max_length} positions"
                )
            if len(ctx) + len(cont) > max_length:
                ctx = ctx[len(ctx) + len(cont) - max_length :]
        seqs.append((ctx, cont))
    R, K = len(seqs), cfg.n_samples
    lengths = torch.tensor([len(c) for _, c in seqs], dtype=torch.long)
    masks: list[torch.Tensor] = []  # per request (K, L)
    scores: list[torch.Tensor] = []  # per request (K, L)
    weight = torch.zeros((R, K), dtype=torch.float64)
    for g in range(0, R, DRAW_GROUP):  # bounded memory: (DRAW_GROUP, K, Lmax) keys at a time
        m, sc, weight[g : g + DRAW_GROUP] = draw_masks(
            lengths[g : g + DRAW_GROUP],
            K,
            generator=gen,
            form=cfg.form,
            draws=cfg.draws,
            t_min=cfg.t_min,
        )  # (G, K, Lmax) twice, (G, K)
        masks += [m[i, :, : int(n)] for i, n in enumerate(lengths[g : g + DRAW_GROUP])]
        scores += [sc[i, :, : int(n)] for i, n in enumerate(lengths[g : g + DRAW_GROUP])]
    samples = torch.zeros((R, K), dtype=torch.float64)
    order = sorted(range(R), key=lambda r: -(len(seqs[r][0]) + len(seqs[r][1])))
    jobs = [(r, k) for r in order if lengths[r] > 0 for k in range(K)]
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start : start + cfg.batch_size]
        width = max(len(seqs[r][0]) + len(seqs[r][1]) for r, _ in chunk)
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        where = torch.zeros((len(chunk), width), dtype=torch.bool)
        count = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (r, k) in enumerate(chunk):
            ctx, cont = seqs[r]
            n, c0 = len(ctx) + len(cont), width - len(cont)
            ids[row, width - n :] = torch.tensor(ctx + cont, dtype=torch.long)
            attn[row, width - n :] = 1
            where[row, c0:] = masks[r][k]
            count[row, c0:] = scores[r][k]
        w = torch.tensor([float(weight[r, k]) for r, k in chunk], dtype=torch.float64)
        vals = nelbo_terms(
            model,
            ids.to(device),
            attn.to(device),
            where.to(device),
            w.to(device),
            mask_token_id=mask_token_id,
            scored=count.to(device),
        ).cpu()
        for (r, k), v in zip(chunk, vals.tolist(), strict=True):
            samples[r, k] = v
    return NelboEstimate(
        nelbo=samples.mean(dim=1),
        se=standard_error(samples, cfg.draws, lengths),
        samples=samples,
        n_tokens=lengths,
    )


def per_token(est: NelboEstimate) -> tuple[float, float, float]:
    """Pooled ``(NELBO per token, its standard error, perplexity bound exp(NELBO per token))``.

    Sums over continuations: Σ NELBO / Σ L, the error from the per-continuation errors
    (independent draws): √(Σ se²) / Σ L.
    """
    tokens = float(est.n_tokens.sum())
    if tokens == 0:
        return math.nan, math.nan, math.nan
    value = float(est.nelbo.sum()) / tokens
    se = math.sqrt(float((est.se.nan_to_num(0.0) ** 2).sum())) / tokens
    return value, se, math.exp(value)


__all__ = [
    "Draws",
    "Form",
    "LikelihoodConfig",
    "NelboEstimate",
    "draw_masks",
    "estimate_nelbo",
    "nelbo_terms",
    "per_token",
    "standard_error",
]
