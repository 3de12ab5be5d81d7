"""How long the CLI takes to refuse a misspelled flag and a missing data file (issue 21).

Each case runs ``python -m tabom ...`` in a fresh interpreter (what a user waits for, the
interpreter's start included), ``--repeats`` times, one thread (``OMP_NUM_THREADS=1``), and
reports the median wall time, the exit code and whether torch was imported. ``--src`` runs
another checkout's ``src`` for a side-by-side comparison (e.g. the code before the change).

Run: ``python benchmarks/bench_refusal.py`` or
``python benchmarks/bench_refusal.py --src src --src /path/to/old/src --repeats 5``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "misspelled flag (train --lrr 1e-4)": ["train", "--lrr", "1e-4"],
    "missing data file (train --data MISSING.jsonl)": [
        "train",
        "--data",
        "MISSING.jsonl",
        "--progress",
        "false",
    ],
}
PROBE = (
    "import runpy, sys; sys.argv = ['tabom', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('tabom', run_name='__main__')\n"
    "finally:\n    print('torch' in sys.modules, file=sys.stderr)\n"
)


def run_case(src: Path, argv: list[str], cwd: Path) -> tuple[float, int, bool, str]:
    """(wall seconds, exit code, torch imported, the error line) of one refusal."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, cwd=cwd
    )
    seconds = time.perf_counter() - t0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    torch_imported = bool(lines) and lines[-1] == "True"
    error = next((x for x in lines if x.startswith("tabom")), lines[-2] if len(lines) > 1 else "")
    return seconds, proc.returncode, torch_imported, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", type=Path, help="a checkout's src folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sources = args.src or [Path(__file__).resolve().parent.parent / "src"]
    cwd = Path.cwd()
    print("| code | case | median wall s | runs | exit | torch imported | message |")
    print("|---|---|---:|---|---|---|---|")
    for src in sources:
        for name, argv in CASES.items():
            runs = [run_case(src.resolve(), argv, cwd) for _ in range(args.repeats)]
            times = ", ".join(f"{r[0]:.2f}" for r in runs)
            median = statistics.median(r[0] for r in runs)
            _, code, torch_imported, error = runs[-1]
            print(
                f"| {src} | {name} | {median:.2f} | {times} | {code} | {torch_imported} | "
                f"{error[:90]} |"
            )


if __name__ == "__main__":
    main()
