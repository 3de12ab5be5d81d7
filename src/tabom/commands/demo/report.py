"""The report of ``tabom demo``: table (mean ± std over seeds), plots, verdicts (DESIGN §7).

:func:`write_report` turns the stage results of :mod:`tabom.commands.demo.pipeline` into ``report.md``,
``report.json`` and the PNGs next to them, and states plainly, with the numbers, whether each
of the paper's three claims holds on this run: higher new-domain accuracy than SFT, a wider
knowledge boundary (pass@k), and less forgetting of the old domain.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tabom.commands.demo.capability import capability_section, capability_summary, fmt, fmt_ci
from tabom.commands.demo.config import (
    MIN_LR_RATIO,
    WARMUP_STEPS,
    WEIGHT_DECAY,
    DemoConfig,
)
from tabom.config import build_config, to_dict
from tabom.evaluate import tau_to_order
from tabom.metrics import diff_ci, forgetting, mean_std, t_quantile_975
from tabom.plots import (
    plot_budgets,
    plot_entropy_curves,
    plot_metric_bars,
    plot_trajectory,
    token_labels,
)
from tabom.trajectory import read_trajectories

_NOT_IN_COMMAND = {"testbed", "protocol", "quick", "output_dir", "progress", "eval_order", "loss"}


def command_line(cfg: DemoConfig) -> str:
    """The ``tabom demo`` command that gives ``cfg``: the testbed, protocol and ``--quick``,
    then every other top-level setting that differs from what those alone build (the presets
    through :func:`tabom.config.build_config`), e.g. ``--objectives`` of a run that compared a
    subset of the arms. ``loss.*`` fields and where and how the run was written are left out."""
    chosen = {"testbed": cfg.testbed, "protocol": cfg.protocol, "quick": cfg.quick}
    ref = build_config(DemoConfig, chosen)
    cmd = "tabom demo" + (f" --testbed {cfg.testbed}" if cfg.testbed != "addition" else "")
    cmd += f" --protocol {cfg.protocol}" if cfg.protocol != "single" else ""
    cmd += " --quick" if cfg.quick else ""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in _NOT_IN_COMMAND and value != getattr(ref, f.name):
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            cmd += f" --{f.name} {shown}"
    return cmd


def describe_task(spec: str) -> str:
    """A task spec as words for titles: ``addition:min_digits=4,max_digits=4,width=4`` ->
    ``4-digit addition``; other tasks: ``sudoku (n_blanks 8)``."""
    name, _, args = spec.partition(":")
    fields = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    if name == "addition" and "max_digits" in fields:
        lo, hi = fields.get("min_digits", "1"), fields["max_digits"]
        return f"{hi}-digit addition" if lo == hi else f"{lo}-{hi} digit addition"
    extra = ", ".join(f"{k} {v}" for k, v in fields.items() if k != "width")
    return f"{name} ({extra})" if extra else name


def flips_against_base(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict]]:
    """Forgetting of every run against the base model on the old-domain items (greedy).

    Returns:
        ``{model: [asdict(Forgetting) per seed]}``.
    """
    base = results["base"][0]["old_correct"]
    return {
        name: [asdict(forgetting(base, r["old_correct"])) for r in runs]
        for name, runs in results.items()
    }


VERDICT_RULE = (
    "'better' / 'worse' = the 95% Welch t interval of the difference of means over seeds "
    "excludes 0 (against the one greedy run of base: the one-sample t interval); otherwise "
    "'no clear difference'"
)
"""The report's one verdict rule, stated once in report.md."""


def interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Difference of means a − b with its 95% interval: Welch's t over seeds; a side with one
    value (base's one greedy run) is a fixed reference, so the other side's one-sample t
    interval. NaN bounds when neither side has two values."""
    a, b = [v for v in a if v == v], [v for v in b if v == v]
    if len(a) >= 2 and len(b) >= 2 or not a or not b:
        return diff_ci(a, b)
    diff = mean_std(a)[0] - mean_std(b)[0]
    spread = a if len(a) >= 2 else b
    if len(spread) < 2:
        return diff, math.nan, math.nan
    half = t_quantile_975(len(spread) - 1) * mean_std(spread)[1] / math.sqrt(len(spread))
    return diff, diff - half, diff + half


def compare(a: list[float], b: list[float], higher_is_better: bool = True) -> tuple[float, str]:
    """Difference of means a − b and its verdict under :data:`VERDICT_RULE`.

    Returns:
        ``(difference, word)``: ``better`` / ``worse`` when the 95% interval of
        :func:`interval` excludes 0, else ``no clear difference`` (also without an interval).
    """
    diff, lo, hi = interval(a, b)
    if lo != lo:  # no interval: one run on each side
        return diff, "no clear difference"
    if not higher_is_better:
        lo, hi = -hi, -lo
    return diff, "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"


def model_names(results: dict[str, Any], cfg: DemoConfig) -> list[str]:
    """The report's row order: base, then the arms in ``cfg.objectives`` order."""
    return [m for m in ["base", *cfg.objectives] if m in results]


def collect(results: dict[str, list[dict[str, Any]]], cfg: DemoConfig) -> dict[str, Any]:
    """Per model, per metric: the list of per-seed values.

    ``tau_base`` is the mean τ-b of the model's greedy decode order to the base model's on
    the same test prompts (every decoded response position).
    """
    forgot = flips_against_base(results)
    kmax = str(max(cfg.ks))
    base_steps = results["base"][0].get("decode_steps")
    out: dict[str, Any] = {}
    for name in model_names(results, cfg):
        runs = results[name]
        row: dict[str, list[float]] = {}
        for tps in cfg.tokens_per_step:
            row[f"new@{tps}"] = [r["new"][str(tps)] for r in runs]
            row[f"nfe@{tps}"] = [r["nfe"][str(tps)] for r in runs]
        for k in cfg.ks:
            row[f"pass@{k}"] = [r["pass_at"][str(k)] for r in runs]
        row["old"] = [r["old"] for r in runs]
        row["val"] = [r["val"] for r in runs]
        row["forgetting"] = [f["forgetting"] for f in forgot[name]]
        row["c2w"] = [f["correct_to_wrong"] for f in forgot[name]]
        row["w2c"] = [f["wrong_to_correct"] for f in forgot[name]]
        row["tau"] = [r["alignment"]["tau"] for r in runs]
        row["tau0"] = [r["alignment"]["tau_initial"] for r in runs]
        row["tds"] = [r["alignment"]["tds"] for r in runs]
        nan = float("nan")
        row["hard"] = [r.get("hard", nan) for r in runs]
        row["tau_oracle"] = [r.get("tau_oracle", nan) for r in runs]
        row["tau_base"] = [
            mean_std(tau_to_order(r["decode_steps"], base_steps))[0]
            if base_steps is not None and "decode_steps" in r
            else nan
            for r in runs
        ]
        for level in runs[0].get("by_stratum", {}):
            row[f"stratum={level}"] = [r["by_stratum"].get(level, nan) for r in runs]
        out[name] = row
    out["_kmax"] = kmax
    return out


def table(rows: dict[str, Any], cfg: DemoConfig) -> str:
    """The main comparison table (mean ± std over seeds; base: one run): accuracy, pass@k,
    forgetting; the order and cost columns are :func:`alignment_table`'s (a screen each)."""
    tps = cfg.tokens_per_step
    head = ["model", "runs"]
    head += [f"new acc {t} tok/step" for t in tps]
    head += [f"pass@{k} (T=1)" for k in cfg.ks]
    head += ["old acc", "forgetting", "correct→wrong", "wrong→correct"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in model_names(rows, cfg):
        r = rows[name]
        cells = [f"**{name}**" if name == "tabom" else name, str(len(r["old"]))]
        cells += [fmt(r[f"new@{t}"]) for t in tps]
        cells += [fmt(r[f"pass@{k}"]) for k in cfg.ks]
        cells += [fmt(r["old"]), fmt(r["forgetting"], sign=True)]
        cells += [fmt(r["c2w"], 1), fmt(r["w2c"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def alignment_table(rows: dict[str, Any], cfg: DemoConfig) -> str:
    """Decode order and cost per model: NFE, τ alignment, TDS, validation and hard accuracy."""
    head = ["model", "NFE (1 tok/step)", "τ all states", "τ all-masked", "TDS", "val acc"]
    head += [f"hard acc ({cfg.stratum} ≥ {cfg.hard_min})", "τ decode→oracle", "τ decode→base"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in model_names(rows, cfg):
        r = rows[name]
        cells = [name, fmt(r[f"nfe@{cfg.tokens_per_step[0]}"], 1)]
        cells += [fmt(r[k]) for k in ("tau", "tau0")]
        cells += [fmt(r["tds"], 4), fmt(r["val"])]
        cells += [fmt(r["hard"]), fmt(r["tau_oracle"]), fmt(r["tau_base"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strata_table(rows: dict[str, Any], cfg: DemoConfig, sizes: dict[str, int]) -> str:
    """New-domain greedy test accuracy per difficulty stratum (mean ± std over seeds)."""
    levels = list(sizes)
    if not levels:
        return "(no difficulty strata for this task)"
    head = ["model", *(f"{cfg.stratum} = {lv} (n = {sizes[lv]})" for lv in levels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in model_names(rows, cfg):
        cells = [name, *(fmt(rows[name].get(f"stratum={lv}", [])) for lv in levels)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CLAIMS = (
    ("new-domain acc", "new@1", True),
    ("pass@k", "pass@k", True),
    ("forgetting", "forgetting", False),
    ("hard-stratum acc", "hard", True),
)
"""The protocol's claims: (label, metric key, higher is better)."""


def protocol_section(
    rows: dict[str, Any], cfg: DemoConfig, tuning: dict[str, Any] | None
) -> list[str]:
    """The fair-protocol tables: the validation choice per arm, and per claim each arm's
    difference to traj-sft and td with a 95% Welch t interval over seeds, and a verdict."""
    k = rows["_kmax"]
    t1 = cfg.tokens_per_step[0]
    key = {"new@1": f"new@{t1}", "pass@k": f"pass@{k}", "forgetting": "forgetting", "hard": "hard"}
    arms = [a for a in cfg.objectives if a in rows]
    out = []
    tuned = [a for a in arms if len((tuning or {}).get(a, {}).get("points", [])) > 1]
    if tuned:  # arms with a single setting had nothing to choose: no row
        out += [
            "### Tuning (validation split only; mean over seeds per point)",
            "",
            "| arm | points | val acc per point | chosen |",
            "|---|---|---|---|",
        ]
        for arm in tuned:
            t = tuning[arm]  # type: ignore[index]
            vals = ", ".join(f"{p}: {mean_std(v)[0]:.3f}" for p, v in t.get("val", {}).items())
            out.append(f"| {arm} | {len(t['points'])} | {vals or '–'} | {t.get('chosen')} |")
        untuned = [a for a in arms if a not in tuned]
        if untuned:
            out.append(f"\n{', '.join(untuned)}: one setting each (nothing to tune).")
        out.append("")
    refs = [r for r in ("traj-sft", "td") if r in rows]
    if not refs or len(cfg.seeds) < 2:
        return out
    for ref in refs:  # one table per reference: a screen wide
        head = ["arm"] + [
            f"{label}{'' if higher else ' (lower is better)'}" for label, _, higher in CLAIMS
        ]
        out += [
            f"### Differences to {ref} (mean difference [95% CI], Welch t over "
            f"{len(cfg.seeds)} seeds; pass@k = pass@{k}, new-domain acc at {t1} token(s) per "
            "step)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for arm in [a for a in arms if a != ref]:
            cells = [arm] + [
                fmt_ci(diff_ci(rows[arm][key[metric]], rows[ref][key[metric]]))
                for _, metric, _ in CLAIMS
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(testbed_verdict(rows, cfg, key))
    return out


def testbed_verdict(rows: dict[str, Any], cfg: DemoConfig, key: dict[str, str]) -> str:
    """One line: does any ranking arm beat ``td`` (its ablation) on new-domain accuracy?"""
    ranking = [a for a in cfg.objectives if a in rows and a.startswith("tabom")]
    if "td" not in rows or not ranking:
        return "(no verdict: needs td and a ranking arm)"
    m = key["new@1"]
    scored = [(a, diff_ci(rows[a][m], rows["td"][m])) for a in ranking]
    best, (d, lo, hi) = max(scored, key=lambda x: x[1][0])
    ref = ""
    if "traj-sft" in rows:
        vs = fmt_ci(diff_ci(rows[best][m], rows["traj-sft"][m]))
        ref = f"; against traj-sft, {best} is {vs} ({compare(rows[best][m], rows['traj-sft'][m])[1]})"
    head = f"**Verdict ({cfg.testbed}):** the ranking term on new-domain accuracy (against td, "
    head += "the same masking without it): "
    if len(scored) == 1:  # one ranking arm: its own result, no "best of" wording
        word = compare(rows[best][m], rows["td"][m])[1]
        return head + f"{best} is {fmt_ci((d, lo, hi))} ({word}){ref}."
    words = {a: compare(rows[a][m], rows["td"][m])[1] for a, _ in scored}
    groups = {w: [a for a in words if words[a] == w] for w in ("better", "worse")}
    said = "; ".join(f"{w} for {', '.join(g)}" for w, g in groups.items() if g)
    return (
        head + f"{said or 'no clear difference for any arm'}; the arm with the highest mean, "
        f"{best}, is {fmt_ci((d, lo, hi))}{ref}."
    )


def verdicts(rows: dict[str, Any], cfg: DemoConfig) -> list[str]:
    """One plain-language paragraph per claim, with the numbers, whichever way it goes."""
    if "tabom" not in rows:
        return ["(tabom was not among the objectives: no verdict)"]
    t = rows["tabom"]
    k = rows["_kmax"]
    t1 = cfg.tokens_per_step[0]
    out = []

    def versus(metric: str, other: str, higher: bool = True, digits: int = 3) -> str:
        diff, word = compare(t[metric], rows[other][metric], higher)
        return f"vs {other} {fmt(rows[other][metric], digits)}: {diff:+.{digits}f} ({word})"

    others = [o for o in ("sft", "traj-sft", "td", "base") if o in rows]
    claim = {"better": "holds", "worse": "does not hold", "no clear difference": "is not shown"}

    def against(metric: str, higher: bool = True, with_base: bool = True) -> tuple[str, str]:
        """The claim's verdict (TABOM against sft) and TABOM against every other model."""
        held = "n/a"
        if "sft" in rows:
            held = claim[compare(t[metric], rows["sft"][metric], higher)[1]]
        vs = "; ".join(versus(metric, o, higher) for o in others if with_base or o != "base")
        return held, vs

    held, acc = against(f"new@{t1}")
    out.append(
        f"1. **Higher new-domain accuracy than SFT: {held}.** TABOM's greedy "
        f"accuracy ({t1} token(s) per step) is {fmt(t[f'new@{t1}'])}; {acc}."
    )
    held, pk = against(f"pass@{k}")
    out.append(
        f"2. **Wider knowledge boundary (pass@{k}) than SFT: {held}.** "
        f"TABOM's pass@{k} at temperature 1 is {fmt(t[f'pass@{k}'])}; {pk}."
    )
    held, fg = against("forgetting", higher=False, with_base=False)
    out.append(
        f"3. **Less forgetting than SFT: {held}.** TABOM's old-domain "
        f"accuracy is {fmt(t['old'])} against the base model's "
        f"{fmt(rows['base']['old'])}: forgetting {fmt(t['forgetting'], sign=True)} "
        f"with {fmt(t['c2w'], 1)} correct→wrong and {fmt(t['w2c'], 1)} "
        f"wrong→correct items of {cfg.old_examples}; {fg}."
    )
    if "traj-sft" in rows:
        diff, word = compare(t[f"new@{t1}"], rows["traj-sft"][f"new@{t1}"])
        beat = "beats" if word == "better" else "does not beat"
        out.append(
            f"\n**TABOM {beat} traj-sft** on new-domain greedy accuracy here: "
            f"{fmt(t[f'new@{t1}'])} against "
            f"{fmt(rows['traj-sft'][f'new@{t1}'])} ({diff:+.3f}, {word}). "
            "What a validation sweep found: docs/results.md."
        )
    out.append(f"\n{VERDICT_RULE} ({len(cfg.seeds)} seeds).")
    return out


def _tuned_note(cfg: DemoConfig) -> str:
    """The Setup line's caveat when a grid replaces its lr / λ (the Tuning table has the points)."""
    tuned = []
    if cfg.tune_lr:
        tuned.append(f"lr from {cfg.tune_lr}")
    if cfg.tune_rank_weight:
        tuned.append(f"λ of the ranking arms from {cfg.tune_rank_weight}")
    return f" (defaults; {' and '.join(tuned)} per arm on validation: see Tuning)" if tuned else ""


def write_report(
    cfg: DemoConfig,
    root: Path,
    results: dict[str, list[dict[str, Any]]],
    distill: dict[str, Any],
    steps: int,
    timings: dict[str, tuple[float, bool]],
    t_start: float,
    t_report: float,
    tuning: dict[str, Any] | None = None,
) -> Path:
    """Write ``report.md``, ``report.json`` and the PNGs into ``root``.

    Returns:
        The path of ``report.md``.
    """
    rows = collect(results, cfg)
    names = model_names(results, cfg)
    t1, k = cfg.tokens_per_step[0], rows["_kmax"]

    # 1) plots
    new, old = describe_task(cfg.new_task), describe_task(cfg.old_task)
    bars = {  # panel title: (metric, y label)
        f"new domain: greedy acc ({t1} tok/step)": (f"new@{t1}", "greedy accuracy"),
        f"new domain: pass@{k} (T=1)": (f"pass@{k}", f"pass@{k}"),
        "old domain: greedy acc": ("old", "greedy accuracy"),
    }
    plot_metric_bars(
        {p: {n: mean_std(rows[n][metric]) for n in names} for p, (metric, _) in bars.items()},
        root / "accuracy.png",
        title=f"{cfg.model} post-trained on {new} (old domain: {old}); "
        f"mean ± std over {len(cfg.seeds)} seeds",
        ylabels={p: label for p, (_, label) in bars.items()},
        sharey=True,  # three accuracies: one scale
    )
    plot_budgets(
        {n: {t: mean_std(rows[n][f"new@{t}"]) for t in cfg.tokens_per_step} for n in names},
        root / "budgets.png",
        title=f"new domain ({new}): greedy accuracy against step budget",
    )
    curves = {}
    for n in names:
        per_seed = [r["alignment"]["entropy_next"] for r in results[n]]
        curves[n] = [mean_std([c[s] for c in per_seed]) for s in range(len(per_seed[0]))]
    plot_entropy_curves(
        curves,
        root / "entropy.png",
        title="entropy of the token decoded next, on held-out base trajectories",
        note=(
            f"Each point: the model's entropy at the positions the base trajectory decodes at "
            f"step s, averaged over those positions and {distill['align_records']} held-out "
            f"base trajectories, then over seeds (bars: ± std over {len(cfg.seeds)} seeds; "
            "base: one run). Step 0 is the all-masked state: a value near 0 there means every "
            "model is sure of what the sampler decodes first."
        ),
    )

    align = read_trajectories(root / "distill" / "align.jsonl")
    labels, _ = token_labels(align[0], cfg.model)
    plot_trajectory(align[0], root / "trajectory.png", labels=labels)

    # 2) report.md
    total = time.perf_counter() - t_start
    reused = sum(seconds for seconds, cached in timings.values() if cached)
    wall = f"wall time this invocation: {total:.0f} s"
    if reused:  # a rerun that reused finished stages: their own time is not in `total`
        wall += (
            f" (it reused finished stages, {reused:.0f} s when they ran; "
            f"{total + reused:.0f} s in all)"
        )
    timing_rows = [
        f"| {stage} | {seconds:.0f} s{' (cached: measured by the run that made it)' if cached else ''} |"
        for stage, (seconds, cached) in timings.items()
    ]
    timing_rows.append(f"| report + plots | {time.perf_counter() - t_report:.0f} s |")
    cmd = command_line(cfg)
    sizes = results["base"][0].get("stratum_sizes", {})
    lines = [
        "# tabom demo report",
        "",
        f"Command: `{cmd}` · machine: {platform.machine()} {platform.system()}, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__} · {wall}",
        "",
        "## Setup",
        "",
        f"- Base model `{cfg.model}`; old domain `{cfg.old_task}`, new domain `{cfg.new_task}`.",
        f"- Self-distillation: {cfg.distill_prompts} prompts × {cfg.distill_samples} samples at "
        f"temperature {cfg.decode.temperature}, {cfg.decode.tokens_per_step} token(s) per step, "
        f"{cfg.decode.score} order; "
        f"{distill['trajectories']} verified trajectories "
        f"({distill['verified_share']:.1%} of samples) shared by every seed.",
        f"- Post-training from the same base, full fine-tuning, {steps} optimizer steps × batch "
        f"{cfg.batch_size} for every objective ({cfg.epochs} epochs of the trajectories), lr "
        f"{cfg.lr}, {WARMUP_STEPS} warmup steps, cosine to {MIN_LR_RATIO} × lr, weight decay "
        f"{WEIGHT_DECAY}; M = {cfg.loss.td_window}, W = {cfg.loss.rank_window}, time-delay cut "
        f"range `{cfg.loss.td_cut_range}`, m = {cfg.loss.rank_margin}, λ = "
        f"{cfg.loss.rank_weight}, ties `{cfg.loss.rank_ties}`, ranking `{cfg.loss.rank_loss}`"
        f"{_tuned_note(cfg)}; seeds {cfg.seeds} (data order, masking). "
        "`sft`, `puma` and `papl` train on the ground-truth answers of all distillation "
        "prompts, their `-covered` arms on those of only the prompts with a verified "
        "trajectory (the same prompts as the trajectory arms), the others on the verified "
        "trajectories. No checkpoint picking: the final model of each run.",
        f"- Test sets, disjoint from the distillation prompts (checked): {cfg.test_examples} "
        f"new-domain problems (greedy, confidence order, "
        f"{'/'.join(map(str, cfg.tokens_per_step))} tokens per step; the first "
        f"{cfg.pass_examples} also sampled {cfg.n_samples}× at T = 1 for pass@k with the "
        f"unbiased estimator), {cfg.old_examples} old-domain problems (greedy; forgetting = base "
        f"accuracy − model accuracy, flips per item against the base). Validation: "
        f"{cfg.val_examples} further new-domain problems (model choices only).",
        f"- Alignment: {distill['align_records']} verified base-model trajectories on the "
        "validation prompts; Kendall τ-b between the model's entropy order and the decode "
        "order over the still-masked positions, at every state (docs/method.md); TDS = the "
        "paper's Eqs. 10–11.",
        "",
        "## Results",
        "",
        table(rows, cfg),
        "",
        "Decode order and cost:",
        "",
        alignment_table(rows, cfg),
        "",
        f"## New-domain test accuracy by difficulty (`{cfg.stratum}`)",
        "",
        strata_table(rows, cfg, sizes),
        "",
        "## Protocol",
        "",
        *protocol_section(rows, cfg, tuning),
        "",
        "## Capability: likelihood of the correct answers and three decoding orders",
        "",
        *capability_section(results, names, cfg.likelihood),
        "",
        "## Verdict on the paper's claims",
        "",
        *verdicts(rows, cfg),
        "",
        "## Plots",
        "",
        "![accuracy per objective](accuracy.png)",
        "",
        "![accuracy against step budget](budgets.png)",
        "",
        "![entropy against decode step](entropy.png)",
        "",
        "![a trajectory coloured by decode step](trajectory.png)",
        "",
        "## Timings",
        "",
        "| stage | time |",
        "|---|---|",
        *timing_rows,
        "",
    ]
    path = root / "report.md"
    path.write_text("\n".join(lines))
    payload = {"config": to_dict(cfg), "rows": rows, "steps": steps, "tuning": tuning}
    payload["capability"] = capability_summary(results, names)
    (root / "report.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


__all__ = [
    "VERDICT_RULE",
    "alignment_table",
    "collect",
    "compare",
    "interval",
    "table",
    "verdicts",
    "write_report",
]
