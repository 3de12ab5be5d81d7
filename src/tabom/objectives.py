"""The post-training objectives, selected by one field (DESIGN §5 table, issue 12 controls).

``sft`` / ``traj-sft``: random masking + masked CE (the paper's Eq. 1; ``sft`` may weight by
1/t, the MDLM NELBO). ``td``: time-delay masking at a cut s + CE on the next M steps (Eq. 9
without its ranking half). ``tabom``: the same plus λ times a ranking term (``rank_loss``;
``hinge`` is Eq. 8, i.e. the full Eq. 9). Controls on the ground truth: ``puma``
(time-delay masking along the model's own confidence reveal order, recomputed per batch,
arXiv 2602.10314) and ``papl`` (random masking, CE weighted by a detached softmax planner,
arXiv 2509.23405). ``tad`` (arXiv 2605.09536, the closest concurrent method): on the same
trajectories, a recorded state at a uniform step s, hard CE on the tokens decoded in the next
``tad_delta`` steps and τ² KL(teacher ‖ student) on the still-masked rest, the teacher the frozen
base recomputed at the same state (``teacher=``; docs/method.md). One training forward per batch to the hidden states (``puma`` adds no-grad
reveal forwards); the LM head then runs at the supervised positions only (the ranked ones are
among them), and the CE, the entropies and PAPL's planner weights come from those rows,
optionally in chunks (``tabom.head``, ``loss_chunk``). Torch only.

:class:`LossConfig` is the one group of loss settings (``--loss.*`` on every command that
trains), checked once (its fields' ranges, ``config.check_ranges``). A ranking variant is one
term registered in :data:`tabom.losses.RANK_LOSSES` (``@rank_term(NAME)``); a knob NAME of the
term (a keyword-only parameter) is the field ``rank_NAME`` here, with its range in the field's
metadata.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from tabom import losses as _losses
from tabom.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT, check_ranges
from tabom.head import HeadModel, loss_terms, pair_logits
from tabom.losses import RankTies, planner_weights, rank_loss, tad_loss, teacher_kl
from tabom.masking import (
    CutRange,
    WindowUnit,
    confidence_reveal_order,
    random_mask,
    tad_mask,
    time_delay_mask,
)

if TYPE_CHECKING:
    from tabom.train_data import TrajectoryBatch

Objective = Literal["sft", "traj-sft", "td", "tabom", "puma", "papl", "tad"]
OBJECTIVES: tuple[str, ...] = ("sft", "traj-sft", "td", "tabom", "puma", "papl", "tad")
GROUND_TRUTH_OBJECTIVES: tuple[str, ...] = ("sft", "puma", "papl")
"""Objectives trained on ground-truth answers (the others on self-distilled trajectories)."""
TIME_DELAY_OBJECTIVES: tuple[str, ...] = ("td", "tabom", "puma")
"""Objectives whose masking is the time-delay state at a cut (M, cut range apply)."""


@dataclass
class LossConfig:
    """The loss settings of ``td`` / ``tabom`` / ``sft`` (DESIGN §5), one group: ``--loss.*``.

    Attributes:
        td_window: M, the supervision window after the cut (``td``, ``tabom``).
        rank_window: W, the ranking window after the cut (``tabom``); effective min(W, M).
        rank_margin: m, the margin of the ranking loss (the paper's γ), or ``auto``: per
            sample m = ``rank_margin_fraction`` × the detached mean entropy of its window
            (:func:`tabom.losses.auto_margin`).
        rank_margin_fraction: the fraction of ``rank_margin: auto``.
        rank_weight: λ, the weight of the ranking loss.
        rank_ties: same-step pairs: ``strict`` (excluded, Eq. 8), ``decode-entropy`` (ordered by
            the recorded entropy, Definition 1), ``reference`` (by position, the authors' code).
        rank_loss: the ranking term, a name of :data:`RANK_LOSSES`: ``hinge`` (the paper's
            Eq. 8), ``hinge-sg`` (the later token's entropy detached), ``logistic``
            (Bradley-Terry), ``logistic-sg``, ``plackett-luce`` (the window's listwise order
            likelihood).
        rank_beta: β, the inverse temperature of likelihood-based ranking variants (DESIGN
            §5's later extensions: logistic, Plackett-Luce); the hinge does not use it (β is
            absorbed into m and λ there).
        window_unit: the unit of M and W: ``steps`` (decode steps, the authors' code) or
            ``tokens`` (the paper's text); the same at one token per step.
        td_cut_range: the cut s of time-delay masking: ``design`` draws from
            {0, …, s_max − M} (DESIGN §5; the last decode step is never supervised),
            ``inclusive`` from {0, …, s_max − M + 1} (every window that fits, the last too).
        nelbo_weight: ``sft`` / ``traj-sft``: weight CE by 1/t over the response length (the
            MDLM NELBO of Eq. 1) instead of the plain token mean.
        loss_chunk: apply the LM head to this many supervised rows at a time and recompute
            each chunk's logits in backward (at most about three ``loss_chunk x V`` buffers
            at once: bounded memory at large vocabularies and many supervised tokens; the
            same values up to float rounding); 0 = all rows at once (the full-logits path's
            numbers bit for bit). Not used by ``tad``, whose KL needs the full distribution
            at every distant row.
        papl_tau: τ, the temperature of ``papl``'s softmax planner over the masked positions.
        papl_mix: the planner's share of ``papl``'s CE weight (0 = plain random-mask CE).
        tad_delta: ``tad``'s near window in decode steps: masked tokens decoded within this
            many steps of the state get the hard CE, later ones the soft KL (the released
            LLaDA run: 8 of 256 one-token steps).
        tad_ce_weight: λ_ce, the weight of ``tad``'s hard CE (1 in the released run).
        tad_kl_weight: λ_kl, the weight of ``tad``'s soft KL (1 in the released run).
        tad_tau: τ, ``tad``'s distillation temperature (the KL is scaled by τ²; 1 released).
    """

    td_window: int = field(default=32, metadata=AT_LEAST_1)
    rank_window: int = field(default=32, metadata=AT_LEAST_1)
    rank_margin: float | Literal["auto"] = field(default=0.1, metadata=NON_NEGATIVE)
    rank_weight: float = field(default=1.0, metadata=NON_NEGATIVE)
    rank_ties: RankTies = "strict"
    rank_loss: str = "hinge"
    rank_beta: float = field(default=1.0, metadata=POSITIVE)
    window_unit: WindowUnit = "steps"
    td_cut_range: CutRange = "design"
    nelbo_weight: bool = False
    loss_chunk: int = field(default=0, metadata=NON_NEGATIVE)
    rank_margin_fraction: float = field(default=0.5, metadata=NON_NEGATIVE)
    papl_tau: float = field(default=1.0, metadata=POSITIVE)
    papl_mix: float = field(default=1.0, metadata=UNIT)
    tad_delta: int = field(default=8, metadata=AT_LEAST_1)
    tad_ce_weight: float = field(default=1.0, metadata=NON_NEGATIVE)
    tad_kl_weight: float = field(default=1.0, metadata=NON_NEGATIVE)
    tad_tau: float = field(default=1.0, metadata=POSITIVE)

    def __post_init__(self) -> None:
        check_ranges(self)  # a config built in Python; flags and YAML are checked before
        if self.rank_loss not in _losses.RANK_LOSSES:
            names = ", ".join(_losses.RANK_LOSSES)
            raise ValueError(f"rank_loss must be one of {names}, got {self.rank_loss!r}")


def term_knobs(variant: str) -> tuple[str, ...]:
    """The knobs of a ranking variant: its term's keyword-only parameters."""
    params = inspect.signature(_losses.RANK_LOSSES[variant]).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def rank_knobs(loss: LossConfig) -> dict[str, Any]:
    """The keywords of ``loss.rank_loss``'s term: knob NAME <- ``loss.rank_NAME``."""
    return {name: getattr(loss, f"rank_{name}") for name in term_knobs(loss.rank_loss)}


@dataclass
class LossOutput:
    """One batch's loss and the counts to log.

    Attributes:
        total: scalar to backpropagate, ce + λ·rank (``tabom``), λ_ce·ce + λ_kl·kl (``tad``)
            or ce.
        ce: the masked CE term (``tad``: on the near tokens).
        rank: the ranking term (0 for every objective but ``tabom``).
        n_supervised: CE-supervised tokens in the batch.
        n_pairs: ranking pairs in the batch.
        n_rank_samples: samples with at least one ranking pair.
        n_uncut: samples that time-delay masking could not cut (s_max < M).
        kl: ``tad``'s soft KL term (0 for every other objective).
        n_distant: ``tad``'s KL-supervised tokens in the batch.
    """

    total: torch.Tensor
    ce: torch.Tensor
    rank: torch.Tensor
    n_supervised: int
    n_pairs: int
    n_rank_samples: int
    n_uncut: int
    kl: torch.Tensor | None = None
    n_distant: int = 0


def compute_objective(
    model_fn: HeadModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: TrajectoryBatch,
    *,
    objective: Objective,
    loss: LossConfig,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    teacher: HeadModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> LossOutput:
    """Mask the batch, run one forward and return the objective's loss.

    Args:
        model_fn: a :class:`~tabom.head.HeadModel` (a ``DiffusionLM``: hidden states, then the
            head at the supervised positions only) or any ``(input_ids, attention_mask) ->
            (B, L, V)`` aligned-logits callable (its rows are gathered once).
        batch: a :class:`tabom.train_data.TrajectoryBatch` on the model's device:
            ``input_ids`` (B, L) clean ids [left pad | prompt | response], ``attention_mask``,
            ``response_mask`` (True on response positions), ``decoding_order`` (d at response
            positions, -1 elsewhere; used by ``td`` and ``tabom``) and ``decode_entropy`` (for
            ``rank_ties="decode-entropy"``).
        objective: ``sft``, ``traj-sft``, ``td``, ``tabom``, ``puma`` (ground truth,
            time-delay masking on the model's confidence reveal order, computed here with
            ``model_fn`` under no grad) or ``papl`` (ground truth, random masking,
            planner-weighted CE).
        loss: M, W, m, λ, ties, unit, cut range, NELBO weight, ranking variant, PAPL's τ
            and mix (:class:`LossConfig`).
        mask_token_id: id of [MASK].
        generator: source of the masking randomness.
        teacher: ``tad`` only: the frozen teacher (the base model before training), run
            under no grad on the same masked input; its head only at the distant rows.

    Returns:
        A :class:`LossOutput`.

    The settings are trusted: ``TrainConfig`` / ``LossConfig`` check them (ranges, choices,
    ``nelbo_weight`` only with ``sft`` / ``traj-sft``, trajectories for ``td`` / ``tabom`` /
    ``tad``) before training starts.

    Raises:
        ValueError: ``tad`` without a ``teacher``.
    """
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    response_mask, decoding_order = batch.response_mask, batch.decoding_order
    if objective == "tad":
        if teacher is None:
            raise ValueError("objective 'tad' needs teacher= (the frozen base model)")
        return _tad(model_fn, teacher, batch, loss, mask_token_id, generator)

    # 1) mask: random ratio t per sample, or the trajectory state at a cut s
    if objective == "puma":  # the trajectory is the model's own reveal order of the ground truth
        decoding_order = confidence_reveal_order(
            lambda x: model_fn(x, attention_mask),
            input_ids,
            response_mask,
            mask_token_id=mask_token_id,
        )
    if objective in TIME_DELAY_OBJECTIVES:
        plan = time_delay_mask(
            input_ids,
            decoding_order,
            response_mask=response_mask,
            window=loss.td_window,
            mask_token_id=mask_token_id,
            generator=generator,
            window_unit=loss.window_unit,
            cut_range=loss.td_cut_range,
        )
    else:
        plan = random_mask(
            input_ids, response_mask, mask_token_id=mask_token_id, generator=generator
        )

    # 2) one forward to the hidden states; the head only at the supervised rows (N, V): the
    #    ranked positions are supervised ones, so CE and entropies share one gather. Through
    #    the model's own loss_terms: under FSDP / ZeRO-3 the head runs inside the forward
    sel = plan.supervise.bool()
    rows, cols = sel.nonzero(as_tuple=True)  # (N,), row-major like logits[sel]
    ce_rows, h_rows, log_c_rows = loss_terms(
        model_fn,
        plan.input_ids,
        attention_mask,
        rows,
        cols,
        input_ids[rows, cols],
        chunk=loss.loss_chunk,
        entropy=objective == "tabom",
        planner_mask_id=mask_token_id if objective == "papl" else None,
    )  # (N,), (N,), (N,) | None

    # 3) CE on the supervised positions (token mean, the 1/t NELBO, or planner-weighted)
    if objective == "papl":  # the planner's confidence in the clean token, [MASK] left out
        log_c = torch.zeros(sel.shape, dtype=log_c_rows.dtype, device=log_c_rows.device)
        log_c = log_c.index_put((rows, cols), log_c_rows)
        w = planner_weights(log_c, sel, tau=loss.papl_tau, mix=loss.papl_mix)
        ce = (ce_rows * w[rows, cols]).sum() / sel.sum().clamp(min=1)
    elif loss.nelbo_weight:
        ce = (ce_rows * (1.0 / plan.t)[rows]).sum() / response_mask.sum().clamp(min=1)
    else:
        ce = ce_rows.sum() / sel.sum().clamp(min=1)

    # 4) ranking on the same rows' entropies (tabom only)
    rank = torch.zeros((), device=ce_rows.device)
    n_pairs = n_rank_samples = 0
    total = ce
    if objective == "tabom":
        entropy = torch.zeros(sel.shape, dtype=h_rows.dtype, device=h_rows.device)
        entropy = entropy.index_put((rows, cols), h_rows)  # (B, L), valid where supervised
        out = rank_loss(
            entropy,
            decoding_order,
            plan.cut,
            variant=loss.rank_loss,
            window=loss.rank_window,
            margin=loss.rank_margin,
            margin_fraction=loss.rank_margin_fraction,
            supervise=plan.supervise,
            ties=loss.rank_ties,
            decode_entropy=batch.decode_entropy,
            window_unit=loss.window_unit,
            **rank_knobs(loss),
        )
        rank, n_pairs, n_rank_samples = out.loss, out.n_pairs, out.n_samples
        total = ce + loss.rank_weight * rank
    return LossOutput(
        total=total,
        ce=ce,
        rank=rank,
        n_supervised=int(plan.supervise.sum()),
        n_pairs=n_pairs,
        n_rank_samples=n_rank_samples,
        n_uncut=plan.n_uncut,
    )


def _tad(
    model_fn: HeadModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    teacher_fn: HeadModel | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: TrajectoryBatch,
    loss: LossConfig,
    mask_token_id: int,
    generator: torch.Generator | None,
) -> LossOutput:
    """``tad``: :func:`tabom.masking.tad_mask`, one student forward with its head at the near
    and distant rows only (:func:`tabom.head.pair_logits`; ``loss_chunk`` does not apply: the
    KL needs the full distribution at every distant row), one no-grad teacher forward with its
    head at the distant rows only."""
    plan = tad_mask(
        batch.input_ids,
        batch.decoding_order,
        response_mask=batch.response_mask,
        delta=loss.tad_delta,
        mask_token_id=mask_token_id,
        generator=generator,
    )
    attention_mask = batch.attention_mask
    rows, cols = plan.supervise.bool().nonzero(as_tuple=True)  # near
    d_rows, d_cols = plan.distant.nonzero(as_tuple=True)  # distant
    n_near = rows.numel()
    # one student forward, its head at the near and distant rows together (a prepared model:
    # inside its forward, so DDP / FSDP / ZeRO-3 see one forward per backward)
    logits = pair_logits(
        model_fn, plan.input_ids, attention_mask, torch.cat([rows, d_rows]), torch.cat([cols, d_cols])
    )
    ce_rows = F.cross_entropy(
        logits[:n_near].float(), batch.input_ids[rows, cols], reduction="none"
    )
    student = logits[n_near:]  # (Nd, V)
    with torch.no_grad():
        target = pair_logits(teacher_fn, plan.input_ids, attention_mask, d_rows, d_cols)
    kl_rows = teacher_kl(student, target, tau=loss.tad_tau)
    total, ce, kl = tad_loss(
        ce_rows, kl_rows, ce_weight=loss.tad_ce_weight, kl_weight=loss.tad_kl_weight
    )
    return LossOutput(
        total=total,
        ce=ce,
        rank=torch.zeros((), device=logits.device),
        n_supervised=int(plan.supervise.sum()),
        n_pairs=0,
        n_rank_samples=0,
        n_uncut=plan.n_uncut,
        kl=kl,
        n_distant=int(plan.distant.sum()),
    )
