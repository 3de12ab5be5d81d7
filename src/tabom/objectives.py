"""The four post-training objectives, selected by one field (DESIGN §5 table).

``sft`` / ``traj-sft``: random masking + masked CE (the paper's Eq. 1; ``sft`` may weight by
1/t, the MDLM NELBO). ``td``: time-delay masking at a cut s + CE on the next M steps (Eq. 9
without its ranking half). ``tabom``: the same plus λ times the entropy ranking loss of
Eq. 8, i.e. the full Eq. 9. One forward per batch to the hidden states; the head then runs at
the supervised positions only (the ranked ones are among them), and the CE and the entropies
come from that one ``(N, V)`` logits tensor, optionally in chunks (``tabom.head``). Torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from tabom.head import HeadModel, as_head_model, ce_entropy_at
from tabom.losses import RankTies, entropy_rank_loss_at
from tabom.masking import CutRange, WindowUnit, random_mask, time_delay_mask

Objective = Literal["sft", "traj-sft", "td", "tabom"]
OBJECTIVES: tuple[str, ...] = ("sft", "traj-sft", "td", "tabom")


@dataclass
class LossOutput:
    """One batch's loss and the counts to log.

    Attributes:
        total: scalar to backpropagate, ce + λ·rank (``tabom``) or ce.
        ce: the masked CE term.
        rank: the ranking term (0 for every objective but ``tabom``).
        n_supervised: CE-supervised tokens in the batch.
        n_pairs: ranking pairs in the batch.
        n_rank_samples: samples with at least one ranking pair.
        n_uncut: samples that time-delay masking could not cut (s_max < M).
    """

    total: torch.Tensor
    ce: torch.Tensor
    rank: torch.Tensor
    n_supervised: int
    n_pairs: int
    n_rank_samples: int
    n_uncut: int


def compute_objective(
    model_fn: HeadModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    decode_step: torch.Tensor | None = None,
    decode_entropy: torch.Tensor | None = None,
    *,
    objective: Objective,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    td_window: int = 32,
    rank_window: int = 32,
    rank_margin: float = 0.1,
    rank_weight: float = 1.0,
    rank_ties: RankTies = "strict",
    window_unit: WindowUnit = "steps",
    td_cut_range: CutRange = "design",
    nelbo_weight: bool = False,
    loss_chunk: int = 0,
) -> LossOutput:
    """Mask the batch, run one forward and return the objective's loss.

    Args:
        model_fn: a :class:`~tabom.head.HeadModel` (a ``DiffusionLM``: hidden states, then the
            head at the supervised positions only) or any ``(input_ids, attention_mask) ->
            (B, L, V)`` aligned-logits callable (its rows are gathered once).
        input_ids: ``(B, L)`` clean ids, [left pad | prompt | response].
        attention_mask: ``(B, L)``, passed to ``model_fn`` unchanged.
        response_mask: ``(B, L)`` bool, True on response positions.
        decode_step: ``(B, L)`` long, d at response positions, -1 elsewhere; required for
            ``td`` and ``tabom``.
        decode_entropy: ``(B, L)`` float, for ``rank_ties="decode-entropy"``.
        objective: ``sft``, ``traj-sft``, ``td`` or ``tabom``.
        mask_token_id: id of [MASK].
        generator: source of the masking randomness.
        td_window: M, the supervision window (decode steps, or tokens per ``window_unit``).
        rank_window: W, the ranking window.
        rank_margin: m, the hinge margin.
        rank_weight: λ, the ranking weight.
        rank_ties: how same-step pairs are ranked (see :func:`entropy_rank_loss`).
        window_unit: ``steps`` or ``tokens``, the unit of M and W.
        td_cut_range: ``design`` ({0, …, s_max − M}) or ``inclusive`` ({0, …, s_max − M + 1}):
            see :func:`tabom.masking.time_delay_mask`.
        nelbo_weight: weight CE by 1/t and divide by the response length (the NELBO of
            Eq. 1); random-mask objectives only.
        loss_chunk: apply the head to this many supervised rows at a time and recompute them
            in backward (bounded memory at large V; same values); 0 = all rows at once.

    Returns:
        A :class:`LossOutput`.

    Raises:
        ValueError: on an unknown objective, a missing ``decode_step``, or ``nelbo_weight``
            with a time-delay objective.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    trajectory = objective in ("td", "tabom")
    if trajectory and decode_step is None:
        raise ValueError(f"objective {objective!r} needs decode_step (trajectories)")
    if trajectory and nelbo_weight:
        raise ValueError(f"nelbo_weight applies to sft / traj-sft, not {objective!r}")
    if loss_chunk < 0:
        raise ValueError(f"loss_chunk must be >= 0, got {loss_chunk}")

    # 1) mask: random ratio t per sample, or the trajectory state at a cut s
    if trajectory:
        plan = time_delay_mask(
            input_ids,
            decode_step,
            response_mask=response_mask,
            window=td_window,
            mask_token_id=mask_token_id,
            generator=generator,
            window_unit=window_unit,
            cut_range=td_cut_range,
        )
    else:
        plan = random_mask(
            input_ids, response_mask, mask_token_id=mask_token_id, generator=generator
        )

    # 2) one forward to the hidden states; the head only at the supervised rows (N, V): the
    #    ranked positions are supervised ones, so CE and entropies share one gather
    model = as_head_model(model_fn)
    hidden = model.hidden_states(plan.input_ids, attention_mask)  # (B, L, H)
    sel = plan.supervise.bool()
    rows, cols = sel.nonzero(as_tuple=True)  # (N,), row-major like logits[sel]
    ce_rows, h_rows = ce_entropy_at(
        model,
        hidden,
        rows,
        cols,
        input_ids[rows, cols],
        chunk=loss_chunk,
        entropy=objective == "tabom",
    )  # (N,), (N,)

    # 3) CE on the supervised positions (token mean, or the 1/t NELBO)
    if nelbo_weight:
        ce = (ce_rows * (1.0 / plan.t)[rows]).sum() / response_mask.sum().clamp(min=1)
    else:
        ce = ce_rows.sum() / sel.sum().clamp(min=1)

    # 4) ranking on the same rows' entropies (tabom only)
    rank = torch.zeros((), device=hidden.device)
    n_pairs = n_rank_samples = 0
    total = ce
    if objective == "tabom":
        entropy = torch.zeros(sel.shape, dtype=h_rows.dtype, device=h_rows.device)
        entropy = entropy.index_put((rows, cols), h_rows)  # (B, L), valid where supervised
        out = entropy_rank_loss_at(
            entropy,
            decode_step,
            plan.cut,
            window=rank_window,
            margin=rank_margin,
            supervise=plan.supervise,
            ties=rank_ties,
            decode_entropy=decode_entropy,
            window_unit=window_unit,
        )
        rank, n_pairs, n_rank_samples = out.loss, out.n_pairs, out.n_samples
        total = ce + rank_weight * rank
    return LossOutput(
        total=total,
        ce=ce,
        rank=rank,
        n_supervised=int(plan.supervise.sum()),
        n_pairs=n_pairs,
        n_rank_samples=n_rank_samples,
        n_uncut=plan.n_uncut,
    )
