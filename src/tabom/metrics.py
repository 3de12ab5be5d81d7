"""Evaluation metrics: pass@k, forgetting, Kendall τ alignment, TDS (DESIGN §7).

- :func:`pass_at_k`: the unbiased estimator of Chen et al. (2021), 1 - C(n - c, k) / C(n, k).

- :func:`forgetting`: old-domain accuracy before minus after post-training, with per-item
  correct→wrong and wrong→correct flips on the same items (greedy decoding makes the per-item
  comparison meaningful).
- :func:`kendall_tau_b`: Kendall's τ-b in plain torch (ties in either ranking handled), no scipy.
- :func:`trajectory_alignment`: how well a model's entropy order over the still-masked
  positions matches a trajectory's decode order, replayed at every state the sampler passed
  through; the same forwards give the paper's Trajectory Discrimination Score (Eqs. 10-11)
  and the entropy of the next-decoded token per decode step. Exact definitions: docs/method.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tabom.decoding import pad_prompts
from tabom.losses import token_entropy
from tabom.models.base import DiffusionLM
from tabom.trajectory import TrajectoryRecord

# --------------------------------------------------------------------------- forgetting


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct.

    Raises:
        ValueError: ``k`` outside [1, n] or ``c`` outside [0, n].
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the non-NaN values (0 for a single value)."""
    vals = [v for v in values if v == v]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
"""Student t 0.975 quantiles for 1..30 degrees of freedom."""


def t_quantile_975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (rounded down: a
    slightly wider, conservative interval between table entries; 1.96 past 30)."""
    if not df >= 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return _T975[int(df) - 1] if df < 31 else 1.96


def diff_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Difference of means a − b with a 95% Welch t interval over independent runs (seeds).

    Returns:
        ``(diff, low, high)``; NaN bounds when either side has fewer than two values; a
        zero-variance pair gives the point interval.
    """
    a = [v for v in a if v == v]
    b = [v for v in b if v == v]
    if not a or not b:
        return math.nan, math.nan, math.nan
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile_975(df) * se
    return diff, diff - half, diff + half


@dataclass
class Forgetting:
    """Forgetting of one model against a baseline on the same items.

    Attributes:
        n_items: items compared.
        before: the baseline's accuracy.
        after: the model's accuracy.
        forgetting: ``before - after`` (positive = the model forgot).
        correct_to_wrong: items the baseline solved and the model does not.
        wrong_to_correct: items the model solves and the baseline did not.
    """

    n_items: int
    before: float
    after: float
    forgetting: float
    correct_to_wrong: int
    wrong_to_correct: int


def forgetting(before: Sequence[bool], after: Sequence[bool]) -> Forgetting:
    """Accuracy drop and per-item flips between two verdict lists on the same items.

    Args:
        before: the baseline's verdict per item (e.g. the base model, greedy).
        after: the post-trained model's verdict per item, same items in the same order.

    Returns:
        A :class:`Forgetting`; ``forgetting == (correct_to_wrong - wrong_to_correct) / n``.

    Raises:
        ValueError: lists of different lengths or empty.
    """
    if len(before) != len(after):
        raise ValueError(f"forgetting: {len(before)} items before, {len(after)} after")
    if not before:
        raise ValueError("forgetting: no items")
    n = len(before)
    b, a = sum(map(bool, before)), sum(map(bool, after))
    return Forgetting(
        n_items=n,
        before=b / n,
        after=a / n,
        forgetting=(b - a) / n,
        correct_to_wrong=sum(bool(x) and not bool(y) for x, y in zip(before, after, strict=True)),
        wrong_to_correct=sum(not bool(x) and bool(y) for x, y in zip(before, after, strict=True)),
    )


# --------------------------------------------------------------------------- Kendall tau


def kendall_tau_b(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Kendall's τ-b between two rankings of the same items.

    τ-b = Σ_{i<j} sign(x_i − x_j)·sign(y_i − y_j) / sqrt((n0 − n1)(n0 − n2)), with n0 the
    pairs, n1 the pairs tied in x, n2 the pairs tied in y (scipy's ``kendalltau`` default).

    Args:
        x: ``(n,)`` values of the first ranking.
        y: ``(n,)`` values of the second ranking.

    Returns:
        τ-b in [-1, 1]; NaN when undefined (fewer than 2 items, or every pair tied in x or y).

    Raises:
        ValueError: different lengths.
    """
    xt = torch.as_tensor(x, dtype=torch.float64).flatten()
    yt = torch.as_tensor(y, dtype=torch.float64).flatten()
    if xt.numel() != yt.numel():
        raise ValueError(f"kendall_tau_b: {xt.numel()} x values, {yt.numel()} y values")
    n = xt.numel()
    if n < 2:
        return math.nan
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # pairs i < j
    sx = torch.sign(xt[:, None] - xt[None, :])[upper]  # (n0,)
    sy = torch.sign(yt[:, None] - yt[None, :])[upper]
    denom = math.sqrt(float((sx != 0).sum()) * float((sy != 0).sum()))
    return math.nan if denom == 0 else float((sx * sy).sum()) / denom


# --------------------------------------------------------------------------- alignment


@dataclass
class Alignment:
    """A model's entropy order against recorded trajectories (docs/method.md, "Alignment").

    Attributes:
        tau: mean Kendall τ-b over all (record, state) pairs with a defined τ: entropy
            ascending against decode step ascending over the still-masked positions.
            1 = the model is most certain exactly where the sampler decoded first.
        tau_initial: the same at the all-masked state (s = 0) only.
        n_records: trajectories used.
        n_states: (record, state) pairs with a defined τ.
        tds: mean over decode steps of ``tds_per_step``.
        tds_per_step: ``[s]`` the paper's TDS at step s: the variance (population) of the
            model's entropy over the still-masked positions before the first stop token,
            averaged over the records that have at least two there (NaN if none).
        entropy_next: ``[s]`` mean entropy, at the state before step s, of the positions the
            trajectory decodes at step s (the certainty of what the sampler commits next).
        entropy_masked: ``[s]`` mean entropy over all still-masked positions at that state.
    """

    tau: float
    tau_initial: float
    n_records: int
    n_states: int
    tds: float
    tds_per_step: list[float] = field(default_factory=list)
    entropy_next: list[float] = field(default_factory=list)
    entropy_masked: list[float] = field(default_factory=list)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


@torch.no_grad()
def trajectory_alignment(
    dlm: DiffusionLM,
    records: Sequence[TrajectoryRecord],
    *,
    batch_size: int = 256,
) -> Alignment:
    """Replay every state of every trajectory once and compare the model's entropies to it.

    The state before step s shows the response tokens with 0 ≤ d < s and [MASK] at every other
    response position (the input the sampler saw before committing step s). For each record
    and each s in {0, …, s_max}, one forward gives the entropy H (softmax over the full
    vocabulary, as in the ranking loss) at every response position; over the still-masked
    decoded positions (d ≥ s) τ-b compares H ascending with d ascending.

    Args:
        dlm: the model.
        records: trajectories (e.g. the base model's, on held-out prompts).
        batch_size: states per forward.

    Returns:
        An :class:`Alignment`.

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("trajectory_alignment: no records")
    stops = set(dlm.spec.stop_ids)
    mask_id, pad_id = dlm.mask_token_id, dlm.spec.pad_token_id
    # 1) one row per (record, state): [prompt | response with d >= s masked]
    rows: list[tuple[int, int]] = []
    for r, rec in enumerate(records):
        rows.extend((r, s) for s in range(max(rec.decoding_order) + 1))
    T_max = max(len(rec.response_token_ids) for rec in records)
    n_steps = max(max(rec.decoding_order) for rec in records) + 1
    taus: list[float] = []
    taus0: list[float] = []
    tds: list[list[float]] = [[] for _ in range(n_steps)]
    h_next: list[list[float]] = [[] for _ in range(n_steps)]
    h_masked: list[list[float]] = [[] for _ in range(n_steps)]
    # per record, once: its decode steps and the first stop token's position
    orders = [torch.tensor(rec.decoding_order) for rec in records]
    first_stops = [
        next(
            (p for p, t in enumerate(rec.response_token_ids) if t in stops), len(rec.decoding_order)
        )
        for rec in records
    ]
    was_training = dlm.model.training
    dlm.model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            seqs = []
            for r, s in chunk:
                rec = records[r]
                resp = [
                    t if 0 <= d < s else mask_id
                    for t, d in zip(rec.response_token_ids, rec.decoding_order, strict=True)
                ]
                seqs.append(list(rec.prompt_token_ids) + resp)
            ids, attn = pad_prompts(seqs, pad_id)
            L = ids.shape[1]
            logits = dlm(ids.to(dlm.device), attn.to(dlm.device))  # (B, L, V)
            h_all = token_entropy(logits[:, L - T_max :].float()).cpu()  # (B, T_max)
            # 2) per state: τ-b, TDS and the entropy curves over the still-masked positions
            for i, (r, s) in enumerate(chunk):
                d = orders[r]
                T = d.numel()
                h = h_all[i, T_max - T :]  # (T,) this record's response positions
                masked = d >= s
                tau = kendall_tau_b(h[masked], d[masked])
                if not math.isnan(tau):
                    taus.append(tau)
                    if s == 0:
                        taus0.append(tau)
                if bool((d == s).any()):  # a step may commit nothing (more steps than tokens)
                    h_next[s].append(float(h[d == s].mean()))
                h_masked[s].append(float(h[masked].mean()))
                content = masked & (torch.arange(T) < first_stops[r])
                if int(content.sum()) >= 2:  # a variance needs two positions
                    tds[s].append(float(h[content].var(unbiased=False)))
    finally:
        dlm.model.train(was_training)
    tds_curve = [_mean(v) for v in tds]
    return Alignment(
        tau=_mean(taus),
        tau_initial=_mean(taus0),
        n_records=len(records),
        n_states=len(taus),
        tds=_mean([v for v in tds_curve if not math.isnan(v)]),  # steps with a variance
        tds_per_step=tds_curve,
        entropy_next=[_mean(v) for v in h_next],
        entropy_masked=[_mean(v) for v in h_masked],
    )


__all__ = [
    "Alignment",
    "Forgetting",
    "diff_ci",
    "forgetting",
    "kendall_tau_b",
    "mean_std",
    "pass_at_k",
    "t_quantile_975",
    "trajectory_alignment",
]
