"""Input masking for masked-diffusion training (DESIGN §5; the paper's Eqs. 1 and 9).

``random_mask`` draws one masking ratio t ~ U(eps, 1) per sample and masks each response token
independently with probability t: the standard MDLM / SFT corruption of Eq. 1.
``time_delay_mask`` replays a recorded trajectory instead: at a cut s it shows exactly the
tokens decoded before step s (a state the sampler passed through) and supervises the ones
decoded in the next M steps, the segment Δ of Eq. 9. ``confidence_reveal_order`` makes the
trajectory for PUMA (arXiv 2602.10314): the order in which the model's own confidence would
reveal the ground-truth answer, recomputed with the current weights, which
``time_delay_mask`` then replays. The prompt is never masked. Torch only; every random draw
takes a ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

CutRange = Literal["design", "inclusive"]
WindowUnit = Literal["steps", "tokens"]


@dataclass
class MaskPlan:
    """What to feed the model and what to supervise.

    Attributes:
        input_ids: ``(B, L)`` ids with [MASK] at masked response positions.
        supervise: ``(B, L)`` bool, positions whose clean token the CE loss predicts.
        t: ``(B,)`` masking ratio per sample (for the optional 1/t NELBO weight); for
            time-delay masking the fraction of response positions that are masked.
        cut: ``(B,)`` long, the time-delay cut s per sample, -1 where the sample could not
            be cut; None for random masking.
        valid: ``(B,)`` bool, samples that contribute (False exactly where ``cut == -1``);
            None for random masking (every sample is valid).
        n_uncut: number of samples that could not be cut (too few decode steps); they stay
            in the batch with nothing supervised so that the count can be logged.
        distant: ``(B, L)`` bool, TAD's distant positions (masked in the state and still
            masked ``delta`` steps later: the soft-KL set, :func:`tad_mask`); None otherwise.
    """

    input_ids: torch.Tensor
    supervise: torch.Tensor
    t: torch.Tensor
    cut: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    n_uncut: int = 0
    distant: torch.Tensor | None = None


def cut_extra(cut_range: CutRange) -> int:
    """The one cut-range rule: how many cuts past DESIGN §5's range a sample allows (0 or 1).

    ``design``: s ∈ {0, …, s_max − M} (the last decode step is never supervised);
    ``inclusive``: s ∈ {0, …, s_max − M + 1}. A trajectory with ``room`` (s_max in steps, the
    decoded tokens minus one in tokens) can be cut iff ``room + cut_extra(...) >= M``.
    """
    return int(cut_range == "inclusive")


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


def window_mask(
    decoding_order: torch.Tensor,
    cut: torch.Tensor,
    *,
    width: int,
    unit: WindowUnit = "steps",
    eligible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions decoded in the window that starts at the cut.

    ``steps``: s ≤ d < s + width. ``tokens``: the first ``width`` positions with d ≥ s in
    decode order, same-step tokens ordered by position (the boundary step may be split).

    Args:
        decoding_order: ``(B, L)`` long, d per position, -1 where never decoded / not response.
        cut: ``(B,)`` long, s per sample; -1 selects nothing for that sample.
        width: window size (M or W) in ``unit``.
        unit: ``steps`` (the authors' code) or ``tokens`` (the paper's Eq. 9).
        eligible: ``(B, L)`` bool, restrict the window to these positions.

    Returns:
        ``(B, L)`` bool.
    """
    s = cut[:, None]  # (B, 1)
    after = (decoding_order >= s) & (decoding_order >= 0) & (s >= 0)  # (B, L)
    if eligible is not None:
        after = after & eligible.bool()
    if unit == "steps":
        return after & (decoding_order < s + width)
    # rank of each position in (d, p) order among the positions after the cut
    length = decoding_order.shape[1]
    pos = torch.arange(length, device=decoding_order.device)
    key = torch.where(after, decoding_order * length + pos, torch.iinfo(torch.long).max)
    order = key.argsort(dim=1)  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, pos.expand_as(order).contiguous())
    return after & (rank < width)


def time_delay_mask(
    input_ids: torch.Tensor,
    decoding_order: torch.Tensor,
    *,
    response_mask: torch.Tensor,
    window: int,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    window_unit: WindowUnit = "steps",
    cut_range: CutRange = "design",
) -> MaskPlan:
    """Cut each trajectory at a random step s: reveal d < s, supervise the next window.

    Per sample, s_max = max d over decoded positions and s is drawn uniformly from
    {0, …, s_max − M} (DESIGN §5; ``cut_range="inclusive"``: {0, …, s_max − M + 1}, so the
    window can reach the last step). The input shows the clean token where 0 ≤ d < s and
    [MASK] at every other response position (never-decoded ones included): exactly a state
    the sampler passed through. CE supervises s ≤ d < s + M, so the last step d = s_max is
    never supervised. A sample with s_max < M cannot be cut: it keeps a fully masked response,
    supervises nothing, gets ``cut = -1`` and ``valid = False`` and is counted in ``n_uncut``.
    With ``window_unit="tokens"`` M counts tokens: s ranges up to the (M+1)-th largest d and
    the first M tokens with d ≥ s (decode order, then position) are supervised.

    Args:
        input_ids: ``(B, L)`` clean ids, [left pad | prompt | response].
        decoding_order: ``(B, L)`` long, d at response positions, -1 at prompt, pad and
            never-decoded positions.
        response_mask: ``(B, L)`` bool, True on response positions.
        window: M, the supervision window, in ``window_unit``.
        mask_token_id: id written at masked positions.
        generator: source of randomness (on ``input_ids``'s device); one uniform is drawn
            per sample whether or not it can be cut, so the draws do not depend on the data.
        window_unit: ``steps`` (default, the authors' code) or ``tokens`` (the paper).
        cut_range: ``design`` (DESIGN §5: the last decode step is never supervised, and a
            trajectory of exactly M steps cannot be cut) or ``inclusive`` (one more cut per
            sample: every window of M steps that fits, the last one included).

    Returns:
        A :class:`MaskPlan` with ``cut``, ``valid`` and ``n_uncut`` set.

    Raises:
        ValueError: a decode step lies outside the response.
    """
    resp = response_mask.bool()
    decoded = decoding_order >= 0  # (B, L)
    if (decoded & ~resp).any():
        raise ValueError("decoding_order is >= 0 outside response_mask (prompt or pad)")
    b = input_ids.shape[0]
    device = input_ids.device

    # 1) the last cut each sample allows: s_hi = s_max − M (steps) or the (M+1)-th largest d;
    #    one more with the inclusive range (s_max − M + 1, or the M-th largest d)
    extra = cut_extra(cut_range)
    if window_unit == "steps":
        s_max = decoding_order.max(dim=1).values  # (B,); -1 when nothing was decoded
        s_hi = torch.where(s_max >= 0, s_max - window + extra, torch.full_like(s_max, -1))
    else:  # tokens
        desc = decoding_order.sort(dim=1, descending=True).values  # (B, L), -1 last
        k = window - extra  # index of the (M+1)-th (design) or M-th (inclusive) largest d
        s_hi = desc[:, k] if k < desc.shape[1] else torch.full_like(desc[:, 0], -1)
    valid = s_hi >= 0  # (B,)

    # 2) s uniform on {0, …, s_hi}
    u = torch.rand(b, generator=generator, device=device)  # (B,)
    n_choices = (s_hi + 1).clamp(min=1)
    s = torch.minimum((u * n_choices).long(), n_choices - 1)
    cut = torch.where(valid, s, torch.full_like(s, -1))

    # 3) reveal 0 ≤ d < s, mask every other response position, supervise the window
    revealed = decoded & (decoding_order < cut[:, None])  # (B, L); cut = -1 reveals nothing
    masked = resp & ~revealed
    supervise = window_mask(decoding_order, cut, width=window, unit=window_unit)
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    t = masked.sum(1) / resp.sum(1).clamp(min=1)  # (B,) fraction of the response masked
    return MaskPlan(
        input_ids=noisy,
        supervise=supervise,
        t=t.float(),
        cut=cut,
        valid=valid,
        n_uncut=int((~valid).sum()),
    )


def tad_mask(
    input_ids: torch.Tensor,
    decoding_order: torch.Tensor,
    *,
    response_mask: torch.Tensor,
    delta: int,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> MaskPlan:
    """TAD's state (arXiv 2605.09536, the authors' ``TrajectoryDataset``): a recorded state
    and its near and distant masked positions.

    Per sample the state index s is drawn uniformly from every state the sampler passed
    through but the last, {0, …, s_max} (s = 0: all masked; the released code draws a
    (record, step) pair uniformly, so every step of every trajectory is equally likely).
    The input shows the clean token where 0 ≤ d < s and [MASK] at every other response
    position. *Near* (``supervise``, hard CE on the trajectory token): masked positions
    decoded within the next ``delta`` steps, s ≤ d < s + delta (the code's
    ``min(step + delta, last)`` target state; near the end the window is cut short).
    *Distant* (soft KL to the teacher): masked positions still masked ``delta`` steps
    later, d ≥ s + delta, and never-decoded response positions. A sample with nothing
    decoded gets ``cut = -1`` and nothing near or distant.

    Args:
        input_ids: ``(B, L)`` clean ids, [left pad | prompt | response].
        decoding_order: ``(B, L)`` long, d at response positions, -1 elsewhere / never decoded.
        response_mask: ``(B, L)`` bool, True on response positions.
        delta: the near window in decode steps (the code's ``delta``; 8 in its LLaDA run).
        mask_token_id: id written at masked positions.
        generator: source of randomness; one uniform per sample.

    Returns:
        A :class:`MaskPlan` with ``supervise`` = near, ``distant`` set, ``cut``, ``valid``.

    Raises:
        ValueError: a decode step outside the response.
    """
    resp = response_mask.bool()
    decoded = decoding_order >= 0
    if (decoded & ~resp).any():
        raise ValueError("decoding_order is >= 0 outside response_mask (prompt or pad)")
    b = input_ids.shape[0]
    s_max = decoding_order.max(dim=1).values  # (B,); -1 when nothing was decoded
    valid = s_max >= 0
    u = torch.rand(b, generator=generator, device=input_ids.device)
    n_choices = (s_max + 1).clamp(min=1)
    s = torch.minimum((u * n_choices).long(), n_choices - 1)
    cut = torch.where(valid, s, torch.full_like(s, -1))
    revealed = decoded & (decoding_order < cut[:, None])
    masked = resp & ~revealed & valid[:, None]
    near = window_mask(decoding_order, cut, width=delta, unit="steps")
    distant = masked & ~near
    noisy = torch.where(resp & ~revealed, torch.full_like(input_ids, mask_token_id), input_ids)
    t = (resp & ~revealed).sum(1) / resp.sum(1).clamp(min=1)
    return MaskPlan(
        input_ids=noisy,
        supervise=near,
        t=t.float(),
        cut=cut,
        valid=valid,
        n_uncut=int((~valid).sum()),
        distant=distant,
    )


@torch.no_grad()
def confidence_reveal_order(
    forward: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    mask_token_id: int,
) -> torch.Tensor:
    """PUMA's progressive unmasking of the ground truth: the model's own reveal order.

    Start from the response fully masked. At each step run one forward (no gradient) on the
    current state, score every still-masked response position by the sampler's confidence
    max_v q(v) (LLaDA's low-confidence remasking, ``decode.score: confidence``; q = softmax
    of the logits with [MASK] excluded) and reveal the best one with its **ground-truth**
    token (never the model's proposal), ties to the lower position like
    ``decoding.select_top_k``; repeat until the response is revealed. The result is a
    trajectory of the ground truth in the order the confidence sampler would take it, for
    :func:`time_delay_mask`: the ``puma`` objective is time-delay masking on this order,
    recomputed with the current weights for every batch ("on line").

    Args:
        forward: ``input_ids (B, L) -> logits (B, L, V)`` aligned (the caller closes over
            the attention mask).
        input_ids: ``(B, L)`` clean ids, [left pad | prompt | ground-truth response].
        response_mask: ``(B, L)`` bool, True on response positions.
        mask_token_id: id written at hidden positions; its logit never counts in a score.

    Returns:
        ``(B, L)`` long decoding order: step i at the position revealed by forward i, -1
        outside the response. Every row runs T_b steps, T_b its response length.

    Raises:
        ValueError: logits of the wrong shape, or NaN scores.
    """
    resp = response_mask.bool()
    b, length = input_ids.shape
    device = input_ids.device
    decoding_order = torch.full((b, length), -1, dtype=torch.long, device=device)
    pos = torch.arange(length, device=device).expand(b, length)
    step = 0
    while True:
        hidden = resp & (decoding_order < 0)  # (B, L) still masked
        if not bool(hidden.any()):
            return decoding_order
        # 1) the state before this step: ground truth where revealed, [MASK] elsewhere
        x = torch.where(hidden, torch.full_like(input_ids, mask_token_id), input_ids)
        logits = forward(x)
        if logits.dim() != 3 or logits.shape[:2] != x.shape:
            raise ValueError(f"forward returned logits {tuple(logits.shape)} for {tuple(x.shape)}")
        z = logits[hidden].float()  # (N, V), the still-masked rows only (a copy)
        z[:, mask_token_id] = float("-inf")
        # 2) log max q of every still-masked position; -inf elsewhere
        s = torch.full((b, length), float("-inf"), device=device)
        s[hidden] = z.log_softmax(-1).max(-1).values
        if bool(torch.isnan(s).any()):
            raise ValueError(f"puma step {step}: the model's logits give NaN scores")
        # 3) the best hidden position of each row (argmax: the first, so ties go to the
        #    lower position); a hidden position always outranks a visible one (finite
        #    scores vs -inf), a row with none left reveals nothing
        reveal = hidden & (pos == s.argmax(dim=1, keepdim=True))  # (B, L)
        decoding_order = torch.where(reveal, step, decoding_order)
        step += 1
