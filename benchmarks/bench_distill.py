"""Self-distillation throughput (DESIGN §3-4): trajectories per minute of ``tabom distill``.

Runs :func:`tabom.commands.distill.distill` end to end (decode, verify, write + fsync, progress sidecar)
on the shipped base model's new domain (4-digit addition) at several budgets and batch sizes,
and prints a markdown table for docs/benchmarks.md.

    python benchmarks/bench_distill.py                    # tiny-base, else runs/tiny_pretrain/model
    python benchmarks/bench_distill.py --model runs/exp/model --prompts 128 --threads 2

One thread is the default: the batches are small, and on a shared 2-core machine a second
thread mostly waits (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from tabom.commands.distill import NEW_DOMAIN, DistillConfig, distill
from tabom.decoding import DecodeConfig
from tabom.models import SHIPPED, build_tiny, save_tiny

PRETRAINED = Path("runs/tiny_pretrain/model")


def pick_model(name: str, scratch: Path) -> tuple[str, str]:
    """``(model path or name, description)``: tiny-base if shipped, else the pretrain run's model,
    else a random tiny model (said so in the description)."""
    if name != "tiny-base" or SHIPPED["tiny-base"].exists():
        return name, name
    if PRETRAINED.is_dir():
        return str(PRETRAINED), f"{PRETRAINED} (tiny-base not shipped yet)"
    save_tiny(build_tiny(), scratch / "random")
    return str(
        scratch / "random"
    ), "random tiny (build_tiny(); tiny-base not shipped, no pretrain run)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-base")
    parser.add_argument("--task", default=NEW_DOMAIN)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [  # (tokens per step, prompts per batch, keep)
        (1, 8, "all"),
        (1, 32, "all"),
        (1, 32, "verified"),
        (2, 32, "all"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model, described = pick_model(args.model, Path(tmp))
        print(
            f"model: {described}; task {args.task}; {args.prompts} prompts x {args.samples} "
            f"samples, T={args.temperature}, confidence order; {platform.machine()} CPU, "
            f"{args.threads} threads, 1 process; torch {torch.__version__}\n"
        )
        print(
            "| tokens/step | prompts/batch | keep | answers | records | verified | pass@1 "
            f"| pass@{args.samples} | NFE/answer | decode s | answers/min |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, (tps, ppb, keep) in enumerate(runs):
            cfg = DistillConfig(
                model=model,
                task=args.task,
                n_prompts=args.prompts,
                n_samples=args.samples,
                ks=[1, args.samples],
                keep=keep,
                decode=DecodeConfig(temperature=args.temperature, tokens_per_step=tps),
                prompts_per_batch=ppb,
                seed=args.seed,
                output=str(Path(tmp) / f"run{i}.jsonl"),
                num_threads=args.threads,
                progress=False,
            )
            s = distill(cfg)
            assert s is not None
            print(
                f"| {tps} | {ppb} | {keep} | {s.samples} | {s.records} | {s.verified_share:.3f} "
                f"| {s.pass_at[1]:.3f} | {s.pass_at[args.samples]:.3f} | {s.nfe_per_answer:.1f} "
                f"| {s.decode_seconds:.2f} | {s.answers_per_minute:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
