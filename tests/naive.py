"""Slow, obviously correct references of the training losses (issue 20: one loss path).

Training runs ``tabom.objectives.compute_objective``: the CE, the entropies and PAPL's
planner confidences per supervised row from ``tabom.head``, then ``tabom.losses.rank_loss``
and ``tabom.losses.planner_weights``. The tests compare that path with these references,
computed from full ``(B, L, V)`` logits: ``masked_ce`` (the CE of Eq. 1 / the MDLM NELBO,
the plain gather the head path replaced; the unchunked head path equals it bit for bit),
``rank_loss_loop`` (every ranking variant, per sample and per pair on scalars) and
``papl_loop`` (PAPL's planner-weighted CE, per token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    supervise: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Cross-entropy over supervised positions: the token mean, or weighted by 1/t per sample
    (the NELBO) and divided by ``normalizer`` (the number of response tokens)."""
    sel = supervise.bool()
    ce = F.cross_entropy(logits[sel].float(), targets[sel], reduction="none")  # (N,)
    if t is not None:
        ce = ce * (1.0 / t)[:, None].expand_as(supervise)[sel]
    if normalizer is None:
        normalizer = sel.sum().clamp(min=1)
    return ce.sum() / normalizer


def entropies(logits: torch.Tensor) -> torch.Tensor:
    """H = -Σ p log p over the vocabulary, by the formula: ``(B, L)``."""
    return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)


def _ordered(ds, decode_entropy, b, i, j, ties) -> bool:
    """Is candidate i ranked before j (decoded earlier, or tied and ordered by ``ties``)?"""
    di, dj = int(ds[b, i]), int(ds[b, j])
    if di != dj:
        return di < dj
    if i == j or ties == "strict":
        return False
    if ties == "reference":
        return i < j
    return (float(decode_entropy[b, i]), i) < (float(decode_entropy[b, j]), j)


def rank_loss_loop(
    logits,
    ds,
    cut,
    supervise,
    *,
    variant="hinge",
    window,
    margin,
    ties="strict",
    decode_entropy=None,
    unit="steps",
    margin_fraction=0.5,
    beta=1.0,
):
    """Every ranking variant, per sample and per ordered pair on scalars (Eq. 8 and the rest).

    Candidates: supervised positions with s <= d < s + W (``steps``), or the first W of the
    positions with d >= s in (d, position) order (``tokens``). Entropies from the full-L
    probabilities. Sample term = mean over its pairs (Plackett–Luce: over its candidates
    with a later one), loss = mean over samples with a term.
    """
    h_all = entropies(logits.float() if logits.dtype != torch.float64 else logits)
    sample_terms = []
    for b in range(logits.shape[0]):
        s = int(cut[b])
        if s < 0:
            continue
        after = [p for p in range(ds.shape[1]) if supervise[b, p] and int(ds[b, p]) >= s]
        after.sort(key=lambda p: (int(ds[b, p]), p))
        if unit == "steps":
            cands = [p for p in after if int(ds[b, p]) < s + window]
        else:
            cands = after[:window]
        if margin == "auto":
            m = margin_fraction * sum(h_all[b, p].item() for p in cands) / max(len(cands), 1)
        else:
            m = margin
        terms = []
        for i in cands:
            later = [j for j in cands if _ordered(ds, decode_entropy, b, i, j, ties)]
            if variant == "plackett-luce":
                if later:
                    z = 1 + sum(torch.exp(beta * (h_all[b, i] - h_all[b, j] + m)) for j in later)
                    terms.append(torch.log(z))
                continue
            for j in later:
                hi, hj = h_all[b, i], h_all[b, j]
                if variant.endswith("-sg"):
                    hj = hj.detach()
                if variant.startswith("hinge"):
                    terms.append(torch.clamp(hi - hj + m, min=0))
                elif variant.startswith("logistic"):
                    terms.append(F.softplus(beta * (hi - hj + m)))
                else:
                    raise KeyError(f"no naive loop for ranking variant {variant!r}")
        if terms:
            sample_terms.append(sum(terms) / len(terms))
    if not sample_terms:
        return logits.sum() * 0
    return sum(sample_terms) / len(sample_terms)


def papl_loop(logits, targets, supervise, *, tau, mix, mask_token_id):
    """PAPL's CE per token: w_p = (1 − mix) + mix · n_b c_p^{1/τ} / Σ_q c_q^{1/τ} (detached),
    c_p = q(x_p) with [MASK] left out; Σ w_p CE_p / (supervised tokens). Returns (loss, w)."""
    z = logits.detach().double().clone()
    z[..., mask_token_id] = -torch.inf
    q = torch.softmax(z, -1)
    total, n_all = 0.0, int(supervise.sum())
    weights = torch.zeros(supervise.shape, dtype=torch.float64)
    for b in range(logits.shape[0]):
        ps = [p for p in range(logits.shape[1]) if supervise[b, p]]
        c = {p: float(q[b, p, targets[b, p]]) for p in ps}
        zsum = sum(c[p] ** (1 / tau) for p in ps)
        for p in ps:
            w = (1 - mix) + mix * len(ps) * c[p] ** (1 / tau) / zsum
            weights[b, p] = w
            total = total + w * F.cross_entropy(logits[b, p][None], targets[b, p][None])
    return total / max(n_all, 1), weights
