"""Throughput of the code sandbox on MBPP, and its overhead per candidate (docs/benchmarks.md).

1) Verifies the reference solution of every MBPP task (974) with ``--workers`` 1 and 2 (a fresh
   :class:`tabom.sandbox.Sandbox` each time, so nothing comes from the cache): wall time,
   verdicts per second, and how many passed.
2) Overhead per candidate: the wall time (and, without bubblewrap, the children's CPU time)
   of one trivial program (``assert True``) run
   ``--repeats`` times, interleaved, by (a) a bare ``subprocess.run([python, "-c", ...])``,
   (b) the sandbox without bubblewrap (the weak mode: driver, rlimits, seccomp, temp folder),
   (c) the sandbox with bubblewrap. Median and mean of each, and (c) - (a).

Run: ``nice -n 10 python benchmarks/bench_sandbox.py --mbpp ../shared/data/mbpp/mbpp.jsonl``
(``--workers ""`` measures the overhead only).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from tabom.sandbox import Sandbox, SandboxLimits, bwrap_works
from tabom.tasks import make_task


def throughput(path: str, workers: int, timeout: float) -> tuple[float, int, int]:
    """(seconds, passed, total) for every MBPP reference with ``workers`` at once."""
    task = make_task(f"mbpp:timeout={timeout:g},workers={workers}")
    examples = task.load(path)
    t0 = time.perf_counter()
    verdicts = task.verdicts([(ex, ex.answer) for ex in examples])
    seconds = time.perf_counter() - t0
    return seconds, sum(v.passed for v in verdicts), len(verdicts)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant
    return r.ru_utime + r.ru_stime


def overhead(repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds (the children's, bwrap's included) of one trivial program per way
    of running it, interleaved."""
    limits = SandboxLimits(timeout=30)
    strong = Sandbox(limits, workers=1)
    weak = Sandbox(limits, workers=1, weak_isolation=True)
    weak.bwrap, weak.mode = None, "weak"  # the same class with bubblewrap switched off
    names = ("bare subprocess", "sandbox, weak", "sandbox, bwrap")
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            t0, c0 = time.perf_counter(), _children_cpu()
            if name == "bare subprocess":
                subprocess.run([sys.executable, "-I", "-B", "-c", "assert True"], check=True)
            else:
                box = weak if name == "sandbox, weak" else strong
                assert box.execute("assert True\n").passed
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(_children_cpu() - c0)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbpp", default="../shared/data/mbpp/mbpp.jsonl")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if not bwrap_works():
        raise SystemExit("needs a working bubblewrap (apt-get install bubblewrap)")
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at start\n"
    )
    print("| workers | seconds | verdicts / s | passed |")
    print("|---:|---:|---:|---:|")
    for w in (int(x) for x in args.workers.split(",") if x):
        seconds, passed, total = throughput(args.mbpp, w, args.timeout)
        print(f"| {w} | {seconds:.1f} | {total / seconds:.2f} | {passed} / {total} |", flush=True)
    wall, cpu = overhead(args.repeats)
    print(f"\none trivial program, {args.repeats} runs each, interleaved (ms)\n")
    print("| how | wall median | wall mean | CPU median | CPU mean |")
    print("|---|---:|---:|---:|---:|")
    med, mean = statistics.median, statistics.mean
    for name in wall:
        w, c = wall[name], cpu[name]
        cpu_cells = (
            "n/a | n/a"  # bwrap's pid-1 reaps the program: its CPU never reaches tabom's rusage
            if name == "sandbox, bwrap"
            else f"{1e3 * med(c):.0f} | {1e3 * mean(c):.0f}"
        )
        print(f"| {name} | {1e3 * med(w):.0f} | {1e3 * mean(w):.0f} | {cpu_cells} |")
    extra = med(wall["sandbox, bwrap"]) - med(wall["bare subprocess"])
    print(f"\nsandbox overhead per candidate (wall, median, bwrap - bare): {1e3 * extra:.0f} ms")
    extra = med(cpu["sandbox, weak"]) - med(cpu["bare subprocess"])
    print(f"driver, rlimits and seccomp (CPU, median, weak - bare): {1e3 * extra:.0f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
