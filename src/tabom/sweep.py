"""``tabom sweep``: a small validation-only sweep of TABOM's knobs around the demo (DESIGN §7).

It reuses the demo's splits and distilled trajectories (running the distill stage if needed,
with the same settings) and varies one setting at a time around the demo's defaults: λ
(``rank_weight``), m (``rank_margin``), M = W (``td_window``), the learning rate, the number of
epochs and the share of trajectories used; ``traj-sft`` runs at the same lr / epochs / data
points as the reference. Every point is scored on the new-domain VALIDATION set and an
old-domain validation set (never the test sets); results go to ``sweep.md`` / ``sweep.json``.
Run: ``tabom sweep`` (after or instead of ``tabom demo``), ``tabom sweep --quick``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tabom.config import to_dict
from tabom.demo import DemoConfig, _distill_stage, make_splits, mean_std, run_stage
from tabom.eval_cli import budget_config
from tabom.evaluate import evaluate_task
from tabom.models import load_model
from tabom.tasks import make_task
from tabom.trajectory import read_trajectories, write_trajectories


@dataclass
class SweepConfig:
    """Config of ``tabom sweep``.

    Attributes:
        demo: the demo settings whose splits, trajectories and defaults the sweep starts from
            (``--demo.output_dir``, ``--demo.quick`` ...).
        output_dir: sweep runs, ``sweep.md`` and ``sweep.json`` (default: DEMO_DIR/sweep).
        seeds: training seeds per point (mean ± std over them).
        rank_weight: λ values tried (tabom).
        rank_margin: m values tried (tabom).
        window: M = W values tried (tabom, decode steps).
        lr: learning rates tried (tabom and traj-sft).
        epochs: epoch counts tried (tabom and traj-sft).
        data_fraction: shares of the verified trajectories used (tabom and traj-sft).
        inclusive_cut: also try the inclusive cut range (td and tabom; an experiment).
        old_val_examples: old-domain validation problems (disjoint from the demo's old test set).
    """

    demo: DemoConfig = field(default_factory=DemoConfig)
    output_dir: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    rank_weight: list[float] = field(default_factory=lambda: [0.3, 3.0])
    rank_margin: list[float] = field(default_factory=lambda: [0.0, 0.5])
    window: list[int] = field(default_factory=lambda: [2, 4])
    lr: list[float] = field(default_factory=lambda: [1e-3])
    epochs: list[int] = field(default_factory=lambda: [15])
    data_fraction: list[float] = field(default_factory=lambda: [0.5])
    inclusive_cut: bool = True
    old_val_examples: int = 300


def sweep_points(cfg: SweepConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(objective, overrides)`` per point: the defaults, then one setting changed at a time."""
    pts: list[tuple[str, dict[str, Any]]] = [("traj-sft", {}), ("tabom", {})]
    pts += [("tabom", {"rank_weight": v}) for v in cfg.rank_weight]
    pts += [("tabom", {"rank_margin": v}) for v in cfg.rank_margin]
    pts += [("tabom", {"td_window": v, "rank_window": v}) for v in cfg.window]
    for name in ("lr", "epochs", "data_fraction"):
        for v in getattr(cfg, name):
            pts += [("traj-sft", {name: v}), ("tabom", {name: v})]
    if cfg.inclusive_cut:
        pts += [
            ("td", {}),
            ("td", {"cut_range": "inclusive"}),
            ("tabom", {"cut_range": "inclusive"}),
        ]
    return pts


def run_sweep(cfg: SweepConfig) -> int:
    """Train and validate every point; write ``sweep.md`` and ``sweep.json``."""
    from tabom.demo import _train_stage

    demo = cfg.demo.resolved()
    torch.set_num_threads(demo.num_threads)
    root = Path(demo.output_dir)
    out = Path(cfg.output_dir or root / "sweep")
    out.mkdir(parents=True, exist_ok=True)
    settings = to_dict(demo)

    # 1) the demo's splits and trajectories (the same stage, so a finished demo is reused)
    splits = make_splits(demo)
    keys = [
        "model", "new_task", "distill_prompts", "distill_samples", "distill_temperature",
        "distill_seed", "val_examples", "split_seed", "align_samples", "num_threads",
    ]  # fmt: skip
    dist = run_stage(root / "distill", {k: settings[k] for k in keys}, _distill_stage(demo, splits))
    old = make_task(demo.old_task)
    taken = {ex.id for ex in splits["old_test"]}
    pool = old.generate(
        cfg.old_val_examples + 200, torch.Generator().manual_seed(demo.split_seed + 1)
    )
    old_val = [ex for ex in pool if ex.id not in taken][: cfg.old_val_examples]
    new = make_task(demo.new_task)
    records = read_trajectories(root / "distill" / "trajectories.jsonl")

    # 2) every point x seed: train from the base, validate
    rows = []
    points = sweep_points(cfg)
    jobs = [(o, p, s) for o, p in points for s in cfg.seeds]
    results: dict[int, list[dict[str, float]]] = {}
    for o, p, s in tqdm(jobs, desc="sweep runs", disable=not demo.progress):
        i = points.index((o, p))
        over = {k: v for k, v in p.items() if k not in ("data_fraction", "cut_range")}
        if "cut_range" in p:
            over["td_cut_range"] = p["cut_range"]
        point_cfg = dataclasses.replace(demo, **over)
        frac = p.get("data_fraction", 1.0)
        data = root / "distill"
        if frac < 1.0:  # the trajectories of the first prompts (file order)
            data = out / f"data-{frac}"
            data.mkdir(exist_ok=True)
            n = max(1, int(len(records) * frac))
            write_trajectories(data / "trajectories.jsonl", records[:n])
        n_items = int(len(records) * frac)
        steps = point_cfg.epochs * math.ceil(n_items / point_cfg.batch_size)
        name = "-".join([o, *(f"{k}{v}" for k, v in p.items())]) or o
        tset = {"distill": dist["key"], "objective": o, "seed": s, "steps": steps, **p}
        tset.update(
            {k: getattr(point_cfg, k) for k in ("lr", "epochs", "td_window", "rank_window")}
        )
        tset.update({k: getattr(point_cfg, k) for k in ("rank_margin", "rank_weight")})
        folder = out / name / f"seed{s}"

        def fn(f: Path, o=o, s=s, steps=steps, point_cfg=point_cfg, data=data, p=p) -> dict:
            _train_stage(point_cfg, o, s, steps, data)(f)
            dlm = load_model(str(f / "model"))
            greedy = budget_config("confidence", 1)
            kw: dict[str, Any] = {"batch_size": 256}
            return {
                "val": evaluate_task(dlm, new, splits["val"], greedy, **kw).accuracy,
                "old_val": evaluate_task(dlm, old, old_val, greedy, **kw).accuracy,
                "steps": steps,
            }

        done = run_stage(folder, tset, fn)
        results.setdefault(i, []).append(done["result"])

    # 3) the table
    base = load_model(demo.model)
    greedy = budget_config("confidence", 1)
    base_val = evaluate_task(base, new, splits["val"], greedy, batch_size=256).accuracy
    base_old = evaluate_task(base, old, old_val, greedy, batch_size=256).accuracy
    lines = [
        f"# tabom sweep (validation only; {len(cfg.seeds)} seeds per point)",
        "",
        f"Base model: new-domain val acc {base_val:.3f}, old-domain val acc {base_old:.3f}. "
        f"Defaults = the demo's (λ {demo.rank_weight}, m {demo.rank_margin}, "
        f"M = W = {demo.td_window}, lr {demo.lr}, {demo.epochs} epochs, all "
        f"{len(records)} trajectories).",
        "",
        "| objective | change | steps | new val acc | old val acc |",
        "|---|---|---|---|---|",
    ]
    for i, (o, p) in enumerate(points):
        r = results[i]
        val, oldv = mean_std([x["val"] for x in r]), mean_std([x["old_val"] for x in r])
        change = ", ".join(f"{k}={v}" for k, v in p.items()) or "(defaults)"
        lines.append(
            f"| {o} | {change} | {r[0]['steps']} | {val[0]:.3f} ± {val[1]:.3f} | "
            f"{oldv[0]:.3f} ± {oldv[1]:.3f} |"
        )
        rows.append({"objective": o, "change": p, "runs": r})
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    payload = {"base": {"val": base_val, "old_val": base_old}, "points": rows}
    (out / "sweep.json").write_text(json.dumps(payload, indent=1) + "\n")
    print("\n".join(lines))
    return 0


__all__ = ["SweepConfig", "run_sweep", "sweep_points"]
