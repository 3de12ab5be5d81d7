"""Training losses as functions of tensors (DESIGN §5).

``masked_ce``: cross-entropy on supervised positions, the plain token mean (the reference
trainer) or weighted by 1/t per sample (the MDLM NELBO of the paper's Eq. 1). Torch only.
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
