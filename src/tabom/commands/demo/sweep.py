"""``tabom sweep``: a small validation-only sweep of TABOM's knobs around the demo (DESIGN §7).

It reuses the demo's splits and distilled trajectories (running the distill stage if needed,
with the same settings) and varies one setting at a time around the demo's defaults: λ
(``rank_weight``), m (``rank_margin``), M = W (``td_window``), the learning rate, the number of
epochs and the share of trajectories used; ``traj-sft`` runs at the same lr / epochs / data
points as the reference; then every other ranking variant and the controls ``puma`` / ``papl``.
The fair comparison with validation-chosen settings and CIs is ``tabom demo --protocol full``. Every point is scored on the new-domain VALIDATION set and an
old-domain validation set (never the test sets); results go to ``sweep.md`` / ``sweep.json``.
Run: ``tabom sweep`` (after or instead of ``tabom demo``), ``tabom sweep --quick``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tabom.commands.demo.config import DemoConfig
from tabom.commands.demo.pipeline import (
    distill_settings,
    distill_stage,
    draw,
    make_splits,
    point_config,
    run_stage,
    train_settings,
    train_stage,
)
from tabom.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, check_ranges, in_range
from tabom.decoding import DecodeConfig
from tabom.evaluate import evaluate_task
from tabom.jsonl import write_jsonl
from tabom.losses import RANK_LOSSES
from tabom.metrics import mean_std
from tabom.models import load_model
from tabom.progress import outer_bar
from tabom.seeding import derive
from tabom.tasks import make_task
from tabom.trajectory import read_trajectories


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
        data_fraction: shares (in (0, 1]) of the verified trajectories used (tabom and
            traj-sft): the trajectories of the first prompts, in file order.
        inclusive_cut: also try the inclusive cut range (td and tabom; an experiment).
        variants: also try every other ranking variant (``loss.rank_loss``) and the control
            objectives ``puma`` and ``papl`` at the defaults.
        old_val_examples: old-domain validation problems (disjoint from the demo's old test set).
    """

    demo: DemoConfig = field(default_factory=DemoConfig)
    output_dir: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata=NON_NEGATIVE)
    rank_weight: list[float] = field(default_factory=lambda: [0.3, 3.0], metadata=NON_NEGATIVE)
    rank_margin: list[float] = field(default_factory=lambda: [0.0, 0.5], metadata=NON_NEGATIVE)
    window: list[int] = field(default_factory=lambda: [2, 4], metadata=AT_LEAST_1)
    lr: list[float] = field(default_factory=lambda: [1e-3], metadata=POSITIVE)
    epochs: list[int] = field(default_factory=lambda: [15], metadata=AT_LEAST_1)
    data_fraction: list[float] = field(
        default_factory=lambda: [0.5], metadata=in_range(0, 1, low_open=True)
    )
    inclusive_cut: bool = True
    variants: bool = True
    old_val_examples: int = field(default=300, metadata=AT_LEAST_1)

    def __post_init__(self) -> None:
        check_ranges(self)  # a config built in Python; flags and YAML are checked before


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
            ("td", {"td_cut_range": "inclusive"}),
            ("tabom", {"td_cut_range": "inclusive"}),
        ]
    if cfg.variants:
        pts += [("tabom", {"rank_loss": v}) for v in RANK_LOSSES if v != "hinge"]
        pts += [("puma", {}), ("papl", {})]
    return pts


def run_sweep(cfg: SweepConfig) -> int:
    """Train and validate every point; write ``sweep.md`` and ``sweep.json``."""
    demo = cfg.demo
    torch.set_num_threads(demo.num_threads)
    root = Path(demo.output_dir)
    out = Path(cfg.output_dir or root / "sweep")
    out.mkdir(parents=True, exist_ok=True)

    # 1) the demo's splits and trajectories (the same stage, so a finished demo is reused)
    splits = make_splits(demo)
    dist = run_stage(root / "distill", distill_settings(demo, splits), distill_stage(demo, splits))
    old = make_task(demo.old_task)
    taken = {ex.id for ex in splits["old_test"]}
    old_val = draw(old, cfg.old_val_examples, derive(demo.split_seed, "demo-val"), taken)
    new = make_task(demo.new_task)
    records = read_trajectories(root / "distill" / "trajectories.jsonl")

    # 2) every point x seed: train from the base, validate
    rows = []
    points = sweep_points(cfg)
    # the data of each fraction (the trajectories of the first prompts, file order), written once
    data_sets: dict[float, tuple[Path, int]] = {1.0: (root / "distill", len(records))}
    for frac in sorted({p.get("data_fraction", 1.0) for _, p in points} - {1.0}):
        n = max(1, int(len(records) * frac))
        data = out / f"data-{frac}"
        data.mkdir(exist_ok=True)
        write_jsonl(data / "trajectories.jsonl", records[:n])
        data_sets[frac] = (data, n)
    jobs = [(i, o, p, s) for i, (o, p) in enumerate(points) for s in cfg.seeds]
    results: dict[int, list[dict[str, float]]] = {}
    for i, o, p, s in tqdm(jobs, desc="sweep runs", disable=not outer_bar(demo.progress)):
        point_cfg = point_config(demo, p)
        frac = p.get("data_fraction", 1.0)
        data, n_items = data_sets[frac]
        steps = point_cfg.epochs * math.ceil(n_items / point_cfg.batch_size)
        name = "-".join([o, *(f"{k}{v}" for k, v in p.items())])
        tset = train_settings(point_cfg, o, s, steps, dist["key"], data_fraction=frac)
        folder = out / name / f"seed{s}"

        def fn(f: Path, o=o, s=s, steps=steps, point_cfg=point_cfg, data=data) -> dict:
            train_stage(point_cfg, o, s, steps, data)(f)
            dlm = load_model(str(f / "model"))
            greedy = DecodeConfig()
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
    greedy = DecodeConfig()
    base_val = evaluate_task(base, new, splits["val"], greedy, batch_size=256).accuracy
    base_old = evaluate_task(base, old, old_val, greedy, batch_size=256).accuracy
    lines = [
        f"# tabom sweep (validation only; {len(cfg.seeds)} seeds per point)",
        "",
        f"Base model: new-domain val acc {base_val:.3f}, old-domain val acc {base_old:.3f}. "
        f"Defaults = the demo's (λ {demo.loss.rank_weight}, m {demo.loss.rank_margin}, "
        f"M = W = {demo.loss.td_window}, lr {demo.lr}, {demo.epochs} epochs, all "
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
