"""The approximate KV caches against the exact sampler (issue 18): agreement, accuracy, speed.

For each shipped testbed (``tiny-base`` on addition, ``tiny-sudoku`` on Sudoku) it decodes the
demo's new-domain test set (``tabom demo``'s splits, greedy, one token per step: the demo's
setting, one block; and in blocks of T/2 where T is even) with ``--decode.cache`` none,
prefix and dual, and reports the share of response tokens equal to the exact sampler's, the
accuracy and its change, and the CPU-time ratio. For the real-code fixtures' shapes
(``/work/shared/fixtures/real-code``: LLaDA and Dream, 2 layers, width 64, their random
weights), random prompts: agreement and speed only (random weights: no accuracy). One thread.

    python benchmarks/bench_cache.py                       # the docs/benchmarks.md tables
    python benchmarks/bench_cache.py --examples 50 --skip-fixtures    # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tabom.batch_decode import decode_batches, response_text
from tabom.commands.demo.config import DemoConfig
from tabom.commands.demo.pipeline import make_splits
from tabom.config import build_config
from tabom.decoding import DecodeConfig
from tabom.models import load_model
from tabom.tasks import make_task

FIXTURES = next(
    (p for p in (Path(__file__).resolve().parents[1] / "tests/fixtures/real-code",
                 Path("/work/shared/fixtures/real-code")) if p.is_dir()),
    Path("/work/shared/fixtures/real-code"),
)  # fmt: skip
MODES = ("none", "prefix", "dual")


def timed(dlm, encoded, cfg, batch_size):
    t0 = time.process_time()
    out = decode_batches(dlm, encoded, cfg, batch_size=batch_size)
    return out, time.process_time() - t0


def testbed_rows(testbed: str, n_examples: int | None, batch_size: int) -> list[str]:
    cfg = build_config(DemoConfig, {"testbed": testbed})
    splits = make_splits(cfg)
    test = splits["test"][:n_examples] if n_examples else splits["test"]
    task = make_task(cfg.new_task)
    dlm = load_model(cfg.model)
    T = task.gen_length
    encoded = [dlm.encode_prompt(ex.prompt) for ex in test]
    settings = [("one block (demo)", DecodeConfig(gen_length=T))]
    if T % 2 == 0:
        settings.append((f"blocks of {T // 2}", DecodeConfig(gen_length=T, block_length=T // 2)))
    rows = []
    for label, base in settings:
        exact, exact_cpu, exact_acc = None, 0.0, 0.0
        for mode in MODES:
            dc = DecodeConfig(**{**base.__dict__, "cache": mode}).resolve()
            out, cpu = timed(dlm, encoded, dc, batch_size)
            texts = [response_text(dlm.tokenizer, r, dlm.spec.stop_ids)
                     for r in out.response_ids.tolist()]  # fmt: skip
            acc = sum(task.verify(ex, t) for ex, t in zip(test, texts, strict=True)) / len(test)
            if exact is None:
                exact, exact_cpu, exact_acc = out, cpu, acc
            agree = (out.response_ids == exact.response_ids).float().mean().item()
            same = (out.response_ids == exact.response_ids).all(-1).float().mean().item()
            rows.append(
                f"| {cfg.model} | {task.name} ({len(test)} test) | {label}, T {T} | {mode} "
                f"| {agree:.1%} | {same:.1%} | {acc:.1%} | {100 * (acc - exact_acc):+.1f} "
                f"| {exact_cpu / cpu:.2f}x |"
            )
    return rows


def fixture_rows(batch: int, prompt: int, T: int, block: int) -> list[str]:
    rows = []
    for name in ("llada", "dream"):
        dlm = load_model(str(FIXTURES / name))
        V = dlm.vocab_size
        g = torch.Generator().manual_seed(0)
        encoded = torch.randint(10, V - 10, (batch, prompt), generator=g).tolist()
        exact, exact_cpu = None, 0.0
        for mode in MODES:
            dc = DecodeConfig(gen_length=T, steps=T, block_length=block, cache=mode)
            out, cpu = timed(dlm, encoded, dc, batch)
            if exact is None:
                exact, exact_cpu = out, cpu
            agree = (out.response_ids == exact.response_ids).float().mean().item()
            same = (out.response_ids == exact.response_ids).all(-1).float().mean().item()
            rows.append(
                f"| {name} fixture (random weights) | {batch} random prompts of {prompt} "
                f"| blocks of {block}, T {T} | {mode} | {agree:.1%} | {same:.1%} | - | - "
                f"| {exact_cpu / cpu:.2f}x |"
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=None, help="test problems (default: all)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--skip-fixtures", action="store_true")
    ap.add_argument("--fixture-batch", type=int, default=8)
    ap.add_argument("--fixture-prompt", type=int, default=64)
    ap.add_argument("--fixture-gen", type=int, default=128)
    ap.add_argument("--fixture-block", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | test set | decode | cache | tokens = exact | answers = exact | accuracy "
          "| change (points) | CPU speed vs exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for testbed in ("addition", "sudoku"):
        for row in testbed_rows(testbed, args.examples, args.batch_size):
            print(row, flush=True)
    if not args.skip_fixtures and FIXTURES.is_dir():
        for row in fixture_rows(args.fixture_batch, args.fixture_prompt, args.fixture_gen,
                                args.fixture_block):  # fmt: skip
            print(row, flush=True)
    print()
    print(f"python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
