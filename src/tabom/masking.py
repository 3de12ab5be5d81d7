"""Input masking for masked-diffusion training (DESIGN §5; the paper's Eq. 1, the NELBO).

``random_mask`` draws one masking ratio t ~ U(eps, 1) per sample and masks each response token
independently with probability t: the standard MDLM / SFT corruption. The prompt is never
masked. Torch only; every random draw takes a ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskPlan:
    """What to feed the model and what to supervise.

    Attributes:
        input_ids: ``(B, L)`` ids with [MASK] at masked response positions.
        supervise: ``(B, L)`` bool, positions whose clean token the CE loss predicts.
        t: ``(B,)`` masking ratio per sample (for the optional 1/t NELBO weight).
    """

    input_ids: torch.Tensor
    supervise: torch.Tensor
    t: torch.Tensor


def random_mask(
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
) -> MaskPlan:
    """Mask each response token with a per-sample probability t ~ U(eps, 1).

    Args:
        input_ids: ``(B, L)`` clean ids, prompt and response.
        response_mask: ``(B, L)`` bool, True on response positions (never on prompt or pad).
        mask_token_id: id written at masked positions.
        generator: source of randomness (on ``input_ids``'s device).
        eps: smallest masking ratio (keeps the 1/t weight finite).

    Returns:
        A :class:`MaskPlan`; ``supervise`` is exactly the masked positions.
    """
    b, length = input_ids.shape
    device = input_ids.device
    t = eps + (1 - eps) * torch.rand(b, generator=generator, device=device)  # (B,)
    u = torch.rand(b, length, generator=generator, device=device)  # (B, L)
    masked = (u < t[:, None]) & response_mask.bool()
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return MaskPlan(input_ids=noisy, supervise=masked, t=t)
