"""Training losses as functions of tensors (DESIGN §5; the paper's Eqs. 8 and 9).

What :func:`tabom.objectives.compute_objective` runs, on the rows where the LM head ran
(the CE and entropies per row come from :mod:`tabom.head`): ``rank_loss``, the ranking half
of Eq. 9 — within the window after the cut, an earlier-decoded token must have lower
predictive entropy — with a choice of term (``RANK_LOSSES``: the hinge of Eq. 8, its
one-sided form, the Bradley–Terry logistic, its one-sided form, the exact Plackett–Luce
listwise likelihood of DESIGN §5's "later extensions") and ``margin="auto"``; vectorised over
the batch, pairs as one masked (B, K, K) tensor. ``planner_weights``: PAPL's detached planner
weights (arXiv 2509.23405). ``teacher_kl``: TAD's soft term (arXiv 2605.09536),
τ² KL(teacher ‖ student) per row at temperature τ; ``tad_loss`` combines it with the hard CE
on the near tokens. ``token_entropy``: H in fp32 with a memory-light backward.

Settings arrive validated (``LossConfig``, ``config.check_ranges``); nothing here re-checks
them. Torch only; the objectives that combine the terms live in ``tabom.objectives``; the
slow references the tests compare with live in ``tests/naive.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tabom.masking import WindowUnit, window_mask

RankTies = Literal["strict", "reference", "decode-entropy"]


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


def auto_margin(h: torch.Tensor, slot: torch.Tensor, fraction: float) -> torch.Tensor:
    """``rank_margin: auto``: m_b = fraction × the detached mean window entropy of sample b.

    The margin then scales with the model's own entropies: on the tiny addition task they
    are 0.05-0.2 nats, below a fixed m = 0.1 per rank, which keeps most pairs active
    (issue 12); a relative margin keeps the hinge's active set the same at any scale.

    Args:
        h: ``(B, K)`` window entropies.
        slot: ``(B, K)`` bool, real candidates.
        fraction: the margin as a fraction of the mean (``loss.rank_margin_fraction``).

    Returns:
        ``(B,)`` margins, no gradient (0 for a sample without candidates).
    """
    h = h.detach()
    mean = (h * slot).sum(1) / slot.sum(1).clamp(min=1)  # (B,)
    return fraction * mean


# A ranking term maps the window entropies h (B, K), the ordered-pair mask before (B, K, K)
# and the margin m (a float, or (B, 1, 1) for ``auto``) to (terms, counted): terms (B, K, K)
# (pairwise) or (B, K) (listwise), summed per sample and divided by the count of ``counted``,
# the pairs (or listwise terms) that take part. Its keyword-only parameters are its knobs:
# ``tabom.objectives`` fills knob NAME from the ``LossConfig`` field ``rank_NAME``.
RankTerm = Callable[..., tuple[torch.Tensor, torch.Tensor]]
RANK_LOSSES: dict[str, RankTerm] = {}
"""``rank_loss`` name -> ranking term ``(h, before, margin, *, knobs) -> (terms, counted)``."""


def rank_term(name: str) -> Callable[[RankTerm], RankTerm]:
    """Register a ranking term as variant ``name`` of :data:`RANK_LOSSES`."""

    def register(term: RankTerm) -> RankTerm:
        RANK_LOSSES[name] = term
        return term

    return register


@rank_term("hinge")
def _hinge(h, before, margin):
    """max(0, H_i − H_j + m) on pairs i before j (Eq. 8)."""
    return torch.relu(h[:, :, None] - h[:, None, :] + margin) * before, before


@rank_term("hinge-sg")
def _hinge_sg(h, before, margin):
    """max(0, H_i − sg(H_j) + m): the later token's entropy is a constant, so the gradient
    can only lower the earlier one."""
    return torch.relu(h[:, :, None] - h.detach()[:, None, :] + margin) * before, before


@rank_term("logistic")
def _logistic(h, before, margin, *, beta):
    """softplus(β(H_i − H_j + m)) = −log σ(β(H_j − H_i − m)): Bradley–Terry on pairs."""
    diff = h[:, :, None] - h[:, None, :] + margin
    return torch.where(before, F.softplus(beta * diff), 0.0), before


@rank_term("logistic-sg")
def _logistic_sg(h, before, margin, *, beta):
    """softplus(β(H_i − sg(H_j) + m)): the later token's entropy detached."""
    diff = h[:, :, None] - h.detach()[:, None, :] + margin
    return torch.where(before, F.softplus(beta * diff), 0.0), before


@rank_term("plackett-luce")
def _plackett_luce(h, before, margin, *, beta):
    """−log of the window's order under p(i) ∝ exp(−β H_i) over the remaining candidates.

    Term of candidate i: −log [e^{−βH_i} / (e^{−βH_i} + Σ_{j: i before j} e^{−β(H_j + m)})]
    = logsumexp({0} ∪ {β(H_i − H_j + m) : i before j}); candidates nothing comes after
    (the last stage) give log 1 = 0 and do not count. With a total order (one token per
    step, or ties ``reference`` / ``decode-entropy``) the sum over candidates is the exact
    Plackett–Luce negative log-likelihood of the order; with ``strict`` ties each member
    of a same-step stage is scored against the candidates of the later stages only (a
    composite likelihood: same-step pairs never enter, as in Eq. 8).
    """
    logit = beta * (h[:, :, None] - h[:, None, :] + margin)  # (B, K, K)
    logit = logit.masked_fill(~before, float("-inf"))
    zero = logit.new_zeros(logit.shape[:2] + (1,))
    terms = torch.logsumexp(torch.cat([zero, logit], dim=2), dim=2)  # (B, K)
    has = before.any(2)  # (B, K)
    return torch.where(has, terms, 0.0), has


def rank_loss(
    entropy: torch.Tensor,
    decoding_order: torch.Tensor,
    cut: torch.Tensor,
    *,
    variant: str = "hinge",
    window: int,
    margin: float | Literal["auto"] = 0.1,
    margin_fraction: float = 0.5,
    supervise: torch.Tensor | None = None,
    ties: RankTies = "strict",
    decode_entropy: torch.Tensor | None = None,
    window_unit: WindowUnit = "steps",
    **knobs: float,
) -> RankOutput:
    """The ranking term over the decode window after the cut (Eq. 8 and its variants).

    Candidates are positions with s ≤ d < s + W (``window_unit="steps"``; the first W
    tokens with d ≥ s for ``tokens``), restricted to ``supervise`` when given, so the
    effective window is min(W, M). For each ordered pair (i, j) with i decoded before j
    (same-step pairs per ``ties``), with Δ_ij = H_i − H_j + m, the term of
    :data:`RANK_LOSSES` ``[variant]``:

    - ``hinge``: max(0, Δ_ij) (Eq. 8);
    - ``hinge-sg``: max(0, H_i − sg(H_j) + m): can only lower the earlier token's entropy;
    - ``logistic``: softplus(β Δ_ij), Bradley–Terry with p(i first) = σ(β(H_j − H_i − m));
    - ``logistic-sg``: softplus(β (H_i − sg(H_j) + m));
    - ``plackett-luce``: listwise, per candidate i with a later candidate,
      log(1 + Σ_{j after i} exp(β Δ_ij)) (see ``_plackett_luce``).

    Sample term = mean over its pairs (listwise: over its candidates that have a later
    one); the loss is the mean over samples with at least one pair. Vectorised over the
    batch: pairs as one masked (B, K, K) tensor, K the largest window.

    Args:
        entropy: ``(B, L)`` fp32 entropies, valid (and differentiable) at every candidate
            (``compute_objective`` computes them where the LM head ran, the supervised rows).
        decoding_order: ``(B, L)`` long, d per position, -1 where never decoded / not response.
        cut: ``(B,)`` long, the cut s per sample; -1 for samples that were not cut.
        variant: the ranking term, a name of :data:`RANK_LOSSES` (``rank_loss`` field).
        window: W, the ranking window, in ``window_unit``.
        margin: m (the hinge margin; for the smooth forms a shift of the difference, 0 for
            the plain Bradley–Terry / Plackett–Luce likelihood), or ``"auto"``:
            m_b = ``margin_fraction`` × the detached mean entropy of sample b's window
            (:func:`auto_margin`).
        margin_fraction: the fraction for ``margin="auto"``.
        supervise: ``(B, L)`` bool, the CE-supervised positions (the TD window of size M).
        ties: same-step pairs: ``strict`` excludes them (Eq. 8); ``reference`` orders them
            by position like the authors' sorted decode order; ``decode-entropy`` orders
            them by the recorded ``decode_entropy``, lower first (Definition 1), position
            breaking exact ties.
        decode_entropy: ``(B, L)`` float, for ``ties="decode-entropy"``.
        window_unit: ``steps`` (the authors' code) or ``tokens`` (the paper).
        knobs: the variant's own settings (its term's keyword-only parameters), e.g. ``beta``, β, the
            inverse temperature of the logistic and Plackett–Luce forms.

    Returns:
        A :class:`RankOutput`; ``n_pairs`` counts ordered pairs for every variant; 0 (with
        a graph to ``entropy``) when no sample has a pair.
    """
    b = decoding_order.shape[0]
    device = decoding_order.device

    # 1) candidates, gathered first along L in position order: idx (B, K), K = max count
    cand = window_mask(decoding_order, cut, width=window, unit=window_unit, eligible=supervise)
    count = cand.sum(1)  # (B,)
    k = int(count.max()) if b else 0
    if k < 2:  # no pair anywhere: 0, still attached (every rank joins backward)
        return RankOutput(loss=entropy[:, :0].float().sum(), n_pairs=0, n_samples=0)
    idx = (~cand).to(torch.uint8).argsort(dim=1, stable=True)[:, :k]  # (B, K)
    slot = torch.arange(k, device=device) < count[:, None]  # (B, K) real candidates

    # 2) entropies at the candidates: (B, L) -> (B, K)
    h = entropy.gather(1, idx)  # (B, K)

    # 3) ordered pairs (i before j) as one (B, K, K) mask
    d = decoding_order.gather(1, idx)  # (B, K)
    d_i, d_j = d[:, :, None], d[:, None, :]
    before = d_i < d_j
    if ties != "strict":
        same = d_i == d_j
        p_i, p_j = idx[:, :, None], idx[:, None, :]
        if ties == "reference":
            before = before | (same & (p_i < p_j))
        else:  # decode-entropy: the recorded entropy (train checks the file has it)
            e = decode_entropy.gather(1, idx).float()  # type: ignore[union-attr]  # (B, K)
            e_i, e_j = e[:, :, None], e[:, None, :]
            before = before | (same & ((e_i < e_j) | ((e_i == e_j) & (p_i < p_j))))
    before = before & slot[:, :, None] & slot[:, None, :]  # (B, K, K)
    m = auto_margin(h, slot, margin_fraction)[:, None, None] if margin == "auto" else margin

    # 4) the term, mean over each sample's pairs (or listwise terms), mean over samples
    terms, counted = RANK_LOSSES[variant](h, before, m, **knobs)
    dims = tuple(range(1, terms.dim()))
    n = counted.sum(dims)  # (B,)
    per_sample = terms.sum(dims) / n.clamp(min=1)
    has = n > 0
    loss = (per_sample * has).sum() / has.sum().clamp(min=1)
    n_pairs = before.sum((1, 2))
    return RankOutput(loss=loss, n_pairs=int(n_pairs.sum()), n_samples=int(has.sum()))


def planner_weights(
    log_c: torch.Tensor, supervise: torch.Tensor, *, tau: float = 1.0, mix: float = 1.0
) -> torch.Tensor:
    """PAPL's planner weights (arXiv 2509.23405), detached, one per supervised token.

    A softmax planner picks the next position to decode among the masked ones with
    probability π_p = softmax_{p masked}(log c_p / τ), c_p the model's confidence at p (here
    q(x_p), the probability of the clean token, [MASK] left out: ``tabom.head.loss_terms``
    computes ``log c`` at the supervised rows). PAPL weights each masked token's CE by how
    likely the planner is to decode it next, so that training concentrates on the paths a
    confidence planner takes. Our reading (the exact form of the paper's weight could not be
    checked here): per sample b with n_b supervised tokens, w_p = (1 − mix) + mix · n_b π_p,
    so the weights have mean 1 over the sample's supervised tokens (the CE keeps its scale)
    and ``mix = 0`` is plain random-mask training; the weights carry no gradient.

    Args:
        log_c: ``(B, L)`` the planner's log-confidences, valid where ``supervise``.
        supervise: ``(B, L)`` bool, the masked (supervised) positions.
        tau: τ, the planner's temperature (small: greedy, large: uniform).
        mix: share of the planner weight.

    Returns:
        ``(B, L)`` float weights, detached, 0 outside ``supervise``; mean 1 per sample.
    """
    sel = supervise.bool()
    with torch.no_grad():
        log_c = log_c.detach()
        keyed = (log_c / tau).clamp(min=torch.finfo(log_c.dtype).min).masked_fill(~sel, -torch.inf)
        pi = keyed.softmax(-1).nan_to_num(0.0)  # (B, L); a row with nothing supervised -> 0
        n = sel.sum(1, keepdim=True)  # (B, 1)
        w = (1 - mix) + mix * n * pi
        return torch.where(sel, w, 0.0).float()


def teacher_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float = 1.0
) -> torch.Tensor:
    """TAD's soft term per row: τ² · KL(softmax(z_t / τ) ‖ softmax(z_s / τ)).

    The released code's ``F.kl_div(log_softmax(z_s / τ), softmax(z_t / τ)) · τ²`` before its
    ``batchmean`` reduction (the mean over rows is :func:`tad_loss`'s). The teacher is
    detached; the full vocabulary counts (as in the code).

    Args:
        student_logits: ``(N, V)`` logits with a graph.
        teacher_logits: ``(N, V)`` logits of the frozen teacher at the same rows.
        tau: the distillation temperature (> 0).

    Returns:
        ``(N,)`` fp32 (at least), >= 0 up to rounding.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_kl: student {tuple(student_logits.shape)} vs teacher "
            f"{tuple(teacher_logits.shape)} logits"
        )
    log_q = _at_least_fp32(student_logits / tau).log_softmax(-1)
    log_p = _at_least_fp32(teacher_logits.detach() / tau).log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * tau**2


def tad_loss(
    ce_rows: torch.Tensor,
    kl_rows: torch.Tensor,
    *,
    ce_weight: float = 1.0,
    kl_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TAD's loss: λ_ce · mean CE over the near rows + λ_kl · mean KL over the distant rows.

    Each term is its own batch mean (the code's ``cross_entropy`` mean and ``batchmean``), 0
    with a graph when the batch has no such row.

    Args:
        ce_rows: ``(N_near,)`` per-row CE against the trajectory tokens.
        kl_rows: ``(N_distant,)`` per-row :func:`teacher_kl`.
        ce_weight, kl_weight: λ_ce, λ_kl (1 and 1 in the released run).

    Returns:
        ``(total, ce, kl)`` scalars.
    """
    ce = ce_rows.sum() / max(ce_rows.numel(), 1)
    kl = kl_rows.sum() / max(kl_rows.numel(), 1)
    return ce_weight * ce + kl_weight * kl, ce, kl
