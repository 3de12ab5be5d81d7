"""The demo's capability test: does post-training raise the likelihood of correct answers, or
only accuracy under one decoding order? (issue 22; DESIGN §7, "Likelihood").

Per model (base and every arm and seed), on the held-out new-domain test set and old-domain
test set: the Monte-Carlo NELBO per token of the reference responses (:mod:`tabom.likelihood`,
the same mask draws for every model: common random numbers, so model differences carry little
Monte-Carlo noise), and greedy accuracy under three decoding orders at one token per step:
confidence (the default), random order and left to right (blocks of one position).

Against the base model (before post-training) each arm's change is a paired 95% interval over
the test problems (per-problem differences, the arm averaged over its seeds; normal
approximation): a gain *shows in likelihood* when the new-domain NELBO per token falls with
the interval below 0; a gain *in one decoding order only* when accuracy rises (interval above
0) under exactly one order and the likelihood does not fall; *in several orders* likewise;
else *none*. The seed-to-seed spread is in the table (mean ± std over seeds).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from tabom.decoding import DecodeConfig
from tabom.evaluate import evaluate_task
from tabom.likelihood import LikelihoodConfig
from tabom.likelihood_sets import answer_likelihood
from tabom.metrics import mean_std
from tabom.models.base import DiffusionLM
from tabom.tasks import make_task
from tabom.tasks.base import Example

STRATEGIES: dict[str, DecodeConfig] = {
    "confidence": DecodeConfig(score="confidence"),
    "random": DecodeConfig(score="random"),
    "left-to-right": DecodeConfig(block_length=1),
}
"""The three decoding orders, greedy, one token per step (left to right: one-position blocks)."""
DOMAINS = (("new", "test"), ("old", "old_test"))
"""(domain, split) pairs the capability test scores."""


def capability_metrics(
    dlm: DiffusionLM,
    new_task: str,
    old_task: str,
    splits: dict[str, list[Example]],
    likelihood: LikelihoodConfig,
    *,
    seed: int,
    known: dict[tuple[str, str], list[bool]] | None = None,
) -> dict[str, Any]:
    """NELBO of the reference responses and per-item correctness under each decoding order.

    ``known``: ``{(domain, strategy): per-item correctness}`` already decoded with the same
    settings, seed and batch size 256 (the demo's confidence-order runs), not decoded again.

    Returns:
        ``{"nelbo": {domain: {"per_token", "se", "tokens", "per_item"}}, "correct":
        {domain: {strategy: [bool per problem]}}, "accuracy": {domain: {strategy: acc}}}``.
    """
    out: dict[str, Any] = {"nelbo": {}, "correct": {}, "accuracy": {}}
    for domain, split in DOMAINS:
        task = make_task(new_task if domain == "new" else old_task)
        examples = splits[split]
        lk = answer_likelihood(dlm, task, examples, likelihood)
        out["nelbo"][domain] = {
            "per_token": lk.nelbo_per_token,
            "se": lk.se,
            "tokens": lk.n_tokens,
            "per_item": lk.per_item,
        }
        out["correct"][domain], out["accuracy"][domain] = {}, {}
        for name, cfg in STRATEGIES.items():
            correct = (known or {}).get((domain, name))
            if correct is None:
                r = evaluate_task(dlm, task, examples, cfg, seed=seed, batch_size=256)
                correct = [c[0] for c in r.correct]
            out["correct"][domain][name] = correct
            out["accuracy"][domain][name] = sum(correct) / max(1, len(correct))
    return out


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the per-item differences a − b with a 95% normal interval (NaN below 2 items)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return (d[0] if d else math.nan), math.nan, math.nan
    m, half = statistics.fmean(d), 1.96 * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - half, m + half


def _seed_mean(runs: list[list[float]]) -> list[float]:
    """Per item, the mean over seeds."""
    return [statistics.fmean(v) for v in zip(*runs, strict=True)]


def arm_changes(results: dict[str, list[dict[str, Any]]], arm: str) -> dict[str, Any]:
    """An arm's paired changes against the base: NELBO per token and accuracy per order."""
    base = results["base"][0]["capability"]
    runs = [r["capability"] for r in results[arm]]
    out: dict[str, Any] = {}
    for domain, _ in DOMAINS:
        per_tok = base["nelbo"][domain]["tokens"] / len(base["nelbo"][domain]["per_item"])
        arm_items = _seed_mean([r["nelbo"][domain]["per_item"] for r in runs])
        base_items = base["nelbo"][domain]["per_item"]
        out[f"nelbo_{domain}"] = tuple(v / per_tok for v in paired_ci(arm_items, base_items))
        for name in STRATEGIES:
            a = _seed_mean([[float(c) for c in r["correct"][domain][name]] for r in runs])
            b = [float(c) for c in base["correct"][domain][name]]
            out[f"acc_{domain}_{name}"] = paired_ci(a, b)
    return out


def verdict(changes: dict[str, Any]) -> str:
    """Where the new-domain gain shows: in likelihood, in one decoding order only, or none."""
    _, _, nelbo_hi = changes["nelbo_new"]
    gains = [n for n in STRATEGIES if changes[f"acc_new_{n}"][1] > 0]
    losses = [n for n in STRATEGIES if changes[f"acc_new_{n}"][2] < 0]
    orders = ", ".join(gains)
    if nelbo_hi < 0:
        word = "in likelihood" + (f" and in accuracy under {orders}" if gains else "")
    elif len(gains) == 1:
        word = f"in one decoding order only ({orders}), not in likelihood"
    elif gains:
        word = f"in accuracy under {orders}, not in likelihood"
    else:
        word = "none"
    if losses:
        word += f"; accuracy falls under {', '.join(losses)}"
    return word


def fmt_ci(c: tuple[float, float, float], digits: int = 3) -> str:
    """A difference with its interval, ``+0.120 [+0.020, +0.220]`` (``–``: none)."""
    d, lo, hi = c
    if d != d:
        return "–"
    if lo != lo:
        return f"{d:+.{digits}f}"
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def fmt(values: list[float], digits: int = 3, sign: bool = False) -> str:
    """``mean ± std`` of per-seed values; a single run shows its value alone (``–``: none)."""
    m, s = mean_std(values)
    if m != m:
        return "–"
    return f"{m:{'+' if sign else ''}.{digits}f}" + (f" ± {s:.{digits}f}" if len(values) > 1 else "")


def capability_section(
    results: dict[str, list[dict[str, Any]]], names: list[str], likelihood: LikelihoodConfig
) -> list[str]:
    """The report's section: the per-model table, the paired changes and a verdict per arm."""
    if any("capability" not in r for runs in results.values() for r in runs):
        return ["(no capability metrics in these evaluation stages)"]
    head = ["model", "runs", "NELBO/token new", "NELBO/token old"]
    head += [f"new acc {n}" for n in STRATEGIES] + [f"old acc {n}" for n in STRATEGIES]
    lines = [
        f"NELBO per token (nats) of the reference responses (answer + EOS tail) of the held-out "
        f"test sets, {likelihood.n_samples} Monte-Carlo samples each ({likelihood.draws} draws, "
        "the same masks for every model; mean ± std over seeds); greedy accuracy at one token "
        "per step under three decoding orders.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in names:
        caps = [r["capability"] for r in results[name]]
        cells = [name, str(len(caps))]
        cells += [fmt([c["nelbo"][d]["per_token"] for c in caps], 4) for d in ("new", "old")]
        for d in ("new", "old"):
            cells += [fmt([c["accuracy"][d][n] for c in caps]) for n in STRATEGIES]
        lines.append("| " + " | ".join(cells) + " |")
    arms = [n for n in names if n != "base"]
    if not arms:
        return lines
    head = ["arm", "Δ NELBO/token new", "Δ NELBO/token old"]
    head += [f"Δ new acc {n}" for n in STRATEGIES] + ["where the gain shows"]
    lines += [
        "",
        "Changes against the base model (after − before post-training; paired over the test "
        "problems, the arm averaged over its seeds; 95% interval). A gain in likelihood is a "
        "fall in NELBO.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for arm in arms:
        ch = arm_changes(results, arm)
        cells = [arm, fmt_ci(ch["nelbo_new"], 4), fmt_ci(ch["nelbo_old"], 4)]
        cells += [fmt_ci(ch[f"acc_new_{n}"]) for n in STRATEGIES] + [verdict(ch)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def capability_summary(results: dict[str, list[dict[str, Any]]], names: list[str]) -> dict:
    """Per arm, the paired changes and the verdict (for ``report.json``)."""
    if any("capability" not in r for runs in results.values() for r in runs):
        return {}
    return {
        arm: {**arm_changes(results, arm), "verdict": verdict(arm_changes(results, arm))}
        for arm in names
        if arm != "base"
    }


__all__ = [
    "DOMAINS",
    "STRATEGIES",
    "arm_changes",
    "capability_metrics",
    "capability_section",
    "capability_summary",
    "fmt",
    "fmt_ci",
    "paired_ci",
    "verdict",
]
