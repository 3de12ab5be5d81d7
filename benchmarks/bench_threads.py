"""Torch CPU threads for the tiny model: ``tabom distill`` / ``eval`` / ``train`` at 1 vs 2 threads.

Each run is a fresh ``tabom`` process (``python -m tabom.cli``) so that thread pools start
clean; wall time and CPU time (user + sys of the child, from ``resource.getrusage``) are taken
per run. Thread counts alternate (1, 2, 1, 2, ...) so that a change in the machine's load hits
both alike; the table gives the median over repeats and the load average before and after.
Run: ``python benchmarks/bench_threads.py --repeats 3`` (about 5 minutes on a busy 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TASK = "addition:min_digits=4,max_digits=4,width=4"


def commands(work: Path, threads: int) -> dict[str, list[str]]:
    """The three workloads (tiny-base, small enough to repeat) at ``threads`` threads."""
    t = ["--num_threads", str(threads)]
    traj = work / "traj.jsonl"
    return {
        "distill": [
            "distill",
            "--n_prompts",
            "64",
            "--n_samples",
            "4",
            "--keep",
            "all",
            "--progress",
            "false",
            "--output",
            str(work / f"d{threads}-{time.time_ns()}.jsonl"),
            *t,
        ],
        "eval": ["eval", "--n_examples", "100", *t],
        "train": [
            "train",
            "--config",
            "configs/tiny_tabom.yaml",
            "--data",
            str(traj),
            "--max_steps",
            "10",
            "--eval_every",
            "0",
            "--progress",
            "false",
            "--output_dir",
            str(work / f"t{threads}-{time.time_ns()}"),
            *t,
        ],
    }


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one ``tabom`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)  # the flag alone decides
    subprocess.run(
        [sys.executable, "-m", "tabom.cli", *argv],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["distill", "eval", "train"])
    parser.add_argument("--json", default=None, help="also write the raw runs here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    # the training data: one small distill run (not timed)
    prep = ["distill", "--n_prompts", "64", "--n_samples", "4", "--keep", "all"]
    prep += ["--progress", "false", "--num_threads", "1", "--output", str(work / "traj.jsonl")]
    subprocess.run([sys.executable, "-m", "tabom.cli", *prep], check=True, capture_output=True)
    load_before = os.getloadavg()
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {c: {1: [], 2: []} for c in args.only}
    for _ in range(args.repeats):
        for command in args.only:
            for threads in (1, 2):
                runs[command][threads].append(timed(commands(work, threads)[command]))
    load_after = os.getloadavg()
    print(
        f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; load average "
        f"before {load_before[0]:.2f}, after {load_after[0]:.2f}; median of {args.repeats}"
    )
    print("| command | threads | wall s | CPU s | wall ratio 2/1 |")
    print("|---|---:|---:|---:|---:|")
    for command, by in runs.items():
        med = {t: [statistics.median(x[i] for x in by[t]) for i in (0, 1)] for t in by}
        for t in (1, 2):
            ratio = f"{med[2][0] / med[1][0]:.2f}" if t == 2 else ""
            print(f"| {command} | {t} | {med[t][0]:.1f} | {med[t][1]:.1f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": runs, "load": [load_before, load_after]}, indent=1)
        )


if __name__ == "__main__":
    main()
