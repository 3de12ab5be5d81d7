"""Time the README's commands as a new user runs them (issue 13: they must fit what it states).

Reads the README's ``bash`` blocks, keeps the lines that start with ``tabom`` (comments cut),
and runs each in order in a scratch folder that links ``configs/`` (so ``runs/...`` paths stay
out of the repository), as a fresh process; prints wall time and CPU time (user + sys of the
child) per command. ``--skip demo pretrain`` leaves out commands by name; ``--only`` keeps some.
Run: ``python benchmarks/bench_readme.py --skip demo`` (the demo has its own line in README).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The ``tabom ...`` lines of the README's bash blocks, in order, without comments."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("tabom "):
                out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], help="command names to leave out")
    parser.add_argument("--only", nargs="*", default=None, help="command names to keep")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="readme-"))
    (work / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    tabom = [sys.executable, "-m", "tabom.cli"]
    print(f"scratch folder {work}; load average {os.getloadavg()[0]:.2f}")
    print("| command | wall s | CPU s | exit |")
    print("|---|---:|---:|---:|")
    for line in readme_commands():
        argv = shlex.split(line)[1:]
        name = argv[0]
        if name in args.skip or (args.only is not None and name not in args.only):
            continue
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(
            [*tabom, *argv], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        print(f"| `{line}` | {wall:.1f} | {cpu:.1f} | {done.returncode} |", flush=True)
        if done.returncode:
            print(done.stderr.decode()[-2000:], file=sys.stderr)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
