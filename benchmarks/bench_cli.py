"""The command line against jsonargparse (issue 20 item 5): ``--help`` time and what a user sees.

Runs each case as a fresh process (one torch thread), ``--repeat`` times, and prints the median
wall time and the last lines of stderr: ``tabom train`` (the hand-rolled parser of
``tabom.config`` / ``tabom.cli``) and the same command on jsonargparse (``ArgumentParser`` with
``add_class_arguments(TrainConfig)`` and ``--config`` as ``ActionConfigFile``: what LitGPT
does). The cases: ``--help``; a misspelled flag; a bad number; an out-of-range value (flag and
YAML); a bad choice; a broken YAML line; a ``!!python`` tag; a missing ``--data`` file.

    python benchmarks/bench_cli.py                 # the table in docs/benchmarks.md
    python benchmarks/bench_cli.py --repeat 1      # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JSONARGPARSE = """\
import sys, warnings
warnings.simplefilter("ignore")
from jsonargparse import ActionConfigFile, ArgumentParser
from tabom.commands.train import TrainConfig
parser = ArgumentParser(prog="tabom train")
parser.add_argument("--config", action=ActionConfigFile)
parser.add_class_arguments(TrainConfig)
cfg = parser.instantiate(parser.parse_args(sys.argv[1:]))
print("parsed: lr", cfg.lr)
"""


def run(argv: list[str], repeat: int) -> tuple[float, int, str]:
    """Median wall seconds, the exit code and the error as the user reads it (from its
    ``error:`` line on, or the last line: a traceback's exception)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JSONARGPARSE_DEPRECATION_WARNINGS": "off"}
    times, done = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
    assert done is not None
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines() or [""]
    start = max(
        [i for i, x in enumerate(lines) if x.startswith(("error:", "tabom "))] or [len(lines) - 1]
    )
    return statistics.median(times), done.returncode, " ".join(x.strip() for x in lines[start:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "data.jsonl").write_text("")
    (tmp / "range.yaml").write_text("lr: 1.0e-4\nloss:\n  rank_weight: -1\n")
    (tmp / "broken.yaml").write_text("lr: 1.0e-4\nloss:\n  rank_weight: 1\n  td_window 2\n")
    (tmp / "tag.yaml").write_text('lr: !!python/object/apply:os.system ["true"]\n')
    data = ["--data", str(tmp / "data.jsonl")]
    cases = {
        "--help": ["--help"],
        "misspelled flag": [*data, "--lrr", "1e-4"],
        "bad number": [*data, "--lr", "abc"],
        "out of range (flag)": [*data, "--loss.rank_weight", "-2"],
        "out of range (YAML)": [*data, "--config", str(tmp / "range.yaml")],
        "bad choice": [*data, "--loss.rank_ties", "strictt"],
        "broken YAML line": [*data, "--config", str(tmp / "broken.yaml")],
        "!!python tag": [*data, "--config", str(tmp / "tag.yaml")],
        "missing --data": ["--data", str(tmp / "MISSING")],
    }
    tools = {
        "tabom": [sys.executable, "-m", "tabom", "train"],
        "jsonargparse": [sys.executable, "-c", JSONARGPARSE],
    }
    print(f"| case | parser | wall s (median of {args.repeat}) | exit | what the user sees |")
    print("|---|---|---|---|---|")
    for case, argv in cases.items():
        for tool, head in tools.items():
            seconds, rc, seen = run([*head, *argv], args.repeat)
            shown = "(help text)" if case == "--help" else seen[:200].replace("|", "\\|")
            print(f"| {case} | {tool} | {seconds:.2f} | {rc} | {shown} |")


if __name__ == "__main__":
    main()
