"""Entropy of the token decoded next, per decode step and arm, from a finished ``tabom demo``.

Reads ``OUTPUT_DIR/eval/*/stage.json`` (the alignment metrics on the base model's held-out
trajectories, docs/method.md) and prints, per arm, the mean over seeds of ``entropy_next[s]``
(the entropy each model assigns to the token the base sampler decodes at step s, at the state
just before it) for the first and last steps, and the share of the last step in the total:
the measurement behind "the ranking term raises the later token's entropy" (docs/results.md).
Run: ``python benchmarks/demo_entropy_by_step.py runs/demo-full``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: str) -> None:
    arms: dict[str, list[list[float]]] = {}
    for f in sorted(Path(root, "eval").glob("*/stage.json")):
        name = f.parent.name.rsplit("-seed", 1)[0]
        arms.setdefault(name, []).append(
            json.loads(f.read_text())["result"]["alignment"]["entropy_next"]
        )
    steps = len(next(iter(arms.values()))[0])
    print(f"| arm | runs | H next, step 0 | step {steps // 2} | last step ({steps - 1}) |")
    print("|---|---|---|---|---|")
    for name, curves in arms.items():
        mean = [sum(c[s] for c in curves) / len(curves) for s in range(steps)]
        print(
            f"| {name} | {len(curves)} | {mean[0]:.3f} | {mean[steps // 2]:.3f} | {mean[-1]:.3f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
