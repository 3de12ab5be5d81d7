"""Accuracy of the long-addition base model ``tiny-longadd`` (issue 19) on its old and new domain.

Old domain: 48-digit sums with no carry-propagating column (``longadd:digits=48,max_nines=0``);
new domain: unrestricted 48-digit sums (``longadd:digits=48``, about 4.8 columns whose digits
sum to 9 each). Both generated with a seed the pretraining never uses (its periodic eval and
stop rule use ``seed + 10_000``). Greedy accuracy (temperature 0, one token per step, T = 50:
49 answer digits and one EOS) under three unmasking orders: confidence, random and left to
right (blocks of one token); pass@1 / pass@k from k samples at temperature 1 in confidence order
(unbiased estimator); and the new domain's greedy accuracy split by the number of
carry-propagating columns.

Run: ``python benchmarks/base_model_longadd.py`` (``--model runs/tiny_longadd_pretrain/model``
for another checkpoint).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict

import torch

from tabom.decoding import DecodeConfig
from tabom.evaluate import evaluate_task
from tabom.models import load_model
from tabom.tasks import make_task

OLD = "longadd:digits=48,max_nines=0"
NEW = "longadd:digits=48"
ORDERS = {
    "confidence": DecodeConfig(score="confidence"),
    "random": DecodeConfig(score="random"),
    "left-to-right": DecodeConfig(score="confidence", block_length=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-longadd")
    parser.add_argument("--n", type=int, default=200, help="problems per domain")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_all, c_all = time.perf_counter(), time.process_time()
    dlm = load_model(args.model)
    domains = {
        name: (make_task(spec), make_task(spec).generate(args.n, torch.Generator().manual_seed(args.seed)))
        for name, spec in (("old", OLD), ("new", NEW))
    }
    print(
        f"model: {args.model}; {args.n} problems per domain (seed {args.seed}): old `{OLD}`, "
        f"new `{NEW}`; {platform.machine()} CPU, {args.threads} thread(s); "
        f"torch {torch.__version__}\n"
    )
    k = args.samples
    print(
        "| domain | greedy: confidence | random | left to right | pass@1 (T=1) | "
        f"pass@{k} (T=1) | wall s |"
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
            f"{wall:.1f} |",
            flush=True,
        )
    task, exs = domains["new"]
    by_nines: dict[int, list[bool]] = defaultdict(list)
    for ex, c in zip(exs, greedy_new.correct, strict=True):
        by_nines[min(task.difficulty(ex)["nines"], 8)].append(c[0])
    print("\n| new domain, carry-propagating columns | problems | greedy acc (confidence) |")
    print("|---:|---:|---:|")
    for n in sorted(by_nines):
        v = by_nines[n]
        print(f"| {n if n < 8 else '8+'} | {len(v)} | {sum(v) / len(v):.3f} |")
    print(
        f"\ntotal: {time.perf_counter() - t_all:.0f} s wall, "
        f"{time.process_time() - c_all:.0f} s CPU"
    )


if __name__ == "__main__":
    main()
