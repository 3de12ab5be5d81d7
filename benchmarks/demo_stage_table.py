"""The demo's main numbers from the evaluations that have finished (``eval/*/stage.json``), for a
run stopped before its report (issue 19 round 2): per arm, mean ± std over the seeds evaluated;
per pair of arms, the difference of means with a Welch 95% interval over seeds.

    python benchmarks/demo_stage_table.py runs/demo-longadd
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tabom.commands.demo.config import ALL_ARMS
from tabom.metrics import diff_ci
from tabom.metrics import mean_std as _mean_std

ARMS = ["base", *ALL_ARMS]
KEYS = ["new", "hard", "pass@4", "old", "random order", "left to right", "NELBO/token", "τ"]
PAIRS = [
    ("tabom", "td"),
    ("td", "traj-sft"),
    ("tad", "td"),
    ("tabom", "traj-sft"),
    *((v, "td") for v in ALL_ARMS if v.startswith("tabom-")),
    # the same-data controls: the objective on the same prompts, then the coverage
    ("sft-covered", "traj-sft"),
    ("puma-covered", "td"),
    ("papl-covered", "td"),
    ("sft", "sft-covered"),
    ("puma", "puma-covered"),
    ("papl", "papl-covered"),
    # the ground-truth arms on all prompts: which masking (random, planner-weighted, the
    # model's own order) uses the same answers best
    ("puma", "td"),
    ("sft", "puma"),
    ("papl", "puma"),
]


def row(result: dict) -> dict[str, float]:
    cap = result["capability"]
    return {
        "new": result["new"]["1"],
        "hard": result["hard"],
        "pass@4": result["pass_at"]["4"],
        "old": result["old"],
        "random order": cap["accuracy"]["new"]["random"],
        "left to right": cap["accuracy"]["new"]["left-to-right"],
        "NELBO/token": cap["nelbo"]["new"]["per_token"],
        "τ": result["alignment"]["tau"],
    }


def mean_std(v: list[float]) -> str:
    m, sd = _mean_std(v)
    return f"{m:.3f}" + (f" ± {sd:.3f}" if len(v) > 1 else "")


def welch(a: list[float], b: list[float]) -> str:
    d, lo, hi = diff_ci(a, b)  # the demo report's interval (Welch t over seeds)
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main(run: Path) -> None:
    rows: dict[str, list[dict[str, float]]] = {}
    for path in sorted((run / "eval").glob("*/stage.json")):
        arm = path.parent.name.rsplit("-seed", 1)[0]
        rows.setdefault(arm, []).append(row(json.loads(path.read_text())["result"]))
    print("| arm | seeds | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for arm in [a for a in ARMS if a in rows]:
        cells = [mean_std([r[k] for r in rows[arm]]) for k in KEYS]
        print(f"| {arm} | {len(rows[arm])} | " + " | ".join(cells) + " |")
    print()
    print("| difference [Welch 95%, over seeds] | " + " | ".join(KEYS[:6]) + " |")
    print("|---|" + "---|" * 6)
    for a, b in PAIRS:
        if len(rows.get(a, [])) > 1 and len(rows.get(b, [])) > 1:
            cells = [welch([r[k] for r in rows[a]], [r[k] for r in rows[b]]) for k in KEYS[:6]]
            print(f"| {a} − {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
