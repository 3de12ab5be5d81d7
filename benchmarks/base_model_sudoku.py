"""Accuracy of the shipped Sudoku base model ``tiny-sudoku`` on its old and new domain.

Old domain: 4x4 puzzles with 4-8 blanks (many givens), generated with a seed the pretraining
never uses for evaluation. New domain: the hardest real file, ``sudoku_4x4_4`` (4 givens,
12 blanks; Dream's evaluation data in ``shared/data``, read by path here only). Greedy
accuracy (temperature 0, one token per step) under three unmasking orders: confidence,
random and left to right (blocks of one token), then pass@1 / pass@8 from 8 samples at
temperature 1 in confidence order (unbiased estimator), and greedy accuracy on the hard
file split by propagation depth (``sudoku.difficulty``: rounds of naked singles).

Run: ``python benchmarks/base_model_sudoku.py`` (``--model runs/tiny_sudoku_pretrain/model``
for another checkpoint, ``--data DIR`` for another copy of ``shared/data/sudoku4x4``).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch

from tabom.decoding import DecodeConfig
from tabom.evaluate import evaluate_task
from tabom.models import load_model
from tabom.tasks import make_task

OLD = "sudoku:n_blanks=4,max_blanks=8"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sudoku4x4"
ORDERS = {
    "confidence": DecodeConfig(score="confidence"),
    "random": DecodeConfig(score="random"),
    "left-to-right": DecodeConfig(score="confidence", block_length=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sudoku")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n", type=int, default=300, help="old-domain problems")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dlm = load_model(args.model)
    task = make_task("sudoku")
    domains = {
        "old": (
            make_task(OLD),
            make_task(OLD).generate(args.n, torch.Generator().manual_seed(args.seed)),
        ),
        "new": (task, task.load(args.data / "sudoku_4x4_4.jsonl")),
    }
    print(
        f"model: {args.model}; old: {args.n} `{OLD}` puzzles (seed {args.seed}); new: "
        f"sudoku_4x4_4.jsonl ({len(domains['new'][1])} puzzles, 12 blanks); "
        f"{platform.machine()} CPU, {args.threads} thread(s); torch {torch.__version__}\n"
    )
    k = args.samples
    print(
        f"| domain | greedy: confidence | random | left to right | pass@1 (T=1) | pass@{k} (T=1) | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    greedy_new = None
    for name, (t, exs) in domains.items():
        t0 = time.perf_counter()
        acc = {}
        for order, budget in ORDERS.items():
            res = evaluate_task(dlm, t, exs, budget, seed=args.seed)
            acc[order] = res.accuracy
            if name == "new" and order == "confidence":
                greedy_new = res
        sampled = evaluate_task(
            dlm,
            t,
            exs,
            DecodeConfig(score="confidence", temperature=1.0),
            n_samples=k,
            ks=(1, k),
            seed=args.seed,
        )
        wall = time.perf_counter() - t0
        print(
            f"| {name} | {acc['confidence']:.3f} | {acc['random']:.3f} | "
            f"{acc['left-to-right']:.3f} | {sampled.pass_at[1]:.3f} | {sampled.pass_at[k]:.3f} | "
            f"{wall:.1f} |"
        )
    by_depth: dict[int, list[bool]] = defaultdict(list)
    for ex, c in zip(domains["new"][1], greedy_new.correct, strict=True):
        by_depth[task.difficulty(ex)["n_rounds"]].append(c[0])
    print("\n| new domain, propagation rounds | puzzles | greedy acc (confidence) |")
    print("|---:|---:|---:|")
    for depth in sorted(by_depth):
        v = by_depth[depth]
        print(f"| {depth} | {len(v)} | {sum(v) / len(v):.3f} |")


if __name__ == "__main__":
    main()
