"""Accuracy of the long-addition base model ``tiny-longadd`` (issue 19) on its old and new domain.

Old domain: 48-digit sums with no carry-propagating column (``longadd:digits=48,max_nines=0``);
new domain: unrestricted 48-digit sums (``longadd:digits=48``, about 4.8 columns whose digits
sum to 9 each). Both generated with a seed the pretraining never uses (its periodic eval and
stop rule use ``seed + 10_000``). Greedy accuracy (temperature 0, one token per step, T = 50:
49 answer digits and one EOS) under three unmasking orders: confidence, random and left to
right (blocks of one token); pass@1 / pass@k from k samples at temperature 1 in confidence order
(unbiased estimator); and the new domain's greedy accuracy split by the number of
carry-propagating columns. Each accuracy comes with its 95% Wilson interval and the order
comparisons (confidence − random, confidence − left to right) with a 95% interval over the
paired per-problem differences (the same problems under each order).

Run: ``python benchmarks/base_model_longadd.py`` (``--model runs/tiny_longadd_pretrain/model``
for another checkpoint; ``--domains new --passk-n 64`` for the new domain only, pass@k on its
first 64 problems; ``--json out.json`` keeps the numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
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


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return math.nan, math.nan
    z, p = 1.96, k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return mid - half, mid + half


def paired_diff(a: list[bool], b: list[bool]) -> tuple[float, float, float]:
    """Mean of the per-problem differences a − b with a 95% normal interval."""
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    m = statistics.fmean(d)
    half = 1.96 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return m, m - half, m + half


def fmt_acc(correct: list[bool]) -> str:
    lo, hi = wilson(sum(correct), len(correct))
    return f"{sum(correct) / len(correct):.3f} [{lo:.2f}, {hi:.2f}]"


def ratio_ci(
    greedy: list[bool], solved: list[bool], n_boot: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``mean(solved) / mean(greedy)`` over problems (the
    same problems resampled for both; a resample with no greedy success is dropped)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.tensor(greedy, dtype=torch.float64)
    p = torch.tensor(solved, dtype=torch.float64)
    idx = torch.randint(len(g), (n_boot, len(g)), generator=gen)
    den = g[idx].mean(1)
    r = (p[idx].mean(1) / den)[den > 0]
    return r.quantile(0.025).item(), r.quantile(0.975).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-longadd")
    parser.add_argument("--n", type=int, default=200, help="problems per domain (greedy orders)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument(
        "--passk-n", type=int, default=None, help="problems for pass@k (default --n; 0 = skip)"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="of the pass@k samples")
    parser.add_argument("--domains", default="old,new", help="comma-separated: old, new")
    parser.add_argument(
        "--orders", default=",".join(ORDERS), help=f"comma-separated, from {', '.join(ORDERS)}"
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_all, c_all = time.perf_counter(), time.process_time()
    dlm = load_model(args.model)
    specs = {"old": OLD, "new": NEW}
    domains = {
        name: (
            make_task(specs[name]),
            make_task(specs[name]).generate(args.n, torch.Generator().manual_seed(args.seed)),
        )
        for name in args.domains.split(",")
    }
    k = args.samples
    passk_n = args.n if args.passk_n is None else min(args.passk_n, args.n)
    temp = args.temperature
    print(
        f"model: {args.model}; {args.n} problems per domain (seed {args.seed}): old `{OLD}`, "
        f"new `{NEW}`; pass@k on the first {passk_n} at T = {temp:g}; {platform.machine()} "
        f"CPU, {args.threads} thread(s); torch {torch.__version__}\n"
    )
    print(
        "| domain | greedy: confidence | random | left to right | conf − random | "
        f"conf − left to right | pass@1 (T={temp:g}) | pass@{k} (T={temp:g}) | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    results: dict = {"model": args.model, "n": args.n, "passk_n": passk_n, "seed": args.seed}
    greedy_new = None
    for name, (t, exs) in domains.items():
        t0 = time.perf_counter()
        correct = {}
        for order in args.orders.split(","):
            budget = ORDERS[order]
            res = evaluate_task(dlm, t, exs, budget, seed=args.seed)
            correct[order] = [c[0] for c in res.correct]
            if name == "new" and order == "confidence":
                greedy_new = res
        pass_at = {1: math.nan, k: math.nan}
        if passk_n:
            sampled = evaluate_task(
                dlm,
                t,
                exs[:passk_n],
                DecodeConfig(score="confidence", temperature=temp),
                n_samples=k,
                ks=(1, k),
                seed=args.seed,
            )
            pass_at = sampled.pass_at
        wall = time.perf_counter() - t0
        diffs = {
            o: paired_diff(correct["confidence"], correct[o])
            for o in ("random", "left-to-right")
            if o in correct and "confidence" in correct
        }
        ds = {o: f"{m:+.3f} [{lo:+.2f}, {hi:+.2f}]" for o, (m, lo, hi) in diffs.items()}
        acc = {o: fmt_acc(correct[o]) if o in correct else "–" for o in ORDERS}
        print(
            f"| {name} | {acc['confidence']} | {acc['random']} | {acc['left-to-right']} | "
            f"{ds.get('random', '–')} | {ds.get('left-to-right', '–')} | "
            f"{pass_at[1]:.3f} | {pass_at[k]:.3f} | {wall:.1f} |",
            flush=True,
        )
        if passk_n and "confidence" in correct:  # the target: pass@k / greedy on the same problems
            first = correct["confidence"][:passk_n]
            g = sum(first) / len(first)
            ratio = pass_at[k] / g if g else math.inf
            lo, hi = ratio_ci(first, [any(c[:k]) for c in sampled.correct], seed=args.seed)
            print(
                f"| {name}: greedy on the pass@k problems {g:.3f}; pass@{k} / greedy {ratio:.2f} "
                f"[{lo:.2f}, {hi:.2f}] (95 % bootstrap over problems) |"
            )
        results[name] = {
            "correct": correct,
            "accuracy": {o: sum(c) / len(c) for o, c in correct.items()},
            "diff": diffs,
            "pass_at": {str(kk): v for kk, v in pass_at.items()},
            "wall_s": wall,
        }
    if greedy_new is not None:  # confidence order was run on the new domain
        task, exs = domains["new"]
        by_nines: dict[int, list[bool]] = defaultdict(list)
        for ex, c in zip(exs, greedy_new.correct, strict=True):
            by_nines[min(task.difficulty(ex)["nines"], 8)].append(c[0])
        print("\n| new domain, carry-propagating columns | problems | greedy acc (confidence) |")
        print("|---:|---:|---:|")
        for n in sorted(by_nines):
            v = by_nines[n]
            print(f"| {n if n < 8 else '8+'} | {len(v)} | {sum(v) / len(v):.3f} |")
    wall, cpu = time.perf_counter() - t_all, time.process_time() - c_all
    print(f"\ntotal: {wall:.0f} s wall, {cpu:.0f} s CPU")
    if args.json:
        results.update(total_wall_s=wall, total_cpu_s=cpu)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
