"""Throughput of the code sandbox on MBPP, and its overhead per candidate (docs/benchmarks.md).

1) Verifies the reference solution of every MBPP task (974) with ``--workers`` 1 and 2 (a fresh
   :class:`tabom.sandbox.Sandbox` each time, so nothing comes from the cache): wall time,
   verdicts per second, and how many passed.
2) Overhead per candidate: the wall time of one trivial program (``assert True``) run
   ``--repeats`` times, interleaved, by (a) a bare ``subprocess.run([python, "-c", ...])``,
   (b) the sandbox without bubblewrap (the weak mode: driver, rlimits, seccomp, temp folder),
   (c) the sandbox with bubblewrap. Median and mean of each, and (c) - (a).

Run: ``nice -n 10 python benchmarks/bench_sandbox.py --mbpp ../shared/data/mbpp/mbpp.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import platform
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


def overhead(repeats: int) -> dict[str, list[float]]:
    """Wall seconds of one trivial program per way of running it, interleaved."""
    limits = SandboxLimits(timeout=30)
    strong = Sandbox(limits, workers=1)
    weak = Sandbox(limits, workers=1, weak_isolation=True)
    weak.bwrap, weak.mode = None, "weak"  # the same class with bubblewrap switched off
    times: dict[str, list[float]] = {"bare subprocess": [], "sandbox, weak": [], "sandbox, bwrap": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-B", "-c", "assert True"], check=True)
        times["bare subprocess"].append(time.perf_counter() - t0)
        for name, box in (("sandbox, weak", weak), ("sandbox, bwrap", strong)):
            t0 = time.perf_counter()
            assert box.execute("assert True\n").passed
            times[name].append(time.perf_counter() - t0)
    return times


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
    for w in (int(x) for x in args.workers.split(",")):
        seconds, passed, total = throughput(args.mbpp, w, args.timeout)
        print(f"| {w} | {seconds:.1f} | {total / seconds:.2f} | {passed} / {total} |", flush=True)
    times = overhead(args.repeats)
    print(f"\none trivial program, {args.repeats} runs each, interleaved (wall ms)\n")
    print("| how | median | mean |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {1e3 * statistics.median(ts):.0f} | {1e3 * statistics.mean(ts):.0f} |")
    extra = statistics.median(times["sandbox, bwrap"]) - statistics.median(times["bare subprocess"])
    print(f"\nsandbox overhead per candidate (median, bwrap - bare): {1e3 * extra:.0f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
