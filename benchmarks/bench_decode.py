"""Decode speed per budget (DESIGN §3): forwards per answer and tokens per second.

Decodes a fixed set of old-domain addition prompts ("0123+0456=") with :func:`tabom.decoding.decode` at
one, two and four tokens per step, in semi-autoregressive blocks, and in threshold (parallel)
mode, and prints a markdown table for docs/benchmarks.md.

    python benchmarks/bench_decode.py                      # the shipped tiny-base
    python benchmarks/bench_decode.py --gen-length 16 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from tabom.decoding import DecodeConfig, DecodeOutput, decode, pad_prompts
from tabom.models import DiffusionLM, load_model
from tabom.tasks import OLD_DOMAIN, make_task


@dataclass
class Row:
    """One budget's measurements."""

    budget: str
    nfe: int  # forwards per batch (every answer of the batch shares each forward)
    steps_per_answer: float  # mean over answers of (last commit step + 1)
    tokens_per_forward: float  # response tokens committed per forward, per answer
    tokens_per_s: float
    wall_s: float


def budgets(gen_length: int) -> list[tuple[str, DecodeConfig]]:
    """The budgets compared: 1, 2 and 4 tokens per step, blocks of T/4, thresholds .9 and .7."""
    T = gen_length
    if T % 4:
        raise ValueError(f"--gen-length ({T}) must be divisible by 4")
    return [
        (f"steps={T} (1 tok/step)", DecodeConfig(gen_length=T, steps=T)),
        (f"steps={T // 2} (2 tok/step)", DecodeConfig(gen_length=T, steps=T // 2)),
        (f"steps={T // 4} (4 tok/step)", DecodeConfig(gen_length=T, steps=T // 4)),
        (
            f"blocks of {T // 4}, steps={T}",
            DecodeConfig(gen_length=T, steps=T, block_length=T // 4),
        ),
        ("threshold 0.9", DecodeConfig(gen_length=T, threshold=0.9)),
        ("threshold 0.7", DecodeConfig(gen_length=T, threshold=0.7)),
    ]


def addition_prompts(n: int, seed: int) -> list[str]:
    """``n`` old-domain prompts of the shipped model (``0012+0345=``), seeded."""
    task = make_task(OLD_DOMAIN)
    return [ex.prompt for ex in task.generate(n, torch.Generator().manual_seed(seed))]


def run_budget(
    dlm: DiffusionLM,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: DecodeConfig,
    seed: int,
) -> tuple[float, list[DecodeOutput]]:
    """Decode every batch once; returns wall seconds and the outputs."""
    g = torch.Generator(device=dlm.device).manual_seed(seed)
    if dlm.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    outs = [
        decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id, generator=g)
        for ids, mask in batches
    ]
    if dlm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, outs


def measure(
    dlm: DiffusionLM, prompts: list[str], cfgs: list[tuple[str, DecodeConfig]], args
) -> list[Row]:
    """Warm up once per budget, then keep the median wall time of ``args.repeats`` runs."""
    encoded = [dlm.encode_prompt(p) for p in prompts]  # as tabom eval encodes them
    batches = []
    for start in range(0, len(encoded), args.batch_size):
        ids, mask = pad_prompts(encoded[start : start + args.batch_size], dlm.spec.pad_token_id)
        batches.append((ids.to(dlm.device), mask.to(dlm.device)))
    rows = []
    for name, cfg in cfgs:
        run_budget(dlm, batches, cfg, args.seed)  # warmup
        walls = []
        for _ in range(args.repeats):
            wall, outs = run_budget(dlm, batches, cfg, args.seed)
            walls.append(wall)
        wall = statistics.median(walls)
        per_answer = torch.cat([o.forwards_per_row for o in outs]).float()  # (N,)
        rows.append(
            Row(
                budget=name,
                nfe=max(o.nfe for o in outs),
                steps_per_answer=float(per_answer.mean()),
                tokens_per_forward=float((cfg.gen_length / per_answer).mean()),
                tokens_per_s=len(prompts) * cfg.gen_length / wall,
                wall_s=wall,
            )
        )
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [
        "| budget | forwards per batch (NFE) | forwards per answer | tokens / forward | tokens / s | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.budget} | {r.nfe} | {r.steps_per_answer:.2f} | {r.tokens_per_forward:.2f} "
            f"| {r.tokens_per_s:,.0f} | {r.wall_s:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-base", help="shipped name or local folder")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=8, help="T, divisible by 4")
    parser.add_argument(
        "--score", default="confidence", choices=["confidence", "margin", "entropy", "random"]
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per budget (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dlm, model_name = load_model(args.model), args.model
    dlm.model.to(args.device)
    prompts = addition_prompts(args.num_prompts, args.seed)
    cfgs = [
        (name, dataclasses.replace(cfg, score=args.score)) for name, cfg in budgets(args.gen_length)
    ]
    rows = measure(dlm, prompts, cfgs, args)
    print(
        f"model: {model_name}; device: {args.device} ({platform.processor() or platform.machine()}), "
        f"threads: {args.threads}; torch {torch.__version__}; {args.num_prompts} prompts in "
        f"batches of {args.batch_size}; T = {args.gen_length}; score: {args.score}; "
        f"median of {args.repeats} runs after a warmup\n"
    )
    print(format_table(rows))
    print(
        "\nforwards per batch: NFE of the batch (one forward serves every answer in it); "
        "forwards per answer: mean over answers of the step of its last commit + 1; "
        "tokens / s: response tokens of all prompts over wall time."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
