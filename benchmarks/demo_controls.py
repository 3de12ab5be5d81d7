"""Same-data controls and TAD from a finished ``tabom demo`` folder (issue 19).

Reads ``DIR/eval/ARM-seedS/stage.json`` (and ``eval/base``) and prints, per pair of arms, the
difference of means with a 95% Welch t interval over seeds (``metrics.diff_ci``) for
new-domain greedy accuracy (the first tokens-per-step budget), pass@k (the largest k),
hard-stratum accuracy and old-domain accuracy:

- coverage: ``X − X-covered`` for X in sft, puma, papl (all 1,500 prompts vs only the prompts
  the verified trajectories cover);
- objective on the same prompts: ``X-covered − traj-sft`` (ground truth vs the model's own
  verified answers, random masking for sft / papl) and ``− td``;
- TAD against the time-delay arms on the same trajectories: ``tad − td``, ``tad − traj-sft``,
  ``tabom − td``.

Run: ``python benchmarks/demo_controls.py runs/demo-controls``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabom.metrics import diff_ci, mean_std

PAIRS = [
    ("sft", "sft-covered"),
    ("puma", "puma-covered"),
    ("papl", "papl-covered"),
    ("sft-covered", "traj-sft"),
    ("puma-covered", "td"),
    ("papl-covered", "traj-sft"),
    ("tad", "td"),
    ("tad", "traj-sft"),
    ("tabom", "td"),
]


def load(root: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for marker in sorted((root / "eval").glob("*/stage.json")):
        name = marker.parent.name
        arm = name if name == "base" else name.rsplit("-seed", 1)[0]
        out.setdefault(arm, []).append(json.loads(marker.read_text())["result"])
    return out


def metrics(runs: list[dict]) -> dict[str, list[float]]:
    t1 = min(runs[0]["new"], key=int)
    k = max(runs[0]["pass_at"], key=int)
    return {
        "new acc": [r["new"][t1] for r in runs],
        f"pass@{k}": [r["pass_at"][k] for r in runs],
        "hard acc": [r.get("hard", float("nan")) for r in runs],
        "old acc": [r["old"] for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    runs = load(args.root)
    table = {arm: metrics(r) for arm, r in runs.items()}
    names = list(next(iter(table.values())))
    print("| arm | seeds | " + " | ".join(names) + " |")
    print("|---|---:|" + "---|" * len(names))
    for arm, m in table.items():
        cells = []
        for n in names:
            mu, sd = mean_std(m[n])
            cells.append(f"{mu:.3f}" + (f" ± {sd:.3f}" if len(m[n]) > 1 else ""))
        print(f"| {arm} | {len(m[names[0]])} | " + " | ".join(cells) + " |")
    print("\n| difference | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for a, b in PAIRS:
        if a not in table or b not in table:
            continue
        cells = []
        for n in names:
            d, lo, hi = diff_ci(table[a][n], table[b][n])
            cells.append("–" if d != d else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        print(f"| {a} − {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
