"""Training losses as functions of tensors (DESIGN §5; the paper's Eqs. 1, 8 and 9).

``masked_ce``: cross-entropy on supervised positions, the plain token mean (the reference
trainer, the CE half of Eq. 9) or weighted by 1/t per sample (the MDLM NELBO of Eq. 1).
``entropy_rank_loss``: the pairwise entropy hinge of Eq. 8 — within the window after the cut,
an earlier-decoded token must have lower predictive entropy by a margin m. Vectorised over
the batch: entropies only at window positions, pairs as one masked (B, K, K) tensor.
Torch only; the objectives that combine them live in ``tabom.objectives``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tabom.masking import WindowUnit, window_mask

RankTies = Literal["strict", "reference", "decode-entropy"]


def masked_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    supervise: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Cross-entropy over supervised positions.

    Args:
        logits: ``(B, L, V)`` aligned logits.
        targets: ``(B, L)`` clean token ids.
        supervise: ``(B, L)`` bool, positions that contribute.
        t: ``(B,)`` masking ratios; when given each token's CE is weighted by 1/t (NELBO).
        normalizer: divide the (weighted) sum by this; default the number of supervised
            tokens (a token mean). The NELBO divides by the number of response tokens instead.

    Returns:
        A scalar; 0 (with a graph) when nothing is supervised.
    """
    sel = supervise.bool()
    ce = F.cross_entropy(logits[sel].float(), targets[sel], reduction="none")  # (N,)
    if t is not None:
        weight = (1.0 / t)[:, None].expand_as(supervise)[sel]
        ce = ce * weight
    if normalizer is None:
        normalizer = sel.sum().clamp(min=1)
    return ce.sum() / normalizer


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half / bfloat16 to fp32; fp32 and fp64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


_LOG_ZERO = -1e4  # exp(-1e4) == 0 in fp32: below this, p log p is exactly 0


class _Entropy(torch.autograd.Function):
    """H = -Σ p log p over the last axis, in (at least) fp32; recomputes p in backward.

    Only the logits and H are saved for backward. dH/dz_j = -p_j (log p_j + H). log p is clamped where p underflows to 0 so that 0 · log 0
    gives 0 (not NaN) for -inf logits; p is exactly 0 there in fp32, so the value is unchanged.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(_at_least_fp32(logits), dim=-1)
        p = logp.exp()
        h = -p.mul_(logp.clamp_(min=_LOG_ZERO)).sum(-1)
        ctx.save_for_backward(logits, h)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: torch.Tensor) -> torch.Tensor:
        logits, h = ctx.saved_tensors
        logp = torch.log_softmax(_at_least_fp32(logits), dim=-1)
        p = logp.exp()
        grad = logp.clamp_(min=_LOG_ZERO).add_(h[..., None]).mul_(p).mul_(-grad_h[..., None])
        return grad.to(logits.dtype)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, in fp32, differentiable.

    Memory: two fp32 temporaries of the logits' shape in forward and two in backward, freed on
    return; only the logits and H are kept for backward (autograd of the formula keeps
    three: log p, p and the clamped log p).

    Args:
        logits: ``(..., V)`` logits (any float dtype; -inf entries allowed).

    Returns:
        ``(...)`` entropies in nats, fp32 (fp64 for fp64 logits).
    """
    return _Entropy.apply(logits)


@dataclass
class RankOutput:
    """The ranking term and what it was averaged over.

    Attributes:
        loss: scalar, mean over samples with at least one pair of their mean pair hinge;
            0 (with a graph to the logits) when no sample has a pair.
        n_pairs: ordered pairs in the batch.
        n_samples: samples with at least one pair.
    """

    loss: torch.Tensor
    n_pairs: int
    n_samples: int


def entropy_rank_loss(
    logits: torch.Tensor,
    decode_step: torch.Tensor,
    cut: torch.Tensor,
    *,
    window: int,
    margin: float,
    supervise: torch.Tensor | None = None,
    ties: RankTies = "strict",
    decode_entropy: torch.Tensor | None = None,
    window_unit: WindowUnit = "steps",
) -> RankOutput:
    """Pairwise entropy hinge over the decode window after the cut (Eq. 8).

    Candidates are positions with s ≤ d < s + W (``window_unit="steps"``; the first W
    tokens with d ≥ s for ``tokens``), restricted to ``supervise`` when given, so the
    effective window is min(W, M). H is computed only there. For each ordered pair (i, j)
    with i decoded before j, loss_ij = max(0, H_i − H_j + m); sample term = mean over its
    pairs; the loss is the mean over samples with at least one pair.

    Args:
        logits: ``(B, L, V)`` aligned logits of the one forward at the cut state.
        decode_step: ``(B, L)`` long, d per position, -1 where never decoded / not response.
        cut: ``(B,)`` long, the cut s per sample; -1 for samples that were not cut.
        window: W, the ranking window, in ``window_unit``.
        margin: m, the hinge margin.
        supervise: ``(B, L)`` bool, the CE-supervised positions (the TD window of size M).
        ties: same-step pairs: ``strict`` excludes them (Eq. 8); ``reference`` orders them
            by position like the authors' sorted decode order; ``decode-entropy`` orders
            them by the recorded ``decode_entropy``, lower first (Definition 1), position
            breaking exact ties.
        decode_entropy: ``(B, L)`` float, required for ``ties="decode-entropy"``.
        window_unit: ``steps`` (the authors' code) or ``tokens`` (the paper).

    Returns:
        A :class:`RankOutput`.

    Raises:
        ValueError: on an unknown ``ties`` or a missing ``decode_entropy``.
    """
    return _rank_loss(
        lambda rows, idx: token_entropy(logits[rows, idx]),  # (B, K, V) -> (B, K)
        logits[:, :0].float().sum(),
        decode_step,
        cut,
        window=window,
        margin=margin,
        supervise=supervise,
        ties=ties,
        decode_entropy=decode_entropy,
        window_unit=window_unit,
    )


def entropy_rank_loss_at(
    entropy: torch.Tensor,
    decode_step: torch.Tensor,
    cut: torch.Tensor,
    *,
    window: int,
    margin: float,
    supervise: torch.Tensor | None = None,
    ties: RankTies = "strict",
    decode_entropy: torch.Tensor | None = None,
    window_unit: WindowUnit = "steps",
) -> RankOutput:
    """:func:`entropy_rank_loss` on precomputed entropies (the head applied at N rows only).

    Args:
        entropy: ``(B, L)`` fp32 entropies, valid (and differentiable) at every candidate
            position, i.e. every ``supervise`` position in the window; other entries unused.
        decode_step, cut, window, margin, supervise, ties, decode_entropy, window_unit: as in
            :func:`entropy_rank_loss`.

    Returns:
        A :class:`RankOutput`, equal to :func:`entropy_rank_loss` on logits whose entropies
        these are.
    """
    return _rank_loss(
        lambda rows, idx: entropy[rows, idx],  # (B, K)
        entropy[:, :0].sum(),
        decode_step,
        cut,
        window=window,
        margin=margin,
        supervise=supervise,
        ties=ties,
        decode_entropy=decode_entropy,
        window_unit=window_unit,
    )


def _rank_loss(
    entropy_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    zero: torch.Tensor,
    decode_step: torch.Tensor,
    cut: torch.Tensor,
    *,
    window: int,
    margin: float,
    supervise: torch.Tensor | None,
    ties: RankTies,
    decode_entropy: torch.Tensor | None,
    window_unit: WindowUnit,
) -> RankOutput:
    """The hinge of Eq. 8 given ``entropy_at(rows (B, 1), idx (B, K)) -> (B, K)``."""
    if ties not in ("strict", "reference", "decode-entropy"):
        raise ValueError(f"rank_ties must be strict, reference or decode-entropy, got {ties!r}")
    if ties == "decode-entropy" and decode_entropy is None:
        raise ValueError("rank_ties='decode-entropy' needs decode_entropy (B, L)")
    b = decode_step.shape[0]
    device = decode_step.device

    # 1) candidates, gathered first along L in position order: idx (B, K), K = max count
    cand = window_mask(decode_step, cut, width=window, unit=window_unit, eligible=supervise)
    count = cand.sum(1)  # (B,)
    k = int(count.max()) if b else 0
    if k < 2:  # no pair anywhere: 0, still attached to the logits (every rank joins backward)
        return RankOutput(loss=zero, n_pairs=0, n_samples=0)
    idx = (~cand).to(torch.uint8).argsort(dim=1, stable=True)[:, :k]  # (B, K)
    slot = torch.arange(k, device=device) < count[:, None]  # (B, K) real candidates

    # 2) entropies at the candidates only: (B, K, V) -> (B, K)
    rows = torch.arange(b, device=device)[:, None]
    h = entropy_at(rows, idx)  # (B, K)

    # 3) ordered pairs (i before j) as one (B, K, K) mask
    d = decode_step.gather(1, idx)  # (B, K)
    d_i, d_j = d[:, :, None], d[:, None, :]
    before = d_i < d_j
    if ties != "strict":
        same = d_i == d_j
        p_i, p_j = idx[:, :, None], idx[:, None, :]
        if ties == "reference":
            before = before | (same & (p_i < p_j))
        else:
            e = decode_entropy.gather(1, idx).float()  # (B, K)
            e_i, e_j = e[:, :, None], e[:, None, :]
            before = before | (same & ((e_i < e_j) | ((e_i == e_j) & (p_i < p_j))))
    pairs = before & slot[:, :, None] & slot[:, None, :]  # (B, K, K)

    # 4) hinge, mean over each sample's pairs, mean over samples with a pair
    hinge = torch.relu(h[:, :, None] - h[:, None, :] + margin) * pairs  # (B, K, K)
    n = pairs.sum((1, 2))  # (B,)
    per_sample = hinge.sum((1, 2)) / n.clamp(min=1)
    has = n > 0
    loss = (per_sample * has).sum() / has.sum().clamp(min=1)
    return RankOutput(loss=loss, n_pairs=int(n.sum()), n_samples=int(has.sum()))
