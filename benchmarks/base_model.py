"""Accuracy of the shipped base model on the old and the new domain (docs/benchmarks.md).

Greedy accuracy under confidence-ordered decoding (one token per step, the paper's setting),
and pass@1 / pass@8 from 8 samples at temperature 1 (unbiased estimator), on fixed held-out
sets generated with a seed the pretraining never uses for evaluation.

Run: ``python benchmarks/base_model.py`` (add ``--model runs/tiny_pretrain/model`` to measure
another checkpoint).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from tabom.decoding import DecodeConfig
from tabom.evaluate import evaluate_task
from tabom.models import DEFAULT_MODEL, load_model
from tabom.tasks import NEW_DOMAIN as NEW
from tabom.tasks import OLD_DOMAIN as OLD
from tabom.tasks import make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--n", type=int, default=300, help="problems per domain")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dlm = load_model(args.model)
    print(
        f"model: {args.model}; {args.n} problems per domain (seed {args.seed}); "
        f"{platform.machine()} CPU, {args.threads} threads; torch {torch.__version__}\n"
    )
    head = (
        "| domain | task | greedy acc | pass@1 (T={t}) | pass@{k} (T={t}) | NFE/answer | wall s |"
    )
    print(head.format(t=args.temperature, k=args.samples))
    print("|---|---|---:|---:|---:|---:|---:|")
    for domain, spec in (("old", OLD), ("new", NEW)):
        task = make_task(spec)
        examples = task.generate(args.n, torch.Generator().manual_seed(args.seed))
        t0 = time.perf_counter()
        greedy = evaluate_task(dlm, task, examples, DecodeConfig(score="confidence"))
        sampled = evaluate_task(
            dlm,
            task,
            examples,
            DecodeConfig(score="confidence", temperature=args.temperature),
            n_samples=args.samples,
            ks=(1, args.samples),
            seed=args.seed,
        )
        wall = time.perf_counter() - t0
        print(
            f"| {domain} | `{spec}` | {greedy.accuracy:.3f} | {sampled.pass_at[1]:.3f} | "
            f"{sampled.pass_at[args.samples]:.3f} | {greedy.nfe_per_answer:.1f} | {wall:.1f} |"
        )


if __name__ == "__main__":
    main()
